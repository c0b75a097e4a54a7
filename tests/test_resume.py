"""Saving and resuming the full training state: a run stopped in the middle of an epoch and resumed
ends with weights bitwise equal to the same run left alone; a changed dataset or option is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from extensions_lib.config import ConfigError
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.model.tiny import tiny_ldm_state_dict
from extensions_lib.train.events import Callbacks, Commands
from extensions_lib.train.resume import FILES
from extensions_lib.train.session import run_training

from helpers import TOKENIZER_DIR, accelerate_launch, make_images, on_tiny_checkpoint, quick_config, tiny_bundle

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, out: str, method: str = "lora", **overrides):
    """A run of 2 epochs x 8 steps that draws from every random source: dropout (torch), noise
    offset and timesteps (the noise generator), caption shuffling and flips (the data order), and
    for embeddings a template chosen per step (the method's own generator)."""
    data = tmp_path / "data"
    if not data.exists():
        make_images(data / "2_sks")
    cfg = quick_config(data, tmp_path / out, method, training__lr_scheduler="cosine",
                       training__noise_offset=0.05, data__shuffle_caption=True, data__flip_aug=True,
                       output__save_precision="fp32", **overrides)
    if method == "embedding":
        cfg.embedding.token = "sksword"
        cfg.embedding.prompt_source = "template"
        cfg.output.name = "sksword"
    else:
        cfg.network.dropout = 0.1
    return cfg


class StopAt(Callbacks):
    def __init__(self, commands: Commands, step: int):
        self.commands, self.step = commands, step

    def on_step(self, info):
        if info.step == self.step:
            self.commands.request_stop()


def _train(cfg, host=None, stop_at: int | None = None):
    commands = Commands()
    return run_training(cfg, host or StandaloneHost(tiny_bundle()),
                        callbacks=StopAt(commands, stop_at) if stop_at else None, commands=commands)


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert wa[key].dtype == torch.float32
        assert torch.equal(wa[key], wb[key]), key


# bf16 autocast on the CPU is as deterministic as fp32: resumed runs match it bitwise too
@pytest.mark.parametrize("method, precision", [("lora", "no"), ("embedding", "no"), ("lora", "bf16")])
def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, method, precision):
    whole = _train(_config(tmp_path, "whole", method, training__mixed_precision=precision))
    assert whole.steps == 16 and not whole.stopped

    cfg = _config(tmp_path, "parts", method, training__mixed_precision=precision, output__save_state=True)
    first = _train(cfg, stop_at=5)                      # epoch 1 has 8 steps: stopped inside it
    state = tmp_path / "parts" / f"{cfg.output_name}-state"
    assert first.stopped and first.steps == 5
    assert sorted(p.name for p in state.iterdir()) == sorted(FILES)
    info = json.loads((state / "trainer.json").read_text(encoding="utf-8"))
    assert (info["step"], info["epoch"], info["batches_done"]) == (5, 1, 5)
    # the first part's final file is not bitwise the whole run's: the comparison below means something
    part, full = (load_file(str(r.output_path)) for r in (first, whole))
    assert not all(torch.equal(part[k], full[k]) for k in full)

    cfg.training.resume = str(state)
    rest = _train(cfg)
    assert rest.steps == 16 and not rest.stopped
    assert rest.output_path == first.output_path        # its own final file, replaced
    _assert_bitwise_equal(whole.output_path, rest.output_path)
    with safe_open(str(rest.output_path), "pt") as f:
        assert f.metadata().get("ss_steps", "16") == "16"
    assert json.loads((state / "trainer.json").read_text(encoding="utf-8"))["step"] == 16


def test_periodic_states_keep_the_last_n_and_resume_from_an_older_one(tmp_path):
    # 2 batches per step: 4 steps per epoch, step 3 ends batch 6 of epoch 1
    opts = dict(training__max_grad_norm=0.5, training__gradient_accumulation_steps=2)
    whole = _train(_config(tmp_path, "whole", **opts))
    assert whole.steps == 8
    cfg = _config(tmp_path, "parts", **opts, output__save_state=True, output__save_every_n_steps=1,
                  output__keep_last_n_states=3)
    _train(cfg, stop_at=5)
    out = tmp_path / "parts"
    # states at steps 1 to 4, then 5 on stop: the newest as <name>-state, two older ones kept
    assert sorted(p.name for p in out.iterdir() if "state" in p.name) == [
        "test_lora-state", "test_lora-state-00000003", "test_lora-state-00000004"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]     # no temporary folder left
    info = json.loads((out / "test_lora-state-00000003" / "trainer.json").read_text(encoding="utf-8"))
    assert (info["step"], info["epoch"], info["batches_done"]) == (3, 1, 6)
    # the files the run wrote after step 3 (to the final one, on stop) are not in that state's list
    cfg.output.overwrite = True
    cfg.training.resume = str(out / "test_lora-state-00000003")
    rest = _train(cfg)
    _assert_bitwise_equal(whole.output_path, rest.output_path)


def test_a_changed_dataset_is_refused_naming_the_file(tmp_path):
    cfg = _config(tmp_path, "out", output__save_state=True)
    _train(cfg, stop_at=2)
    make_images(tmp_path / "extra", n=5)
    os.replace(tmp_path / "extra" / "img4.png", tmp_path / "data" / "2_sks" / "img4.png")
    cfg.training.resume = str(tmp_path / "out" / "test_lora-state")
    with pytest.raises(ConfigError) as e:
        _train(cfg, host=_NoModelHost())
    text = str(e.value)
    assert "training.resume" in text and "train/2_sks/img4.png" in text and "4 image(s)" in text


def test_a_changed_shape_option_is_refused_naming_it_and_both_values(tmp_path):
    cfg = _config(tmp_path, "out", output__save_state=True)
    _train(cfg, stop_at=2)
    cfg.training.resume = str(tmp_path / "out" / "test_lora-state")
    cfg.network.dim = 8
    with pytest.raises(ConfigError) as e:
        _train(cfg, host=_NoModelHost())
    [problem] = e.value.problems
    assert problem.field == "network.dim" and problem.value == 8 and "was 4" in problem.allowed
    # more epochs and other save settings are allowed (and nothing here loads the model either)
    cfg.network.dim = 4
    cfg.training.max_train_epochs = 3
    cfg.output.save_every_n_epochs = 1
    with pytest.raises(_Borrowed):
        _train(cfg, host=_NoModelHost())


def test_a_missing_or_incomplete_state_is_refused(tmp_path):
    cfg = _config(tmp_path, "out", output__save_state=True)
    cfg.training.resume = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="training.resume"):
        _train(cfg, host=_NoModelHost())
    _train(_config(tmp_path, "out", output__save_state=True), stop_at=1)
    state = tmp_path / "out" / "test_lora-state"
    (state / "optimizer.state").unlink()
    cfg.training.resume = str(state)
    with pytest.raises(ConfigError, match="missing optimizer.state"):
        _train(cfg, host=_NoModelHost())


def test_a_state_of_another_run_is_not_replaced(tmp_path):
    cfg = _config(tmp_path, "out", output__save_state=True)
    _train(cfg, stop_at=1)
    (tmp_path / "out" / "test_lora.safetensors").unlink()
    with pytest.raises(FileExistsError, match="test_lora-state"):
        _train(cfg, host=_NoModelHost())


class _Borrowed(Exception):
    pass


class _NoModelHost(StandaloneHost):
    """Fails the test's run at the model: the checks before it are all that ran."""

    def __init__(self):
        super().__init__(object(), device="cpu")    # a "model" that is never looked at

    def borrow_bundle(self, cfg):
        raise _Borrowed()


# -- a new process ------------------------------------------------------------------------------------
def test_resume_in_a_new_process_through_the_cli(tmp_path):
    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt))

    def config(out: str, **kw):
        cfg = _config(tmp_path, out, **kw)
        cfg.model.checkpoint, cfg.model.tokenizer = str(ckpt), str(TOKENIZER_DIR)
        return cfg

    whole = _train(config("whole"), host=StandaloneHost(device="cpu"))
    cfg = config("parts", output__save_state=True)
    _train(cfg, host=StandaloneHost(device="cpu"), stop_at=11)     # inside epoch 2
    cfg.save_toml(tmp_path / "parts.toml")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "extensions_lib", "train", str(tmp_path / "parts.toml"),
                        "--resume", str(tmp_path / "parts" / "test_lora-state")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming at step 11" in r.stdout + r.stderr
    _assert_bitwise_equal(whole.output_path, tmp_path / "parts" / "test_lora.safetensors")


# -- REST ---------------------------------------------------------------------------------------------
def test_rest_train_body_resumes(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui.api import register_routes
    from extensions_lib.ui.job import TrainingJob

    whole = _train(_config(tmp_path, "whole"))
    cfg = _config(tmp_path, "parts", output__save_state=True)
    _train(cfg, stop_at=9)
    app, job = FastAPI(), TrainingJob()
    register_routes(app, job, lambda: StandaloneHost(tiny_bundle()))
    body = cfg.to_dict()
    body["training"]["resume"] = str(tmp_path / "parts" / "test_lora-state")
    client = TestClient(app)
    r = client.post("/trainer/v1/train", json=body)
    assert r.status_code == 200, r.text
    assert job.wait(300) and job.status()["state"] == "done"
    _assert_bitwise_equal(whole.output_path, tmp_path / "parts" / "test_lora.safetensors")
    # a refused resume is a 4xx naming the field, before anything runs
    body["network"]["dim"] = 8
    r = client.post("/trainer/v1/train", json=body)
    assert 400 <= r.status_code < 500 and "network.dim" in r.text


def test_resume_works_where_torch_load_is_the_webuis_refusing_wrapper(tmp_path, monkeypatch):
    """Inside the WebUI torch.load is modules/safe.py's wrapper, which refuses the '.format_version'
    entry current torch writes into a .pt zip and returns None: the state must not go through it."""
    cfg = _config(tmp_path, "parts", "lora", output__save_state=True)
    first = _train(cfg, stop_at=5)
    assert first.stopped
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: None)   # what the refusing wrapper returns
    cfg.training.resume = str(tmp_path / "parts" / f"{cfg.output_name}-state")
    rest = _train(cfg)
    assert rest.steps == 16 and not rest.stopped


def test_a_resumed_run_keeps_the_validation_losses_and_trains_like_one_left_alone(tmp_path):
    """Validation on: the held-out images are the same in both parts, the weights end bitwise equal,
    and the resumed run's curve holds the points measured before the stop."""
    make_images(tmp_path / "data" / "2_sks", n=6)
    options = dict(data__validation_split=0.34, training__validate_every_n_steps=2, output__keep_best_validation=True)
    whole = _train(_config(tmp_path, "whole", **options))
    cfg = _config(tmp_path, "parts", output__save_state=True, **options)
    first = _train(cfg, stop_at=3)
    assert [s for s, _ in first.val_losses] == [2, 3]        # every 2 steps, and once when stopped
    info = json.loads((tmp_path / "parts" / f"{cfg.output_name}-state" / "trainer.json").read_text())
    assert info["best_val_loss"] == min(v for _, v in first.val_losses)   # the resumed run compares with it
    cfg.training.resume = str(tmp_path / "parts" / f"{cfg.output_name}-state")
    second = _train(cfg)
    assert second.steps == whole.steps and not second.stopped
    _assert_bitwise_equal(whole.output_path, second.output_path)
    assert second.val_losses[:2] == first.val_losses
    # the same weights at the same steps give the same validation loss in either run
    assert dict(second.val_losses)[4] == dict(whole.val_losses)[4]


def test_a_state_holds_no_file_the_webui_model_lists_would_load_and_format_1_still_resumes(tmp_path):
    """The WebUI walks models/Lora, embeddings and models/hypernetworks with their subfolders and takes
    .safetensors/.pt/.ckpt/.bin (and pictures, for embeddings): a state folder there must hold none.
    A state written with the first format's names still resumes."""
    whole = _train(_config(tmp_path, "whole"))
    cfg = _config(tmp_path, "parts", output__save_state=True)
    _train(cfg, stop_at=5)
    state = tmp_path / "parts" / f"{cfg.output_name}-state"
    loaded_by_webui = {".safetensors", ".pt", ".ckpt", ".bin", ".png", ".webp", ".jxl", ".avif"}
    assert not [p.name for p in state.iterdir() if p.suffix.lower() in loaded_by_webui]

    (state / "weights.state").rename(state / "weights.safetensors")      # as format 1 wrote it
    (state / "optimizer.state").rename(state / "optimizer.pt")
    info = json.loads((state / "trainer.json").read_text(encoding="utf-8"))
    (state / "trainer.json").write_text(json.dumps(dict(info, format=1)), encoding="utf-8")
    cfg.training.resume = str(state)
    _assert_bitwise_equal(whole.output_path, _train(cfg).output_path)


def test_a_data_parallel_run_resumes_bitwise_under_the_same_number_of_processes(tmp_path):
    """2 CPU processes (accelerate, gloo): the run resumed from its step-4 state ends bitwise equal to the
    run that went on; each process gets back its own generators. One process cannot resume it."""
    cfg = on_tiny_checkpoint(_config(tmp_path, "whole", training__max_train_epochs=2, output__save_state=True,
                                     output__save_every_n_steps=2, output__keep_last_n_states=4), tmp_path)
    cfg.save_toml(tmp_path / "whole.toml")
    r = accelerate_launch(["-m", "extensions_lib", "train", tmp_path / "whole.toml"], tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    state4 = tmp_path / "whole" / f"{cfg.output_name}-state-00000004"
    info = json.loads((state4 / "trainer.json").read_text(encoding="utf-8"))
    assert info["num_processes"] == 2 and len(info["rng_ranks"]) == 2 and info["step"] == 4

    cfg.output.output_dir = str(tmp_path / "resumed")
    cfg.training.resume = str(state4)
    cfg.save_toml(tmp_path / "resumed.toml")
    r = accelerate_launch(["-m", "extensions_lib", "train", tmp_path / "resumed.toml"], tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert "resuming at step 4" in r.stdout + r.stderr
    _assert_bitwise_equal(tmp_path / "whole" / f"{cfg.output_name}.safetensors",
                          tmp_path / "resumed" / f"{cfg.output_name}.safetensors")

    with pytest.raises(ConfigError, match="2 data-parallel process"):
        run_training(cfg, StandaloneHost(tiny_bundle()))
