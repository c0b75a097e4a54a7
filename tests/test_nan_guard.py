"""A loss or gradient that goes NaN/inf stops the run as an error: no optimizer step with it, nothing
non-finite on disk, earlier files untouched, no final file; the message names the step and the fixes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import extensions_lib.train.loop as loop
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train.events import Callbacks, NonFiniteLossError
from extensions_lib.train.session import run_training
from extensions_lib.ui.job import TrainingJob

from helpers import make_images, quick_config, tiny_bundle

ROOT = Path(__file__).resolve().parent.parent
STEP2 = "test_lora-step00000002.safetensors"


def _config(tmp_path: Path, **overrides):
    make_images(tmp_path / "data" / "1_sks")      # 4 images, batch 1: one loss per optimizer step
    options = dict(training__max_train_steps=8, output__save_every_n_steps=2, **overrides)
    return quick_config(tmp_path / "data", tmp_path / "out", "lora", **options)


class Spy:
    """Wraps the loop's optimizer: counts the steps it really takes and keeps its parameters."""

    def __init__(self, monkeypatch):
        self.steps, self.params = 0, []
        build = loop.build_optimizer

        def spying_build(cfg, groups, device):
            optimizer = build(cfg, groups, device)
            self.params = [p for g in groups for p in g["params"]]
            optimizer.register_step_post_hook(self._count)
            return optimizer

        monkeypatch.setattr(loop, "build_optimizer", spying_build)

    def _count(self, optimizer, args, kwargs) -> None:
        self.steps += 1


def _nan_loss_at(monkeypatch, step: int) -> None:
    """The loss of optimizer step `step` (one loss per step in these runs) comes out NaN."""
    real, calls = loop.denoising_loss, []

    def loss(*a, **k):
        calls.append(1)
        value = real(*a, **k)
        return value * float("nan") if len(calls) == step else value

    monkeypatch.setattr(loop, "denoising_loss", loss)


class Recorder(Callbacks):
    def __init__(self, out: Path):
        self.out, self.steps, self.saved_bytes = out, [], {}

    def on_step(self, info):
        self.steps.append(info.step)

    def on_saved(self, path, final):
        self.saved_bytes[Path(path).name] = Path(path).read_bytes()


def _assert_names_the_fixes(text: str, step: int, what: str) -> None:
    assert f"step {step}" in text and f"the {what} became NaN/inf" in text
    assert "training.learning_rate = 0.001" in text
    assert "bf16" in text and "training.mixed_precision" in text
    assert "fp32 VAE" in text and "latent" in text


def test_a_nan_loss_stops_before_the_step_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    spy = Spy(monkeypatch)
    _nan_loss_at(monkeypatch, 3)
    rec = Recorder(tmp_path / "out")
    with pytest.raises(NonFiniteLossError) as e:
        run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=rec)
    _assert_names_the_fixes(str(e.value), 3, "loss")
    assert e.value.step == 3 and rec.steps == [1, 2] and spy.steps == 2
    # the step-2 file is as it was written; no final file, no later step file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]
    assert (tmp_path / "out" / STEP2).read_bytes() == rec.saved_bytes[STEP2]


def test_a_nan_gradient_is_never_applied(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    spy = Spy(monkeypatch)
    after_step_2 = []

    class Snapshot(Recorder):
        def on_step(self, info):
            super().on_step(info)
            if info.step == 2:
                after_step_2.extend(p.detach().clone() for p in spy.params)
                # the next backward (step 3) gives one parameter a NaN gradient
                spy.params[0].register_hook(lambda g: g * float("nan") if spy.steps == 2 else g)

    rec = Snapshot(tmp_path / "out")
    with pytest.raises(NonFiniteLossError) as e:
        run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=rec)
    _assert_names_the_fixes(str(e.value), 3, "gradients")
    assert spy.steps == 2 and rec.steps == [1, 2]
    assert all(torch.equal(p.detach(), q) for p, q in zip(spy.params, after_step_2))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]


def test_weights_with_a_nan_are_never_written(tmp_path, monkeypatch):
    """Belt and braces: an optimizer step that overflows finite weights is caught at the save."""
    cfg = _config(tmp_path)
    spy = Spy(monkeypatch)

    class Poison(Recorder):
        def on_step(self, info):
            super().on_step(info)
            if info.step == 4:
                with torch.no_grad():
                    spy.params[0].view(-1)[0] = float("inf")

    rec = Poison(tmp_path / "out")
    with pytest.raises(NonFiniteLossError) as e:
        run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=rec)
    text = str(e.value)
    assert "step 4" in text and "trained weights" in text and "test_lora-step00000004.safetensors" in text
    assert "training.learning_rate" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]
    assert (tmp_path / "out" / STEP2).read_bytes() == rec.saved_bytes[STEP2]


def test_the_job_ends_in_error_with_the_message(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    _nan_loss_at(monkeypatch, 3)
    job = TrainingJob()
    job.start(cfg, StandaloneHost(tiny_bundle()))
    assert job.wait(120)
    s = job.status()
    assert s["state"] == "error", s
    _assert_names_the_fixes(s["error"], 3, "loss")
    assert s["message"].startswith("Failed: training stopped at step 3")
    assert "Traceback" not in "\n".join(s["log"])        # a user-fixable failure, shown as a message
    assert s["output_path"] == "" and s["step"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]


def test_a_real_divergence_ends_the_job_in_error_with_only_finite_files(tmp_path):
    """The highest learning rate the config takes (10) diverges the tiny model within a few steps."""
    cfg = _config(tmp_path)
    cfg.training.learning_rate, cfg.training.max_train_steps, cfg.output.save_every_n_steps = 10.0, 40, 1
    job = TrainingJob()
    job.start(cfg, StandaloneHost(tiny_bundle()))
    assert job.wait(300)
    s = job.status()
    assert s["state"] == "error", s["state"]
    assert "training.learning_rate = 10" in s["error"] and "NaN/inf" in s["error"]
    files = list((tmp_path / "out").iterdir())
    assert not (tmp_path / "out" / "test_lora.safetensors").exists()
    for path in files:
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values()), path.name


def test_the_cli_exits_non_zero_with_the_message_and_writes_no_file(tmp_path):
    from safetensors.torch import save_file

    from extensions_lib.model.tiny import tiny_ldm_state_dict

    from helpers import TOKENIZER_DIR

    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tiny.safetensors"))
    cfg = _config(tmp_path)
    cfg.model.checkpoint = str(tmp_path / "tiny.safetensors")
    cfg.model.tokenizer = str(TOKENIZER_DIR)
    cfg.save_toml(tmp_path / "train.toml")
    # `python -m extensions_lib train ...` with the loss of step 3 forced to NaN
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""
        import runpy, sys
        import extensions_lib.train.loop as loop
        real, calls = loop.denoising_loss, []
        def loss(*a, **k):
            calls.append(1)
            return real(*a, **k) * (float("nan") if len(calls) == 3 else 1.0)
        loop.denoising_loss = loss
        sys.argv = ["extensions_lib", "train", sys.argv[1]]
        runpy.run_module("extensions_lib", run_name="__main__")
    """), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, str(driver), str(tmp_path / "train.toml")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0, r.stdout[-2000:]
    _assert_names_the_fixes(r.stderr, 3, "loss")
    assert "Traceback" not in r.stderr and "done" not in r.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]


def _any_process_worker(rank: int, init: str, results) -> None:
    import torch.distributed as dist

    from datetime import timedelta

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=timedelta(seconds=120))
    d = loop.Dist(num_processes=2, process_index=rank)
    cpu = torch.device("cpu")
    results[rank] = (d.any_process(rank == 1, cpu), d.any_process(False, cpu))
    d.finish()      # the product's own close: a barrier, then the group is destroyed


def test_the_stop_decision_is_shared_by_every_process(tmp_path):
    """A NaN seen by one data-parallel process stops all of them (no process waits forever)."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_any_process_worker, args=(f"file://{tmp_path / 'pg'}", results), nprocs=2, join=True)
    assert dict(results) == {0: (True, False), 1: (True, False)}
