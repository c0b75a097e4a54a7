"""Shared test helpers: tiny models, small image datasets, quick configs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from extensions_lib.config import TrainConfig
from extensions_lib.model.tiny import build_tiny_bundle

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / ".pytest_cache" / "char-tokenizer"


def tiny_bundle(version: str = "sd1", seed: int = 0, v_prediction: bool = False):
    return build_tiny_bundle(TOKENIZER_DIR, version=version, seed=seed, v_prediction=v_prediction)


def make_images(folder: Path, n: int = 4, size: int = 64, seed: int = 0, captions: bool = True) -> Path:
    """n distinct, structured pictures (a coloured square on a gradient) with captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a = np.stack([xx * 255, yy * 255, np.full_like(xx, 40 * i)], -1)
        x0, y0 = rng.integers(0, size // 2, 2)
        a[y0:y0 + size // 3, x0:x0 + size // 3] = rng.integers(0, 255, 3)
        Image.fromarray(a.astype(np.uint8)).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a photo of sks, picture {i}", encoding="utf-8")
    return folder


def quick_config(train_dir: Path, out_dir: Path, method: str = "lora", **overrides) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.train_dir = str(train_dir)
    cfg.data.resolution = 64
    cfg.data.min_bucket_reso = 64
    cfg.data.max_bucket_reso = 128
    cfg.network.method = method
    cfg.network.dim = 4
    cfg.network.alpha = 4
    cfg.network.conv_dim = 4
    cfg.network.conv_alpha = 4
    cfg.training.max_train_epochs = 2
    cfg.training.learning_rate = 1e-3
    cfg.training.lr_scheduler = "constant"
    cfg.output.output_dir = str(out_dir)
    cfg.output.name = f"test_{method}"
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg


def on_tiny_checkpoint(cfg: TrainConfig, folder: Path) -> TrainConfig:
    """`cfg` pointed at a tiny random checkpoint written to `folder/tiny.safetensors` (with the test
    tokenizer): what a command-line run loads."""
    from safetensors.torch import save_file

    from extensions_lib.model.tiny import tiny_ldm_state_dict

    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR)
    path = Path(folder) / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    cfg.model.checkpoint, cfg.model.tokenizer = str(path), str(TOKENIZER_DIR)
    return cfg


def accelerate_launch(args: list, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`accelerate launch` of 2 CPU processes over gloo (`--multi_gpu` is its torchrun launcher; on a
    machine without GPUs `--cpu` alone would start one process), running `args` (a script and its
    arguments, or `-m extensions_lib ...`)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    scratch = Path(cwd) / "launch-tmp"     # torchelastic's run folders land here, not in the system's /tmp
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), HF_HUB_OFFLINE="1",
               TMPDIR=str(scratch))
    return subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_refused(cfg: TrainConfig, field: str, value) -> None:
    """Setting `field` (section.key) to `value` makes validation refuse it, naming the field."""
    import pytest

    from extensions_lib.config import ConfigError

    section, key = field.split(".")
    setattr(getattr(cfg, section), key, value)
    with pytest.raises(ConfigError) as e:
        cfg.check()
    assert field in [p.field for p in e.value.problems]
    assert field in str(e.value)


def free_port() -> int:
    """A TCP port nothing listens on now, for a server started by a test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
