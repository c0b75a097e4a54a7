"""The full training state: written at the save points and on stop, read back to go on exactly
where a run left off.

A state is a folder `<output_dir>/<name>-state/`:
  weights.state         the method's trainable tensors (p00000, p00001, ... in parameter order; safetensors)
  optimizer.state       optimizer + LR schedule state and the torch RNG states (torch's format, loads with
                        weights_only=True)
  trainer.json          format, global step, epoch, batches done in that epoch, python/numpy/method RNGs,
                        the loss history and the files the run has written
  config.json           the config the run ran with
  dataset.json          the dataset's files (size, mtime, caption hash) and a hash of that list
The tensor files do not end in .safetensors / .pt on purpose: the output folder is often one the WebUI
scans (models/Lora, embeddings, models/hypernetworks, subfolders included), and it would list or try to
load them as networks. Format 1 states (weights.safetensors, optimizer.pt) are still read.
A folder is only ever complete: it is written under a temporary name and renamed into place.
Everything here is checked before the model is touched; the tensors are read when the loop starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import ConfigError, ConfigProblem, TrainConfig

FORMAT = 2
# the tensor files' names by state format (1 used the extensions the WebUI's model lists pick up)
TENSOR_FILES = {1: ("weights.safetensors", "optimizer.pt"), 2: ("weights.state", "optimizer.state")}
JSON_FILES = ("trainer.json", "config.json", "dataset.json")
FILES = TENSOR_FILES[FORMAT] + JSON_FILES


def state_files(fmt: int) -> tuple[str, ...]:
    return TENSOR_FILES.get(fmt, TENSOR_FILES[FORMAT]) + JSON_FILES
STATE_SUFFIX = "-state"

# Options a resumed run may change: how long it runs, where and how often it saves and previews,
# and where the model/dataset files are (the dataset's content is checked by its file list).
# Every other option shapes the training and must stay as it was.
MAY_DIFFER_SECTIONS = ("sample", "output")
MAY_DIFFER = {"version", "training.max_train_epochs", "training.max_train_steps", "training.resume",
              "training.gradient_checkpointing", "data.train_dir", "data.reg_dir", "data.cache_latents_to_disk",
              "model.checkpoint", "model.vae", "model.tokenizer", "embedding.save_pt"}


def state_dir(output_dir: Path, name: str) -> Path:
    return Path(output_dir) / f"{name}{STATE_SUFFIX}"


# -- what the dataset is ------------------------------------------------------------------------
def dataset_files(data_scan) -> dict[str, list]:
    """Every image the run trains on, by '<train|reg>/<subfolder>/<file>': [bytes, mtime_ns,
    caption hash]. Paths are relative, so a dataset moved with its times kept still matches."""
    files = {}
    for subset in data_scan.subsets:
        for item in subset.items:
            st = os.stat(item.path)
            caption = hashlib.sha256(item.caption.encode("utf-8")).hexdigest()[:16]
            key = f"{'reg' if subset.is_reg else 'train'}/{subset.folder_name}/{item.path.name}"
            files[key] = [st.st_size, st.st_mtime_ns, caption]
    return dict(sorted(files.items()))


def dataset_hash(files: dict[str, list]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode("utf-8")).hexdigest()


def dataset_changes(saved: dict[str, list], now: dict[str, list], limit: int = 10) -> Optional[str]:
    """None when equal, else what changed, naming the files."""
    if saved == now:
        return None
    added = [k for k in now if k not in saved]
    removed = [k for k in saved if k not in now]
    changed = [k for k in now if k in saved and now[k] != saved[k]]
    parts = [f"{len(saved)} image(s) when the state was saved, {len(now)} now"]
    for label, names in (("added", added), ("removed", removed), ("changed (size, time or caption)", changed)):
        if names:
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            parts.append(f"{label}: {', '.join(names[:limit])}{more}")
    return "; ".join(parts)


# -- reading a state before the model -------------------------------------------------------------
@dataclass
class ResumeState:
    """A state folder checked against this run; the tensors are read by `load_tensors`."""
    folder: Path
    info: dict                      # trainer.json
    tensors: dict = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.info["step"])

    @property
    def epoch(self) -> int:
        return int(self.info["epoch"])

    @property
    def batches_done(self) -> int:
        return int(self.info["batches_done"])

    @property
    def written(self) -> list[str]:
        return list(self.info.get("written", []))

    def load_tensors(self) -> None:
        from safetensors.torch import load_file

        # torch.serialization.load, not torch.load: inside the WebUI torch.load is its safe-unpickle
        # wrapper (modules/safe.py), which refuses the entries current torch writes into the zip
        # (".format_version") and returns None. weights_only=True is the safety here.
        weights, optimizer = TENSOR_FILES[int(self.info.get("format", FORMAT))]
        path = self.folder / optimizer
        rest = torch.serialization.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(rest, dict):
            raise _refuse(self.folder, f"{path.name} does not hold a training state; the folder is damaged: "
                                       "resume from another state or start a new run")
        self.tensors = {"weights": load_file(str(self.folder / weights)), **rest}


def _refuse(path, why: str) -> ConfigError:
    return ConfigError([ConfigProblem("training.resume", str(path), why)])


def read_state(cfg: TrainConfig, data_scan, num_processes: int = 1) -> ResumeState:
    """The state named by training.resume, refused (naming what) when it is missing, incomplete, of
    another dataset, of a run shaped differently or of another number of data-parallel processes."""
    folder = Path(cfg.training.resume.strip()).expanduser()
    if not folder.is_dir():
        raise _refuse(folder, "not a folder: name a training state folder (<name>-state in the output folder, "
                              "written when output.save_state is on)")
    missing = [f for f in state_files(_format_of(folder)) if not (folder / f).is_file()]
    if missing:
        raise _refuse(folder, f"incomplete training state, missing {', '.join(missing)}: name a folder written by "
                              "a run with output.save_state on")
    try:
        info, saved_cfg, data = (json.loads((folder / f).read_text(encoding="utf-8"))
                                 for f in JSON_FILES)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _refuse(folder, f"unreadable training state ({e}); name another state folder") from None
    if info.get("format") not in TENSOR_FILES:
        raise _refuse(folder, f"state format {info.get('format')!r}; this version reads formats "
                              f"{', '.join(map(str, TENSOR_FILES))}")
    problems = config_differences(saved_cfg, cfg.to_dict(), folder)
    if problems:
        raise ConfigError(problems)
    change = dataset_changes(data.get("files", {}), dataset_files(data_scan))
    if change:
        raise _refuse(folder, f"the dataset changed since this state was saved ({change}); a resumed run "
                              "must train on the same files: restore them or start a new run")
    saved_processes = int(info.get("num_processes", 1))
    if saved_processes != num_processes:
        raise _refuse(folder, f"this state was written by a run of {saved_processes} data-parallel process(es), "
                              f"this run has {num_processes}: each process's data shard and random generators "
                              f"are in the state, so resume with {saved_processes} (accelerate launch "
                              f"--num_processes {saved_processes})" if saved_processes > 1 else
                              f"this state was written by a run of one process, this run has {num_processes}: "
                              "resume it in one process (without accelerate launch)")
    return ResumeState(folder, info)


def config_differences(saved: dict, now: dict, folder: Path) -> list[ConfigProblem]:
    """Each option that shapes the training and differs from the state's, with both values."""
    problems = []
    for section, values in now.items():
        if section in MAY_DIFFER_SECTIONS or not isinstance(values, dict):
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            old = saved.get(section, {}).get(key, value)   # an option newer than the state: nothing to compare
            if name not in MAY_DIFFER and old != value:
                problems.append(ConfigProblem(name, value, f"was {old!r} in the training state {folder}; a resumed "
                                                           f"run continues the same training: set it back to "
                                                           f"{old!r} or start a new run"))
    return problems


# -- writing ------------------------------------------------------------------------------------
def capture_rng(generator: torch.Generator, method) -> tuple[dict, dict]:
    """(tensor RNG states for optimizer.state, JSON RNG states for trainer.json): every source of
    randomness a step draws from (noise/timestep generator, dropout, VAE sampling, and any
    random.Random a method keeps, e.g. an embedding's template choice)."""
    tensors = {"rng_torch": torch.get_rng_state(), "rng_noise": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng_cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {"rng_python": _jsonable(random.getstate()),
             "rng_numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "rng_method": {name: _jsonable(r.getstate()) for name, r in vars(method).items()
                            if isinstance(r, random.Random)}}
    return tensors, plain


def restore_rng(state: ResumeState, generator: torch.Generator, method, rank: int = 0) -> None:
    """Every generator as the state holds it; a data-parallel state holds one set per process
    (rng_ranks), and each process takes its own."""
    t, info = state.tensors, state.info
    if "rng_ranks" in t:
        t, info = t["rng_ranks"][rank], info["rng_ranks"][rank]
    torch.set_rng_state(t["rng_torch"])
    generator.set_state(t["rng_noise"])
    if "rng_cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(t["rng_cuda"])
    random.setstate(_tupled(info["rng_python"]))
    kind, keys, pos, has_gauss, gauss = info["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    for name, value in info.get("rng_method", {}).items():
        r = getattr(method, name, None)
        if isinstance(r, random.Random):
            r.setstate(_tupled(value))


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def write_state(folder: Path, *, params: list[torch.Tensor], tensors: dict, info: dict, config: dict,
                dataset: dict, keep_last: int = 1) -> Path:
    """Write the state to `folder` atomically: a temporary sibling, filled and synced, renamed into
    place. The state it replaces is kept as `<folder>-<step>` while fewer than `keep_last` exist."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        weights, optimizer = TENSOR_FILES[FORMAT]
        save_file({f"p{i:05d}": p.detach().to("cpu").contiguous() for i, p in enumerate(params)},
                  str(tmp / weights))
        torch.save(tensors, tmp / optimizer)
        for name, data in (("trainer.json", dict(info, format=FORMAT)), ("config.json", config),
                           ("dataset.json", dataset)):
            (tmp / name).write_text(json.dumps(data, indent=1), encoding="utf-8")
        for name in FILES:
            _fsync(tmp / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        old_step = _step_of(folder)
        keep_as = folder.with_name(f"{folder.name}-{old_step:08d}") if keep_last > 1 else None
        if keep_as is None or keep_as.exists():
            keep_as = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, keep_as)
        os.replace(tmp, folder)
        if keep_as.name.startswith("."):
            shutil.rmtree(keep_as, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    prune_states(folder, keep_last)
    return folder


def prune_states(folder: Path, keep_last: int) -> None:
    """Keep the newest state and the `keep_last - 1` newest `<folder>-<step>` ones."""
    older = sorted(p for p in folder.parent.glob(f"{folder.name}-*") if p.name[len(folder.name) + 1:].isdigit())
    for p in older[:max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(p, ignore_errors=True)


@dataclass
class StateEntry:
    """A training state found on disk, for the tab's list of runs that can go on."""
    folder: Path
    step: int
    epoch: int
    method: str
    saved_at: float     # the folder's modification time

    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.saved_at))
        return f"{self.folder.name}: {self.method}, step {self.step}, epoch {self.epoch}, saved {when}"


def resumable_states(output_dir: Path) -> list[StateEntry]:
    """Every complete training state in `output_dir` (<name>-state and the kept <name>-state-<step>
    folders), newest first; half-written temporary folders and foreign folders are left out."""
    found = []
    try:
        candidates = [p for p in Path(output_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    for folder in candidates:
        name = folder.name
        if not (name.endswith(STATE_SUFFIX) or (STATE_SUFFIX + "-") in name):
            continue
        try:
            info = json.loads((folder / "trainer.json").read_text(encoding="utf-8"))
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            fmt = info.get("format")
            if not all((folder / f).is_file() for f in state_files(fmt if isinstance(fmt, int) else FORMAT)):
                continue
            found.append(StateEntry(folder, int(info["step"]), int(info.get("epoch", 0)),
                                    str(config.get("network", {}).get("method", "?")), folder.stat().st_mtime))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(found, key=lambda e: (-e.saved_at, e.folder.name))


def _format_of(folder: Path) -> int:
    """The format trainer.json names (the current one when it cannot be read: then what is missing is
    reported by the current names)."""
    try:
        return int(json.loads((folder / "trainer.json").read_text(encoding="utf-8"))["format"])
    except (OSError, ValueError, KeyError, TypeError):
        return FORMAT


def _step_of(folder: Path) -> int:
    try:
        return int(json.loads((folder / "trainer.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_into(state: ResumeState, params: list[torch.Tensor], optimizer, lr_schedule) -> None:
    """The saved weights into the method's parameters (same order, shapes checked), then optimizer
    and LR schedule state."""
    weights = state.tensors["weights"]
    if len(weights) != len(params):
        raise _refuse(state.folder, f"the state holds {len(weights)} trainable tensors, this run has {len(params)}")
    with torch.no_grad():
        for i, p in enumerate(params):
            w = weights[f"p{i:05d}"]
            if w.shape != p.shape:
                raise _refuse(state.folder, f"trainable tensor {i} has shape {tuple(w.shape)} in the state, "
                                            f"{tuple(p.shape)} in this run")
            p.copy_(w)
    optimizer.load_state_dict(state.tensors["optimizer"])
    lr_schedule.load_state_dict(state.tensors["scheduler"])
