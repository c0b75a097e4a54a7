"""Fake of modules/hypernetworks/hypernetwork.py (1.10.1): list_hypernetworks(path) -> {name: file}
for every **/*.pt under path (sorted case-insensitively, "None" excluded), which
shared.reload_hypernetworks() stores in shared.hypernetworks."""
import glob
import os


def list_hypernetworks(path):
    res = {}
    for filename in sorted(glob.iglob(os.path.join(path, '**/*.pt'), recursive=True), key=str.lower):
        name = os.path.splitext(os.path.basename(filename))[0]
        if name != "None":
            res[name] = filename
    return res
