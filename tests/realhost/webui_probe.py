"""Test-only WebUI extension for tests/realhost (not part of the product).

Install: copy this file to <webui>/extensions/realhost_probe/scripts/probe.py and restart the WebUI. It adds:
  GET /realhost/v1/lora_keys?name=N  load Lora N with the WebUI's own built-in `networks.load_network`: the number of
                                     modules it matched, their types, and any "didn't match keys" message (the WebUI
                                     logs those only at DEBUG level)
  GET /realhost/v1/mem               VmRSS / VmHWM of the WebUI process, in bytes
  GET /realhost/v1/load_pt?kind=K&path=P
                                     load an embedding or hypernetwork file from the WebUI's own folder for it with
                                     the WebUI's own loaders (torch.load there is modules/safe.py's checked load):
                                     whether the check was on, and the vectors/width or layer sizes, or the error
"""
import logging

from modules import script_callbacks


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a bad log record must not break the probe
            pass


def _app_started(_demo, app):
    @app.get("/realhost/v1/lora_keys")
    def lora_keys(name: str):
        import networks  # the built-in Lora extension's module, already imported by the WebUI

        networks.list_available_networks()
        on_disk = networks.available_networks.get(name)
        if on_disk is None:
            return {"error": f"{name} is not in the WebUI's Lora list"}
        root, capture = logging.getLogger(), _Capture()
        level = root.level
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)
        try:
            net = networks.load_network(name, on_disk)
        finally:
            root.removeHandler(capture)
            root.setLevel(level)
        types = {}
        for module in net.modules.values():
            types[type(module).__name__] = types.get(type(module).__name__, 0) + 1
        return {"name": name, "matched_modules": len(net.modules), "module_types": types,
                "unmatched_messages": [m[:2000] for m in capture.messages if "didn't match keys" in m]}

    @app.get("/realhost/v1/load_pt")
    def load_pt(kind: str, path: str):
        import os

        import torch
        from modules import shared

        folder = shared.cmd_opts.embeddings_dir if kind == "embedding" else shared.cmd_opts.hypernetwork_dir
        if os.path.dirname(os.path.realpath(path)) != os.path.realpath(folder):
            return {"error": f"{path} is not in the WebUI's {kind} folder {folder}"}
        out = {"checked": not shared.cmd_opts.disable_safe_unpickle}
        try:
            if kind == "hypernetwork":
                from modules.hypernetworks.hypernetwork import Hypernetwork

                hn = Hypernetwork()
                hn.load(path)   # reads the file with torch.load, i.e. the WebUI's checked load
                out.update(layer_structure=list(hn.layer_structure), sizes=sorted(int(k) for k in hn.layers))
            else:
                from modules.textual_inversion.textual_inversion import create_embedding_from_data

                data = torch.load(path, map_location="cpu")   # None when the WebUI's check refuses the file
                if data is None:
                    out["error"] = "the WebUI's checked load refused the file (see the WebUI's log)"
                    return out
                emb = create_embedding_from_data(data, "probe", filename=path)
                out.update(vectors=emb.vectors, shape=emb.shape)
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    @app.get("/realhost/v1/mem")
    def mem():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0]) * 1024
        return out


script_callbacks.on_app_started(_app_started)
