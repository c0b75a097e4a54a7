"""The command line: train from TOML with overrides, refusals, and data-parallel under accelerate."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from helpers import accelerate_launch, make_images, on_tiny_checkpoint, quick_config

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, **overrides) -> Path:
    make_images(tmp_path / "data" / "1_sks", n=4)
    cfg = on_tiny_checkpoint(quick_config(tmp_path / "data", tmp_path / "out", "lora", **overrides), tmp_path)
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
    r = accelerate_launch(["-m", "extensions_lib", "train", cfg], tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    # only the main process writes (the card picture is a thumbnail of the training images)
    assert files == ["test_lora.json", "test_lora.png", "test_lora.safetensors"]
    with safe_open(str(tmp_path / "out" / "test_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "4"


def test_help_works_from_any_folder(tmp_path):
    r = _run([sys.executable, "-m", "extensions_lib", "--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(command in r.stdout for command in ("train", "demo", "config", "ui"))


def test_every_argument_has_help_and_shows_its_default():
    import argparse

    from extensions_lib.cli import _parser

    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in subparsers._choices_actions} == set(subparsers.choices)
    assert all(c.help for c in subparsers._choices_actions)
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())     # argparse wraps at the terminal's width
        for action in sub._actions:
            assert action.help, (name, action.dest)
            shown = action.default not in ("", [], None, False, argparse.SUPPRESS)
            if shown:
                assert f"(default: {action.default})" in text, (name, action.dest)


def _unloadable_config(tmp_path: Path, **model) -> Path:
    """A valid config with a dataset whose model paths the check looks at but never loads."""
    make_images(tmp_path / "data" / "2_sks", n=3)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora")
    for k, v in model.items():
        setattr(cfg.model, k, str(v))
    path = tmp_path / "train.toml"
    cfg.save_toml(path)
    return path


def test_check_refuses_an_empty_checkpoint_by_name(tmp_path):
    cfg = _unloadable_config(tmp_path)
    for extra in (["--check"], []):      # the check, and the run itself, before loading anything
        r = _run([sys.executable, "-m", "extensions_lib", "train", str(cfg), *extra], cwd=tmp_path)
        assert r.returncode == 2, (extra, r.stdout, r.stderr[-3000:])
        assert "model.checkpoint" in r.stderr and "--set model.checkpoint=" in r.stderr
        assert "config OK" not in r.stdout and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_check_refuses_a_single_file_without_tokenizer(tmp_path, capsys):
    from extensions_lib.cli import main

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"never read by --check")
    assert main(["train", str(_unloadable_config(tmp_path, checkpoint=ckpt)), "--check"]) == 2
    err = capsys.readouterr().err
    assert "model.tokenizer" in err and "--set model.tokenizer=" in err and "model.checkpoint" not in err


def test_check_prints_a_summary_and_loads_nothing(tmp_path, capsys):
    from extensions_lib.cli import main

    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"never read by --check")
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.json").write_text("{}", encoding="utf-8")
    (tok / "merges.txt").write_text("", encoding="utf-8")
    cfg = _unloadable_config(tmp_path, checkpoint=ckpt, tokenizer=tok)
    assert main(["train", str(cfg), "--check", "--set", "training.train_batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "{" not in out       # no Python dicts
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()
             if ":" in line and not line.startswith(" ")}
    assert lines["method"].startswith("lora (dim 4, alpha 4")
    assert lines["model"].startswith(str(ckpt)) and str(tok) in lines["model"]
    # 3 images x 2 repeats = 6 samples, batch 2: 3 steps per epoch, 2 epochs
    assert "3 training images (6 samples per epoch)" in out
    assert lines["steps"].startswith("3 per epoch x 2 epoch(s) = 6 steps (batch 2")
    assert lines["output"] == str((tmp_path / "out" / "test_lora.safetensors").resolve())
    assert lines["memory"].startswith("estimated peak ") and "activations" in lines["memory"]
    assert any(row.split()[:3] == ["2_sks", "2", "3"] for row in out.splitlines())
    assert out.rstrip().splitlines()[-1].startswith("config OK")
    assert not (tmp_path / "out").exists()
