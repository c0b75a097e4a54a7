"""The Trainer tab's pieces without a browser: widgets on this gradio version, the job runner with a
tiny model, the REST API, presets, TOML save/load through the tab's handlers, the WebUI glue."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import make_images, quick_config, tiny_bundle

from extensions_lib.config import ConfigError, TrainConfig, iter_fields
from extensions_lib.data.folders import DatasetError
from extensions_lib.export.atomic import OutputExistsError
from extensions_lib.hosts.base import Host, HostError
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train.events import Callbacks
from extensions_lib.train.session import run_training
from extensions_lib.ui import compat
from extensions_lib.ui.fields import SPECS, config_to_values, values_to_config
from extensions_lib.ui.job import JobBusyError, TrainingJob
from extensions_lib.ui.plot import loss_plot
from extensions_lib.ui.presets import DEFAULTS, PRESETS, apply_preset, preset_names
from extensions_lib.ui.tab import ELEM_ID, build_tab, layout_keys, tab_label

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_PRESETS = ("SD1.5 character LoRA (8 GB)", "SD1.5 style LoRA", "LoCon detail",
                    "Embedding (textual inversion)", "Hypernetwork")


# -- helpers -----------------------------------------------------------------------------------------
class FormHost(Host):
    """Only what the tab asks of a host: whether the run loads the model the form names."""

    def __init__(self, model_from_config: bool):
        self.model_from_config = model_from_config


class Recorder(Callbacks):
    def __init__(self):
        self.steps = []

    def on_step(self, info):
        self.steps.append(info.step)


class ProgressHost(StandaloneHost):
    """A standalone host that, like the WebUI's, supplies its own progress callbacks."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.recorder = Recorder()
        self.commands_seen = None

    def progress(self, commands=None):
        self.commands_seen = commands
        return self.recorder


class SlowHost(StandaloneHost):
    """Holds each run at the start until released, so tests can act while it 'runs'."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.release = threading.Event()

    @contextmanager
    def borrow_bundle(self, cfg):
        assert self.release.wait(60)
        with super().borrow_bundle(cfg) as b:
            yield b


class BrokenHost(StandaloneHost):
    @contextmanager
    def borrow_bundle(self, cfg):
        raise RuntimeError("the GPU caught fire")
        yield  # pragma: no cover


@pytest.fixture
def dataset(tmp_path):
    make_images(tmp_path / "data" / "2_sks", n=4, size=64)
    return tmp_path / "data"


def _wait_state(job: TrainingJob, pred, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = job.status()
        if pred(s):
            return s
        time.sleep(0.02)
    raise AssertionError(f"timed out; status: {job.status(losses=False)}")


def _values(tab, cfg: TrainConfig) -> list:
    return config_to_values(cfg, tab.trainer_keys)


# -- the tab -----------------------------------------------------------------------------------------
def test_tab_has_a_widget_with_help_for_every_option():
    tab = build_tab(FormHost(True), TrainingJob())
    widgets = tab.trainer_widgets
    every = {f"{s}.{f.name}" for s, f in iter_fields()}
    assert set(widgets) == every                 # standalone: every option, model ones included
    assert len(tab.trainer_keys) == len(set(tab.trainer_keys))   # no option placed twice
    for key, w in widgets.items():
        assert w.info == SPECS[key].help and w.info, key           # the config's help is the tooltip
        assert w.elem_id == f"{ELEM_ID}_{key.replace('.', '_')}"
    # inside the WebUI the loaded model is used: no checkpoint/VAE/tokenizer fields
    webui = build_tab(FormHost(False), TrainingJob())
    assert {"model.checkpoint", "model.vae", "model.tokenizer"}.isdisjoint(webui.trainer_widgets)
    assert "model.clip_skip" in webui.trainer_widgets
    assert set(layout_keys(False)) == every - {"model.checkpoint", "model.vae", "model.tokenizer",
                                               "model.v_prediction"}


def test_model_section_follows_the_host_or_the_argument(tmp_path):
    from extensions_lib.hosts.a1111 import A1111Host
    from extensions_lib.ui.layout import shows_model_section
    from extensions_lib.ui.standalone import CheckpointHost

    assert shows_model_section(StandaloneHost()) and shows_model_section(CheckpointHost(tmp_path))
    assert not shows_model_section(A1111Host()) and not shows_model_section(FormHost(False))

    class Renamed(Host):          # the name is not what decides
        name = "standalone"

    assert not shows_model_section(Renamed())
    # the argument wins over the host
    assert "model.checkpoint" not in build_tab(StandaloneHost(), TrainingJob(),
                                               show_model_section=False).trainer_widgets
    assert "model.checkpoint" in build_tab(FormHost(False), TrainingJob(), show_model_section=True).trainer_widgets


def test_tab_label_and_id():
    from extensions_lib.hosts.a1111 import A1111Host

    assert ELEM_ID == "trainer_ext"
    # the product's name in the WebUI (beside its own "Train" tab) and standalone alike
    assert tab_label(A1111Host()) == tab_label(StandaloneHost()) == "Trainer"


def test_method_switch_shows_only_its_options():
    tab = build_tab(FormHost(True), TrainingJob())
    on_method = tab.trainer_handlers["method"]
    # sections: Network, Embedding, Hypernetwork, Training, Samples, Output, Model; then conv dim,
    # conv alpha, LoKr factor
    vis = [u.get("visible") for u in on_method("embedding")]
    assert vis[:3] == [False, True, False] and vis[3:7] == [True] * 4 and vis[-3:] == [False, False, False]
    vis = [u.get("visible") for u in on_method("lokr")]
    assert vis[:3] == [True, False, False] and vis[-3:] == [True, True, True]
    vis = [u.get("visible") for u in on_method("lora")]
    assert vis[-3:] == [False, False, False]       # plain LoRA has no conv layers


def test_dataset_summary_updates_from_the_form(dataset, tmp_path):
    tab = build_tab(FormHost(True), TrainingJob())
    keys = tab.trainer_summary_keys
    on_dataset = tab.trainer_handlers["dataset"]
    cfg = TrainConfig()
    cfg.data.train_dir = str(dataset)
    cfg.training.max_train_epochs = 3
    (dataset / "2_sks" / "broken.png").write_bytes(b"not a png")
    (dataset / "2_sks" / "img0.txt").unlink()
    html = on_dataset(*config_to_values(cfg, keys))
    assert "2_sks" in html and "<table>" in html
    # 4 readable images x 2 repeats = 8 steps per epoch at batch 1; 3 epochs
    assert "<b>8</b> steps per epoch" in html and "<b>24</b> steps in all" in html
    assert "broken.png" in html                                  # the unreadable file is named
    assert "<td class='warn'>1</td>" in html                    # one caption missing, one unreadable
    cfg.training.train_batch_size = 4
    assert "<b>2</b> steps per epoch" in on_dataset(*config_to_values(cfg, keys))
    cfg.data.train_dir = str(tmp_path / "nope")
    assert "does not exist" in on_dataset(*config_to_values(cfg, keys))
    vals = config_to_values(cfg, keys)
    vals[keys.index("training.train_batch_size")] = None       # an emptied number field
    assert "training.train_batch_size" in on_dataset(*vals)


def test_form_values_round_trip_and_type_errors():
    keys = list(SPECS)
    cfg = TrainConfig()
    cfg.sample.prompts = ["a dog", "a cat, on a mat"]
    cfg.hypernetwork.layer_structure = [1, 1.5, 1]
    cfg.hypernetwork.dropout_structure = [0, 0.3, 0]
    cfg.data.max_token_length = 150
    cfg.network.method = "loha"
    values = config_to_values(cfg, keys)
    assert values[keys.index("sample.prompts")] == "a dog\na cat, on a mat"
    assert values[keys.index("data.max_token_length")] == "150"
    assert values_to_config(keys, values).to_dict() == cfg.to_dict()
    values[keys.index("training.learning_rate")] = "fast"
    values[keys.index("training.seed")] = None
    with pytest.raises(ConfigError) as e:
        values_to_config(keys, values)
    assert "training.seed" in str(e.value)
    values[keys.index("training.seed")] = 1
    with pytest.raises(ConfigError) as e:
        values_to_config(keys, values)
    assert "training.learning_rate" in str(e.value)


# -- presets -----------------------------------------------------------------------------------------
def test_presets_give_valid_configs():
    assert set(REQUIRED_PRESETS) <= set(preset_names())
    for name in list(PRESETS) + [DEFAULTS]:
        cfg = apply_preset(TrainConfig(), name)
        problems = [p.field for p in cfg.validate()]
        assert problems == ["data.train_dir"], (name, problems)
    assert apply_preset(TrainConfig(), "Embedding (textual inversion)").network.method == "embedding"
    assert apply_preset(TrainConfig(), "LoCon detail").network.method == "locon"
    assert apply_preset(TrainConfig(), "Hypernetwork").network.method == "hypernetwork"


def test_preset_keeps_the_dataset_and_sets_only_its_fields():
    tab = build_tab(FormHost(True), TrainingJob())
    out = tab.trainer_handlers["preset"]("LoCon detail")
    keys = tab.trainer_keys
    by_key = dict(zip(keys, out[:-1]))
    assert by_key["network.method"]["value"] == "locon"
    assert by_key["network.conv_dim"]["value"] == 8
    assert "value" not in by_key["data.train_dir"]              # untouched
    assert "value" not in by_key["output.name"]
    assert "LoCon" in out[-1]


# -- config files through the tab --------------------------------------------------------------------
def test_toml_save_and_load_through_the_tab(tmp_path, dataset):
    from extensions_lib.cli import load_config

    tab = build_tab(FormHost(True), TrainingJob())
    h = tab.trainer_handlers
    cfg = apply_preset(TrainConfig(), "SD1.5 style LoRA")
    cfg.data.train_dir = str(dataset)
    cfg.sample.prompts = ["sks dog", "sks dog on a beach"]
    cfg.output.name = "round_trip"
    cfg.hypernetwork.layer_structure = [1, 2, 2, 1]
    path = tmp_path / "sub" / "cfg.toml"
    msg = h["save"](str(path), *_values(tab, cfg))
    assert "Saved" in msg and path.is_file()
    assert load_config(path, []).to_dict() == cfg.to_dict()      # the CLI reads what the tab writes
    out = h["load"](str(path))
    assert "Loaded" in out[-1]
    loaded = values_to_config(tab.trainer_keys, [u["value"] for u in out[:-1]])
    assert loaded.to_dict() == cfg.to_dict()
    # a broken file names the problem and changes nothing
    path.write_text('[training]\nlearning_rate = "fast"\n', encoding="utf-8")
    out = h["load"](str(path))
    assert "training.learning_rate" in out[-1] and all("value" not in u for u in out[:-1])
    assert "enter" in h["save"]("", *_values(tab, cfg))
    assert "not found" in h["load"](str(tmp_path / "missing.toml"))[-1]


# -- the job runner ----------------------------------------------------------------------------------
def test_job_trains_in_the_background_and_reports(tmp_path, dataset):
    cfg = quick_config(dataset, tmp_path / "out", training__max_train_epochs=3)
    cfg.sample.prompts = ["sks"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps = 2
    cfg.sample.every_n_epochs = 2
    host = ProgressHost(tiny_bundle())
    job = TrainingJob()
    assert job.status()["state"] == "idle"
    job_id = job.start(cfg, host)
    s = job.status()
    assert s["job_id"] == job_id and s["state"] in ("preparing", "training", "done")
    assert s["total_steps"] == 24               # known before the model loads: 4 images x 2 repeats x 3 epochs
    assert job.wait(120)
    s = job.status()
    assert s["state"] == "done", s["error"]
    assert s["step"] == s["total_steps"] == 24 and len(s["losses"]) == 24
    assert s["prompt_usage"] == "<lora:test_lora:0.8>"
    assert Path(s["output_path"]).is_file() and s["output_path"] in s["saved"]
    assert s["loss"] is not None and s["it_per_s"] > 0 and s["eta_s"] == 0.0
    assert [p["prompt"] for p in s["previews"]] == ["sks"]
    images = job.preview_images()
    assert len(images) == 1 and images[0][0].size == (64, 64) and images[0][1] == "sks"
    assert host.recorder.steps == list(range(1, 25))    # the host's own progress got every step
    assert host.commands_seen is not None               # ... and this run's Commands (WebUI Interrupt)
    assert any("done" in line for line in s["log"])


def test_second_start_is_refused_and_stop_is_honoured(tmp_path, dataset):
    cfg = quick_config(dataset, tmp_path / "out", training__max_train_epochs=2000)
    host = SlowHost(tiny_bundle())
    job = TrainingJob()
    job.start(cfg, host)
    assert job.status()["state"] == "preparing"
    with pytest.raises(JobBusyError, match="a training is already running: stop it first"):
        job.start(quick_config(dataset, tmp_path / "out2"), StandaloneHost(tiny_bundle()))
    host.release.set()
    _wait_state(job, lambda s: s["step"] >= 2)
    assert job.status()["state"] == "training"
    assert job.stop()
    assert job.wait(60)
    s = job.status()
    assert s["state"] == "stopped" and 2 <= s["step"] < s["total_steps"]
    assert Path(s["output_path"]).is_file()             # stopping still saves what was learnt
    assert s["prompt_usage"] == "<lora:test_lora:0.8>"
    assert not job.stop()                               # nothing left to stop


def test_save_now_and_sample_now_act_on_the_running_training(tmp_path, dataset):
    """The run column's Save now / Sample now: an intermediate file named like the periodic step
    saves, previews like the periodic ones, both while the run goes on; idle, a clear message."""
    from safetensors import safe_open

    job = TrainingJob()
    h = build_tab(FormHost(False), job).trainer_handlers
    for press in ("save_now", "sample_now"):
        assert "Nothing is training" in h[press]()
    assert job.request_save() is False and job.request_sample() is False

    cfg = quick_config(dataset, tmp_path / "out", training__max_train_epochs=2000)
    cfg.sample.prompts = ["sks"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps, cfg.sample.every_n_epochs = 2, 0        # no periodic previews: only requested ones
    job.start(cfg, StandaloneHost(tiny_bundle()))
    try:
        _wait_state(job, lambda s: s["step"] >= 1, timeout=120)
        assert "Saving" in h["save_now"]()
        s = _wait_state(job, lambda s: s["saved"], timeout=120)
        assert s["state"] == "training"                         # the run goes on after the save
        path = Path(s["saved"][0])
        step = int(re.fullmatch(r"test_lora-step(\d{8})\.safetensors", path.name).group(1))
        assert 1 <= step < s["total_steps"]
        with safe_open(str(path), framework="pt") as f:
            assert any(k.startswith("lora_unet_") for k in f.keys())
            assert f.metadata()["ss_steps"] == str(step)

        assert job.preview_images() == []
        assert "previews" in h["sample_now"]()
        s = _wait_state(job, lambda s: s["preview_step"] is not None, timeout=120)
        assert s["state"] == "training" and s["preview_step"] < s["total_steps"]
        (image, prompt), = job.preview_images()
        assert prompt == "sks" and image.size == (64, 64)
    finally:
        job.stop()
        assert job.wait(120)
    assert job.status()["state"] == "stopped"


def test_save_now_asked_before_the_first_step_and_sample_now_without_prompts(tmp_path, dataset):
    """Requests made while the model loads act after the first step; Sample now of a run without
    preview prompts says so; a requested save never replaces a file (overwrite off) nor ends the run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_lora-step00000001.safetensors").write_bytes(b"an earlier run's file")
    host = SlowHost(tiny_bundle())
    job = TrainingJob()
    h = build_tab(FormHost(False), job).trainer_handlers
    job.start(quick_config(dataset, out, training__max_train_epochs=2000), host)
    try:
        assert job.status()["state"] == "preparing"
        with pytest.raises(ValueError, match="sample.prompts"):
            job.request_sample()
        assert "no preview prompts" in h["sample_now"]()
        assert job.request_save()
        host.release.set()
        s = _wait_state(job, lambda s: s["warnings"], timeout=120)
        assert "test_lora-step00000001.safetensors already exists" in s["warnings"][0]
        _wait_state(job, lambda s: s["step"] >= 3, timeout=120)      # still training
    finally:
        job.stop()
        assert job.wait(120)
    assert (out / "test_lora-step00000001.safetensors").read_bytes() == b"an earlier run's file"
    assert job.status()["state"] == "stopped"


def test_refusals_come_at_once_and_leave_the_job_idle(tmp_path, dataset):
    job = TrainingJob()
    host = StandaloneHost(tiny_bundle())
    bad = quick_config(dataset, tmp_path / "out", training__learning_rate=-1.0)
    with pytest.raises(ConfigError, match="training.learning_rate"):
        job.start(bad, host)
    with pytest.raises(DatasetError, match="does not exist"):
        job.start(quick_config(tmp_path / "missing", tmp_path / "out"), host)
    with pytest.raises(ConfigError, match="fp16"):
        job.start(quick_config(dataset, tmp_path / "out", training__mixed_precision="fp16"), host)
    with pytest.raises(HostError, match="checkpoint"):
        job.start(quick_config(dataset, tmp_path / "out"), StandaloneHost())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test_lora.safetensors").write_bytes(b"the user's file")
    with pytest.raises(OutputExistsError, match="already exists"):
        job.start(quick_config(dataset, tmp_path / "out"), host)
    assert job.status()["state"] == "idle" and not job.running


def test_a_failing_run_ends_in_error_with_the_reason(tmp_path, dataset):
    job = TrainingJob()
    job.start(quick_config(dataset, tmp_path / "out"), BrokenHost(tiny_bundle()))
    assert job.wait(60)
    s = job.status()
    assert s["state"] == "error" and "the GPU caught fire" in s["error"]
    assert any("Traceback" in line for line in s["log"])
    # and the next start is allowed
    job.start(quick_config(dataset, tmp_path / "out"), StandaloneHost(tiny_bundle()))
    assert job.wait(120) and job.status()["state"] == "done"


def test_tab_start_poll_and_result(tmp_path, dataset):
    from extensions_lib.ui.tab import status_html

    job = TrainingJob()
    host = StandaloneHost(tiny_bundle())
    tab = build_tab(host, job)
    h = tab.trainer_handlers

    cfg = quick_config(dataset, tmp_path / "out")
    bad = quick_config(dataset, tmp_path / "out", training__optimizer="nope")
    msg, *_ = h["start"](*_values(tab, bad))
    assert "training.optimizer" in msg and "trainer-ext-error" in msg
    opened = {"opened_at": time.time()}       # this page was open when the run started
    msg, start_btn, *acting = h["start"](*_values(tab, cfg))    # acting: stop, sample now, save now
    assert "Started" in msg and start_btn["interactive"] is False
    # the memory estimate for these settings on this device, before the run uses any
    assert re.search(r"Estimated peak \d+\.\d\d GiB \(.*activations.*\) on cpu for an SD1.5-sized model; "
                     r"[\d.]+ GiB free of", msg), msg
    assert [u["interactive"] for u in acting] == [True, True, True]
    assert job.wait(120)
    (status, plot, gallery, result, log, start_u, *acting), seen = h["poll"](opened)
    assert "done" in status and "step <b>16</b> / 16" in status
    assert result == "<lora:test_lora:0.8>"
    assert plot is not None and plot.size[0] > 100
    assert start_u["interactive"] is True and [u["interactive"] for u in acting] == [False, False, False]
    again, _ = h["poll"](seen)                # nothing changed: the plot is not redrawn
    assert again[1] == compat.no_change() and again[3] == compat.no_change()
    assert h["poll"](opened)[0][3] == result  # the page polling afresh gets everything again
    msg, *_ = h["start"](*_values(tab, cfg))
    assert "already exists" in msg
    idle = status_html(TrainingJob().status(), {"model": "v1-5.safetensors", "problem": "load an SD1 model"})
    assert "idle" in idle and "v1-5.safetensors" in idle and "load an SD1 model" in idle


def test_loss_plot_draws_the_curve():
    assert loss_plot([]) is None
    img = loss_plot([1.0 / (i + 1) for i in range(300)], total_steps=400)
    assert img.mode == "RGBA" and img.size == (960, 400)
    px = img.getdata()
    orange = sum(1 for r, g, b, a in px if a > 200 and r > 200 and 90 < g < 140 and b < 60)
    assert orange > 500
    assert loss_plot([0.5]).size == (960, 400)          # one point, flat range: still drawn


# -- REST API ----------------------------------------------------------------------------------------
@pytest.fixture
def client():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui.api import register_routes

    app = FastAPI()
    job = TrainingJob()
    hosts = {"host": StandaloneHost(tiny_bundle())}
    register_routes(app, job, lambda: hosts["host"])
    return TestClient(app), job, hosts


def test_rest_train_status_stop(client, tmp_path, dataset):
    c, job, hosts = client
    assert c.get("/trainer/v1/config/default").json() == TrainConfig().to_dict()
    assert c.post("/trainer/v1/stop").json()["stopping"] is False
    assert c.post("/trainer/v1/save").status_code == 409 and c.post("/trainer/v1/sample").status_code == 409
    hosts["host"] = SlowHost(tiny_bundle())
    body = quick_config(dataset, tmp_path / "out", training__max_train_epochs=2000).to_dict()
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 409 and "already running" in r.json()["error"]
    hosts["host"].release.set()
    _wait_state(job, lambda s: s["step"] >= 1)
    s = c.get("/trainer/v1/status").json()
    assert s["job_id"] == job_id and s["state"] == "training" and len(s["losses"]) >= 1
    assert c.get("/trainer/v1/status", params={"losses": "false"}).json()["losses"] == []
    r = c.post("/trainer/v1/sample")
    assert r.status_code == 422 and "sample.prompts" in r.json()["error"]      # this run has no prompts
    assert c.post("/trainer/v1/save").json()["requested"] == "save"
    _wait_state(job, lambda s: list((tmp_path / "out").glob("test_lora-step*.safetensors")), timeout=240)
    assert c.post("/trainer/v1/stop").json()["stopping"] is True
    assert job.wait(60)
    s = c.get("/trainer/v1/status").json()
    assert s["state"] == "stopped" and s["prompt_usage"] == "<lora:test_lora:0.8>"
    assert c.get("/trainer/v1/preview/0").status_code == 404


def test_rest_refusals_list_the_problems(client, tmp_path, dataset):
    c, job, _ = client
    body = quick_config(dataset, tmp_path / "out").to_dict()
    body["training"]["learning_rate"] = "fast"
    body["network"]["dimm"] = 4
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 422
    fields = {p["field"] for p in r.json()["problems"]}
    assert fields == {"training.learning_rate", "network.dimm"}
    body = quick_config(dataset, tmp_path / "out", training__max_train_epochs=0).to_dict()
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "training.max_train_epochs"
    r = c.post("/trainer/v1/train", json=quick_config(tmp_path / "nowhere", tmp_path / "out").to_dict())
    assert r.status_code == 400 and "does not exist" in r.json()["error"]
    r = c.post("/trainer/v1/train", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert c.post("/trainer/v1/train", json=[1, 2]).status_code == 422
    assert job.status()["state"] == "idle"
    r = c.post("/trainer/v1/dataset", json={"data": {"train_dir": str(dataset)}, "training": {"max_train_epochs": 2}})
    assert r.status_code == 200 and r.json()["totals"]["total_steps"] == 16


def test_rest_runs_a_training_to_the_end(client, tmp_path, dataset):
    c, job, _ = client
    body = quick_config(dataset, tmp_path / "out", training__max_train_epochs=1).to_dict()
    body["sample"].update(prompts=["sks"], width=64, height=64, steps=2)
    assert c.post("/trainer/v1/train", json=body).status_code == 200
    assert job.wait(120)
    s = c.get("/trainer/v1/status").json()
    assert s["state"] == "done" and s["step"] == 8
    r = c.get("/trainer/v1/preview/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"


# -- WebUI glue --------------------------------------------------------------------------------------
def test_webui_script_registers_tab_settings_and_routes(tmp_path):
    """scripts/train_tab.py loaded the way the WebUI loads it, against the fake WebUI (in a
    subprocess: the fake's module tree must not leak into other tests)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'fake_webui')!r})
        import fake_webui_control as fw
        from modules import script_callbacks, shared
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        fw.reset({str(tmp_path / 'webui')!r}, argv=["--api", "--api-auth", "me:secret"])
        fw.load_extension_scripts({str(ROOT)!r})
        script_callbacks.ui_settings_callback()
        assert "trainer_ext_default_preset" in shared.opts.data_labels
        shared.opts.set("trainer_ext_default_preset", "LoCon detail")
        tabs = script_callbacks.ui_tabs_callback()
        assert len(tabs) == 1, tabs
        blocks, label, elem_id = tabs[0]
        assert (label, elem_id) == ("Trainer", "trainer_ext"), (label, elem_id)
        assert blocks.trainer_widgets["network.method"].value == "locon"   # the preset setting applies
        app = FastAPI()
        script_callbacks.app_started_callback(None, app)
        c = TestClient(app)
        assert c.get("/trainer/v1/status").status_code == 401                # --api-auth guards it
        s = c.get("/trainer/v1/status", auth=("me", "secret")).json()
        assert s["state"] == "idle", s

        fw.reset({str(tmp_path / 'webui2')!r}, argv=["--api", "--trainer-disable-api"])
        fw.load_extension_scripts({str(ROOT)!r})
        app = FastAPI()
        script_callbacks.app_started_callback(None, app)
        assert TestClient(app).get("/trainer/v1/status").status_code == 404
        print("GLUE OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "GLUE OK" in r.stdout, r.stdout + r.stderr


def test_train_tab_script_imports_without_the_webui(tmp_path):
    # a fresh interpreter: other tests put the fake WebUI's `modules` on sys.path
    code = ("import runpy; ns = runpy.run_path('scripts/train_tab.py'); "
            "assert ns['script_callbacks'] is None; print('IMPORT OK')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "IMPORT OK" in r.stdout, r.stdout + r.stderr


def test_standalone_app_renders_the_tab_with_routes(tmp_path):
    from extensions_lib.ui.standalone import CheckpointHost, build_app

    host = CheckpointHost(output_root=tmp_path)
    demo = build_app(host, TrainingJob())
    assert "model.checkpoint" in demo.trainer_tab.trainer_widgets
    with pytest.raises(HostError, match="empty"):
        host.check_ready(TrainConfig())
    cfg = TrainConfig()
    cfg.model.checkpoint = str(tmp_path / "missing.safetensors")
    with pytest.raises(HostError, match="does not exist"):
        host.check_ready(cfg)
    cfg.model.checkpoint = "tiny"
    host.check_ready(cfg)
    assert host.output_dir("lora", cfg) == tmp_path / "Lora"


def test_status_stays_json_when_the_loss_diverges():
    import json

    from extensions_lib.train.events import StepInfo
    from extensions_lib.ui.tab import status_html

    job = TrainingJob()
    job._step("", StepInfo(step=1, total_steps=10, epoch=1, total_epochs=1, loss=float("nan"),
                           avg_loss=float("inf"), lr=1e-4, it_per_s=2.0, eta_s=4.5))
    s = job.status()
    json.dumps(s, allow_nan=False)           # what the REST API sends
    assert s["losses"] == [None] and s["loss"] is None and s["step"] == 1
    assert "not finite" in status_html(s)
    assert loss_plot(s["losses"]) is None


def test_a_warning_of_the_run_reaches_the_status_log_and_tab():
    from extensions_lib.ui.job import _JobCallbacks
    from extensions_lib.ui.tab import status_html

    job = TrainingJob()
    _JobCallbacks(job, "").on_warning("preview 'sks' at step 4: the decoded image contain NaN/inf")
    s = job.status()
    assert s["warnings"] == ["preview 'sks' at step 4: the decoded image contain NaN/inf"]
    assert s["log"][-1].startswith("warning: preview 'sks'")
    assert "trainer-ext-warning" in status_html(s) and "NaN/inf" in status_html(s)


def test_summary_start_and_run_count_the_same_and_name_what_they_leave_out(tmp_path):
    """A truncated JPEG used to pass the summary's header check and vanish silently from the run
    (190 in the summary, 187 trained); an orphan caption was never mentioned."""
    import io

    import numpy as np
    from PIL import Image

    from extensions_lib.ui.job import preflight
    from extensions_lib.ui.summary import dataset_summary, summary_html

    sub = make_images(tmp_path / "data" / "1_sks", n=3, size=64)
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    (sub / "cut.jpg").write_bytes(buf.getvalue()[:1500])           # header fine, data cut off
    (sub / "cut.txt").write_text("a photo of sks", encoding="utf-8")
    (sub / "ghost.txt").write_text("a caption whose image was deleted", encoding="utf-8")

    cfg = quick_config(tmp_path / "data", tmp_path / "out", training__max_train_epochs=2)
    summary = dataset_summary(cfg)
    assert summary["totals"]["images"] == 3 and summary["totals"]["total_steps"] == 6
    assert any("cut.jpg" in p and "damaged" in p for p in summary["problems"])
    assert any("ghost.txt" in p and "without an image" in p for p in summary["problems"])
    html = summary_html(summary)
    assert "1 file(s) skipped, 1 caption file(s) without an image" in html and "ghost.txt" in html

    host = StandaloneHost(tiny_bundle())
    assert preflight(cfg, host)[:2] == (6, 2)

    warnings, statuses = [], []

    class Rec(Callbacks):
        def on_warning(self, text):
            warnings.append(text)

        def on_status(self, text):
            statuses.append(text)

    result = run_training(cfg, host, callbacks=Rec())
    assert result.steps == 6
    assert any(w.startswith("skipped: ") and "cut.jpg" in w for w in warnings), warnings
    assert any(w.startswith("caption without an image: ") and "ghost.txt" in w for w in warnings), warnings
    assert statuses[0].startswith("dataset: 3 training images (3 samples per epoch); 1 file(s) skipped")


def test_a_freshly_opened_tab_shows_the_last_run_as_the_previous_one(tmp_path, dataset):
    """Opening the page after a run ended must not show its DONE state, numbers, previews and prompt
    as if they were the current job: the status is idle with one labelled line about the last run."""
    job = TrainingJob()
    host = StandaloneHost(tiny_bundle())
    job.start(quick_config(dataset, tmp_path / "out", training__max_train_epochs=1), host)
    assert job.wait(120) and job.status()["state"] == "done"

    tab = build_tab(host, job)                                # the page is built (opened) after the run
    first = next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == f"{ELEM_ID}_status").value
    (status, plot, gallery, result, log, start_u, *acting), seen = tab.trainer_handlers["poll"]({})
    for html in (first, status):
        assert "data-state='idle'" in html and "trainer-ext-badge done" not in html
        assert "Previous run: test_lora (LoRA), finished" in html and "after 8 steps" in html
        assert "use it as &lt;lora:test_lora:0.8&gt;" in html
    assert plot is None and gallery is None and result == "" and log == ""
    assert start_u["interactive"] is True and [u["interactive"] for u in acting] == [False, False, False]
    assert tab.trainer_handlers["poll"](seen)[0] == [compat.no_change()] * 9

    # a run that fails is labelled with its error
    failing = TrainingJob()
    failing.start(quick_config(dataset, tmp_path / "out2"), BrokenHost(tiny_bundle()))
    assert failing.wait(60)
    (status, *_), _ = build_tab(host, failing).trainer_handlers["poll"]({})
    assert "Previous run: test_lora (LoRA), failed" in status and "the GPU caught fire" in status


def test_resumable_runs_are_listed_and_picking_one_fills_resume(tmp_path, dataset):
    """The Output section's list: every complete training state in the form's output folder, newest
    first; a half-written one is left out; picking one fills training.resume, and that run goes on."""
    from extensions_lib.train.session import run_training

    cfg = quick_config(dataset, tmp_path / "out", training__max_train_steps=6, output__save_every_n_steps=2,
                       output__save_state=True, output__keep_last_n_states=2)
    run_training(cfg, StandaloneHost(tiny_bundle()))
    (tmp_path / "out" / ".test_lora-state.tmp-1").mkdir()          # an interrupted write
    (tmp_path / "out" / "other-state").mkdir()                      # not a state: no files

    tab = build_tab(StandaloneHost(), TrainingJob())
    h = tab.trainer_handlers
    update, note = h["resumable"](*_values(tab, cfg))
    labels = update["choices"]
    labels = [c[0] if isinstance(c, (list, tuple)) else c for c in labels]
    assert len(labels) == 2 and labels[0].startswith("test_lora-state: lora, step 6")
    assert labels[1].startswith("test_lora-state-00000004: lora, step 4") and "2 run(s)" in note
    assert h["pick_resumable"](labels[1])["value"] == str(tmp_path / "out" / "test_lora-state-00000004")

    cfg.training.resume = h["pick_resumable"](labels[1])["value"]
    cfg.training.max_train_steps = 8
    cfg.output.overwrite = True
    assert run_training(cfg, StandaloneHost(tiny_bundle())).steps == 8

    empty = quick_config(dataset, tmp_path / "nothing")
    update, note = h["resumable"](*_values(tab, empty))
    assert update["choices"] == [] and "No training state" in note
