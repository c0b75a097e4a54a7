"""The command line: train from TOML with overrides, refusals, and data-parallel under accelerate."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from extensions_lib.model.tiny import tiny_ldm_state_dict

from helpers import TOKENIZER_DIR, make_images, quick_config

ROOT = Path(__file__).resolve().parent.parent


def _checkpoint(tmp_path: Path) -> Path:
    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _config(tmp_path: Path, **overrides) -> Path:
    make_images(tmp_path / "data" / "1_sks", n=4)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", **overrides)
    cfg.model.checkpoint = str(_checkpoint(tmp_path))
    cfg.model.tokenizer = str(TOKENIZER_DIR)
    path = tmp_path / "train.toml"
    cfg.save_toml(path)
    return path


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run(args, cwd=kw.pop("cwd", ROOT), env=env, capture_output=True, text=True, timeout=600, **kw)


def test_train_from_toml_with_overrides(tmp_path):
    cfg = _config(tmp_path)
    r = _run([sys.executable, "-m", "extensions_lib", "train", str(cfg), "--set", "training.max_train_steps=3",
              "--set", "output.name=cli_lora"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out" / "cli_lora.safetensors"
    assert out.is_file()
    assert "<lora:cli_lora:0.8>" in r.stdout
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["ss_steps"] == "3"


def test_bad_options_are_refused_with_the_field(tmp_path):
    cfg = _config(tmp_path)
    r = _run([sys.executable, "-m", "extensions_lib", "train", str(cfg), "--set", "training.optimizer=adam",
              "--set", "network.dim=0"])
    assert r.returncode == 2
    assert "training.optimizer" in r.stderr and "network.dim" in r.stderr
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten(tmp_path):
    cfg = _config(tmp_path)
    (tmp_path / "out").mkdir()
    existing = tmp_path / "out" / "test_lora.safetensors"
    existing.write_bytes(b"user's file")
    r = _run([sys.executable, "-m", "extensions_lib", "train", str(cfg), "--set", "training.max_train_steps=1"])
    assert r.returncode == 2 and "test_lora.safetensors" in r.stderr and "overwrite" in r.stderr
    assert existing.read_bytes() == b"user's file"


def test_data_parallel_two_cpu_processes(tmp_path):
    """4 images x 1 repeat, batch 1: each of 2 processes takes half of every epoch, so an epoch is 2
    optimizer steps; the loop checks that both processes end with identical weights.
    On a machine without GPUs accelerate's `--cpu` flag starts a single process (several CPU
    processes need MPI there); `--multi_gpu` is its torchrun launcher, which on CPU-only torch gives
    a gloo process group of N CPU processes."""
    cfg = _config(tmp_path, training__max_train_epochs=2)
    accelerate = Path(sys.executable).parent / "accelerate"
    r = _run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "extensions_lib", "train", str(cfg)])
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    # only the main process writes (the card picture is a thumbnail of the training images)
    assert files == ["test_lora.json", "test_lora.png", "test_lora.safetensors"]
    with safe_open(str(tmp_path / "out" / "test_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "4"
