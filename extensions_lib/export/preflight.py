"""Checks of the output side before any model work: the folder can be written, no file the run would
write already exists (unless overwrite is on), and the disk has room for every save. A run that
trains for hours and then cannot save its result is the failure these prevent."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .atomic import OutputExistsError

MIB = 1024 * 1024
# estimated size x this + a fixed slack: the estimate is rough, and each save also needs room for
# its temporary file while the previous file of the same name still exists
SPACE_MARGIN = 1.25
SPACE_SLACK = 32 * MIB

# LoRA parameters per unit of rank, counted from the full-size models' targeted layers (attention
# blocks of the UNet and every text-encoder layer; SD2's wider text encoder is the larger, so it
# bounds SD1 too), and per unit of conv rank for LoCon/LoHa/LoKr's 3x3 conv layers
LORA_PARAMS_PER_RANK = 860_000
CONV_PARAMS_PER_RANK = 500_000
EMBEDDING_WIDTH = 1024          # SD2's token width bounds SD1's 768


class OutputClashError(OutputExistsError):
    """Files the run would write already exist and overwrite is off: all of them named at once."""

    def __init__(self, paths: list[Path]):
        super().__init__(paths[0])
        self.paths = [os.fspath(p) for p in paths]
        first, rest = self.paths[0], self.paths[1:]
        shown = "".join(f"\n  - {p}" for p in rest[:20])
        more = f"\n  … and {len(rest) - 20} more" if len(rest) > 20 else ""
        head = (f"{first} already exists, and so do {len(rest)} more file(s) this run would write:" if rest
                else f"{first}, a file this run would write, already exists;")
        self.strerror = (f"{head}{shown}{more}\npick another output.name, move the file(s) away, or turn "
                         "output.overwrite on to replace them")


@dataclass
class SavePlan:
    """Which saves a run makes, from its step count and the save options (the loop's own rules:
    no periodic save at the last step or after the last epoch, where the final file is written)."""
    total_steps: int
    epochs: int
    every_n_epochs: int
    every_n_steps: int

    def is_epoch_save(self, epoch: int) -> bool:
        n = self.every_n_epochs
        return bool(n) and 0 < epoch < self.epochs and epoch % n == 0

    def is_step_save(self, step: int) -> bool:
        n = self.every_n_steps
        return bool(n) and 0 < step < self.total_steps and step % n == 0

    @property
    def count(self) -> int:
        """Model files written: the periodic ones plus the final one."""
        epochs = (self.epochs - 1) // self.every_n_epochs if self.every_n_epochs else 0
        steps = (self.total_steps - 1) // self.every_n_steps if self.every_n_steps else 0
        return epochs + steps + 1


def folder_problem(folder: Path) -> Optional[str]:
    """Why files cannot be written into `folder` (created if missing), or None. Only a probe file,
    removed at once, is written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    existing = nearest_existing(folder)
    if not existing.is_dir():
        return f"{folder} cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is read-only (not writable)" if existing == folder else f"cannot be created: {existing} is read-only"
        return f"{folder} {what}"
    if existing != folder:
        return None  # creating it is the run's first write; its parent accepts writes
    try:
        # access() trusts permission bits; a read-only mount or an ACL only shows when writing
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".trainer-write-test-")
    except OSError as e:
        return f"{folder} is not writable ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def planned_clashes(folder: Path, name: str, plan: SavePlan, file_path: Callable[..., Path]) -> list[Path]:
    """Existing files the run would write. `file_path(folder, name, epoch=/step=)` is the method's
    own naming. Only files already in the folder are tested, so a plan of millions of step saves
    costs nothing. A LoRA's .json/.png beside it are not clashes: an existing one is the user's and
    is kept (the run says so)."""
    final = Path(file_path(folder, name))
    found = [final] if os.path.lexists(final) else []
    for entry in _entries_starting_with(folder, name):
        for number in {int(x) for x in re.findall(r"\d+", entry.name[len(name):])}:
            for label, planned in (("epoch", plan.is_epoch_save), ("step", plan.is_step_save)):
                if planned(number) and Path(file_path(folder, name, **{label: number})) == entry:
                    found.append(entry)
    return sorted(set(found), key=lambda p: p.name)


def _entries_starting_with(folder: Path, name: str) -> Iterable[Path]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return [folder / n for n in names if n.startswith(name)]


def estimated_file_bytes(cfg) -> int:
    """A generous estimate of one saved file of this config, without building the model."""
    n, t = cfg.network, cfg.output
    width = 4 if t.save_precision == "fp32" else 2
    if n.method == "embedding":
        return cfg.embedding.num_vectors * EMBEDDING_WIDTH * 4 + 64 * 1024
    if n.method == "hypernetwork":
        h = cfg.hypernetwork
        params = 0
        for size in h.sizes:
            widths = [int(size * m) for m in h.layer_structure]
            layer = sum(a * b + b + (2 * b if h.layer_norm else 0) for a, b in zip(widths, widths[1:]))
            params += 2 * layer  # one network for the keys, one for the values
        return params * width + 64 * 1024
    params = n.dim * LORA_PARAMS_PER_RANK
    if n.method != "lora":
        params += n.conv_dim * CONV_PARAMS_PER_RANK
    if n.method == "loha":
        params *= 2  # two low-rank pairs per layer
    # the metadata (comment, tag frequencies) rides along in the header
    return params * width + len(t.comment.encode("utf-8", "replace")) + MIB


def space_problem(folder: Path, plan: SavePlan, file_bytes: int) -> Optional[str]:
    """Why the disk under `folder` cannot take every save of `plan`, with the numbers, or None."""
    need = int(file_bytes * plan.count * SPACE_MARGIN) + SPACE_SLACK
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free >= need:
        return None
    return (f"not enough free disk space in {folder}: {_mib(free)} free, the run needs about {_mib(need)} "
            f"({plan.count} save(s) of about {_mib(file_bytes)} each, plus a margin); free some space, "
            "save less often (output.save_every_n_epochs / output.save_every_n_steps) or choose another "
            "output.output_dir")


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"
