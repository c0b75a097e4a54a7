"""The WebUI host adapter against the fake AUTOMATIC1111 1.10.1 (tests/fake_webui).

A tiny SD1/SD2 model is loaded into the fake WebUI exactly as the real one holds it (hijacked text
encoder, UNet parameters requiring grad, Lora extension callbacks). Training goes through
run_training(cfg, A1111Host()) or the UI's TrainingJob, and every test checks the WebUI is handed
back untouched: same tensors bit for bit, queue lock free, shared.state idle.
"""
import re
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
import safetensors.torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
from fake_webui_fixtures import webui  # noqa: E402,F401,I001  (first: puts the fake WebUI on sys.path)
import fake_sd_model as fsm  # noqa: E402
import fake_webui_control as fw  # noqa: E402
import networks  # noqa: E402
from modules import call_queue, devices, sd_hijack, sd_models, shared, shared_items  # noqa: E402
from modules.processing import StableDiffusionProcessing, StableDiffusionProcessingTxt2Img  # noqa: E402

from extensions_lib.hosts.a1111 import A1111Host  # noqa: E402
from extensions_lib.hosts.a1111_guard import WebUIModelChanged  # noqa: E402
from extensions_lib.hosts.base import HostError  # noqa: E402
from extensions_lib.model.tiny import ModelSize, tiny_ldm_state_dict  # noqa: E402
from extensions_lib.train.events import Callbacks, Commands, MultiCallbacks  # noqa: E402
from extensions_lib.train.session import run_training  # noqa: E402
from helpers import TOKENIZER_DIR, make_images, quick_config  # noqa: E402


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def tiny_sd1():
    return tiny_ldm_state_dict(TOKENIZER_DIR, seed=0)


@pytest.fixture(scope="module")
def tiny_sd2():
    return tiny_ldm_state_dict(TOKENIZER_DIR, version="sd2", seed=0)


def load(sd_tok, **kw):
    """A fresh fake WebUI model over private copies of the tiny checkpoint's tensors."""
    sd, tok = sd_tok
    return fw.load_model(fsm.make_fake_sd_model({k: v.clone() for k, v in sd.items()}, tok, **kw))


def config(tmp_path, steps=4, name="test_lora", **overrides):
    data = tmp_path / "data"
    if not data.exists():
        make_images(data / "1_sks", n=2)
    cfg = quick_config(data, "", "lora", training__max_train_steps=steps, **overrides)
    cfg.output.output_dir = ""          # the WebUI's folders
    cfg.output.name = name
    cfg.training.seed = 7
    return cfg


def snapshot(model):
    tensors = {k: (t, t.detach().clone(), t.device, t.dtype, t.requires_grad)
               for k, t in model.state_dict(keep_vars=True).items()}
    modules = {n: (m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
               for n, m in model.named_modules()}
    return tensors, modules


def _bitwise_equal(a, b):
    if a.dtype.is_floating_point and a.element_size() == 1:  # fp8: torch 2.1 has no torch.equal for it on CPU
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return torch.equal(a, b)


def assert_unchanged(model, snap):
    tensors, modules = snap
    now = model.state_dict(keep_vars=True)
    assert set(now) == set(tensors)
    for k, (obj, copy, device, dtype, grad) in tensors.items():
        t = now[k]
        assert t is obj, f"{k}: tensor object replaced"
        assert t.device == device and t.dtype == dtype and t.requires_grad == grad, k
        assert _bitwise_equal(t.detach(), copy), f"{k}: values changed"
    assert {n: (m.training, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for n, m in model.named_modules()} == modules


def assert_webui_idle():
    assert not call_queue.queue_lock.locked()
    assert shared.state.job == "" and shared.state.job_count == 0
    assert shared.state.interrupted is False


class Recorder(Callbacks):
    """Reads shared.state after the host's progress callbacks wrote it; optional hook per step."""

    def __init__(self, at_step=None):
        self.steps, self.texts, self.jobs, self.statuses = [], [], [], []
        self.at_step = at_step or {}

    def on_status(self, text):
        self.statuses.append(shared.state.textinfo)

    def on_step(self, info):
        s = shared.state
        self.steps.append((s.sampling_step, s.sampling_steps))
        self.texts.append(s.textinfo)
        self.jobs.append((s.job, s.job_count))
        if info.step in self.at_step:
            self.at_step[info.step](info)


def train(cfg, host=None, recorder=None):
    host = host or A1111Host()
    commands = Commands()
    callbacks = MultiCallbacks(host.progress(commands), recorder)
    return run_training(cfg, host, callbacks=callbacks, commands=commands)


# ------------------------------------------------------------------------------ 1. a normal run

def test_trains_into_the_webui_lora_folder_with_progress_and_the_queue_lock(tmp_path, webui, tiny_sd1):
    model = load(tiny_sd1)
    before = snapshot(model)
    cfg = config(tmp_path, steps=4)
    cfg.sample.prompts = ["a photo of sks"]
    cfg.sample.steps, cfg.sample.width, cfg.sample.height, cfg.sample.every_n_epochs = 1, 64, 64, 0
    waiter = {}

    def generation_in_another_thread():
        call_queue.queue_lock.acquire()
        waiter["got_lock_at"] = time.monotonic()
        call_queue.queue_lock.release()

    other = threading.Thread(target=generation_in_another_thread)

    def step1(info):
        other.start()

    def step3(info):
        assert other.is_alive() and "got_lock_at" not in waiter      # still waiting for the GPU queue
        assert call_queue.queue_lock.acquire(blocking=False) is False

    rec = Recorder({1: step1, 3: step3})
    result = train(cfg, recorder=rec)
    finished_at = time.monotonic()
    other.join(10)

    out = Path(webui.lora_dir) / "test_lora.safetensors"
    assert result.output_path == out and out.is_file() and result.steps == 4 and not result.stopped
    assert (out.parent / "test_lora.json").is_file(), "sidecar <name>.json beside the LoRA"
    assert (out.parent / "test_lora.png").is_file(), "preview <name>.png beside the LoRA"
    assert networks.list_available_networks_calls >= 1 and "test_lora" in networks.available_networks
    # the WebUI's progress fields moved with training
    assert rec.steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert rec.jobs == [("train", 1)] * 4
    assert re.fullmatch(r"Training LoRA: step 2/4, loss \d+\.\d{4}, ETA \d+s", rec.texts[1]), rec.texts[1]
    assert any(t and t.startswith("Training LoRA: ") for t in rec.statuses)
    assert shared.state.current_image is not None and shared.state.id_live_preview >= 1
    # a generation that arrived mid-run waited for the end of the training
    assert waiter["got_lock_at"] <= finished_at
    assert_webui_idle()
    assert_unchanged(model, before)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["ss_sd_model_name"] == "fake-sd15.safetensors"
    assert meta["ss_new_sd_model_hash"] == model.sd_checkpoint_info.sha256
    assert meta["ss_base_model_version"] == "sd_v1"


def test_training_waits_for_a_running_generation(tmp_path, tiny_sd1):
    load(tiny_sd1)
    cfg = config(tmp_path, steps=1)
    outcome = {}
    call_queue.queue_lock.acquire()          # a generation is running
    t = threading.Thread(target=lambda: outcome.setdefault("result", train(cfg)))
    try:
        t.start()
        time.sleep(1.0)
        assert shared.state.job != "train" and "result" not in outcome
    finally:
        call_queue.queue_lock.release()
    t.join(120)
    assert outcome["result"].steps == 1
    assert_webui_idle()


# ------------------------------------------------------------------------------ 2. interrupt

def test_webui_interrupt_stops_within_one_step_and_saves(tmp_path, webui, tiny_sd1):
    model = load(tiny_sd1)
    before = snapshot(model)
    cfg = config(tmp_path, steps=8)

    def interrupt_from_another_thread(info):     # as POST /sdapi/v1/interrupt or the button does
        t = threading.Thread(target=shared.state.interrupt)
        t.start()
        t.join()

    rec = Recorder({2: interrupt_from_another_thread})
    result = train(cfg, recorder=rec)
    # interrupted after step 2's report: step 3 (already under way in a real run) is the last
    assert result.stopped and result.steps == 3
    assert [s for s, _ in rec.steps] == [1, 2, 3]
    assert result.output_path == Path(webui.lora_dir) / "test_lora.safetensors"
    with safe_open(str(result.output_path), "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
    assert_webui_idle()
    assert_unchanged(model, before)


def test_progress_without_commands_makes_its_own(tiny_sd1, tmp_path):
    load(tiny_sd1)
    host = A1111Host()
    cb = host.progress()
    result = run_training(config(tmp_path, steps=4), host,
                          callbacks=MultiCallbacks(cb, Recorder({1: lambda i: shared.state.interrupt()})),
                          commands=cb.commands)
    assert result.stopped and result.steps == 2


def test_webui_interrupt_stops_a_training_started_from_the_tab(tmp_path, tiny_sd1):
    from extensions_lib.ui.job import TrainingJob

    load(tiny_sd1)
    seen = {}

    class Probe(A1111Host):
        def progress(self, commands=None):
            seen["commands"] = commands
            return super().progress(commands)

    job = TrainingJob()
    job.start(config(tmp_path, steps=200), Probe())
    try:
        assert _wait_for(lambda: shared.state.job == "train" and shared.state.sampling_step >= 1), job.status()
        assert seen.get("commands") is not None, "the job must hand the host this run's Commands"
        shared.state.interrupt()
        assert job.wait(300)
    finally:
        job.stop()
        job.wait(300)
    status = job.status()
    assert status["state"] == "stopped" and status["step"] < 200, status
    assert Path(status["output_path"]).is_file()
    assert_webui_idle()


# ------------------------------------------------------------------------------ 3. one at a time

def _wait_for(pred, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_a_second_start_is_refused_by_the_job_manager_and_by_the_host(tmp_path, tiny_sd1):
    from extensions_lib.ui.job import JobBusyError, TrainingJob

    load(tiny_sd1)
    host = A1111Host()
    job = TrainingJob()
    job.start(config(tmp_path, steps=500), host)
    try:
        with pytest.raises(JobBusyError):
            job.start(config(tmp_path, steps=2, name="second"), host)
        assert _wait_for(lambda: shared.state.job == "train"), job.status()
        # another job manager (e.g. the REST API's) or a direct call: the host's own guard
        with pytest.raises(HostError, match="a training is already running"):
            TrainingJob().start(config(tmp_path, steps=2, name="second"), A1111Host())
        with pytest.raises(HostError, match="a training is already running"):
            run_training(config(tmp_path, steps=2, name="third"), A1111Host())
        assert "busy" in host.describe() and host.describe()["busy"] is True
    finally:
        job.stop()
        assert job.wait(300)
    assert job.status()["state"] == "stopped", job.status()["error"]
    assert not (Path(shared.cmd_opts.lora_dir) / "second.safetensors").exists()
    assert_webui_idle()


# ------------------------------------------------------------------------------ 4. handed back intact

class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("ending", ["success", "error", "interrupt"])
def test_webui_model_is_bit_identical_afterwards(tmp_path, tiny_sd1, ending):
    model = load(tiny_sd1)
    before = snapshot(model)
    cfg = config(tmp_path, steps=4)

    def at2(info):
        if ending == "error":
            raise Boom("injected at step 2")
        if ending == "interrupt":
            shared.state.interrupt()

    if ending == "error":
        with pytest.raises(Boom):
            train(cfg, recorder=Recorder({2: at2}))
    else:
        result = train(cfg, recorder=Recorder({2: at2}))
        assert result.stopped == (ending == "interrupt")
    assert_unchanged(model, before)
    assert_webui_idle()
    assert shared.state.textinfo is None


def test_flags_and_hooks_left_on_the_webui_model_are_put_back(tmp_path, tiny_sd1):
    model = load(tiny_sd1)
    before = snapshot(model)
    unet = model.model.diffusion_model
    p = unet.time_embed[0].weight

    def meddle(info):
        unet.register_forward_hook(lambda *a: None)
        unet.train()
        model.first_stage_model.quant_conv.weight.requires_grad_(True)
        p.requires_grad_(False)

    train(config(tmp_path, steps=2), recorder=Recorder({1: meddle}))
    assert_unchanged(model, before)


def test_a_write_into_the_webui_weights_is_reported(tmp_path, tiny_sd1):
    model = load(tiny_sd1)

    def corrupt(info):
        with torch.no_grad():
            model.model.diffusion_model.time_embed[0].weight.mul_(1.0)   # same values, still a write

    with pytest.raises(WebUIModelChanged, match="time_embed"):
        train(config(tmp_path, steps=2), recorder=Recorder({1: corrupt}))
    assert_webui_idle()


# ------------------------------------------------------------------------------ 5. merged LoRA

LORA_DELTAS = {
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": 0.5,
    "model.diffusion_model.input_blocks.1.1.proj_in.weight": -0.25,
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": 0.3,
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.bias": 0.1,
}


def test_a_lora_merged_by_the_last_generation_is_not_trained_into(tmp_path, tiny_sd1):
    sd, _ = tiny_sd1
    model = load(tiny_sd1)
    clean = snapshot(model)
    deltas = {k: torch.full_like(sd[k], v) for k, v in LORA_DELTAS.items()}
    touched = fsm.apply_merged_lora(model, deltas)
    assert len(touched) == 3
    merged_name = fsm.webui_param_name(next(iter(LORA_DELTAS)))
    assert not torch.equal(dict(model.named_parameters())[merged_name], clean[0][merged_name][1])

    merged_out = train(config(tmp_path, steps=3)).output_path
    # restored and reset: the weights are the clean ones and the next generation re-applies its LoRA
    assert_unchanged(model, clean)
    assert all(m.network_weights_backup is None and m.network_current_names == () for m in touched)

    fw.reset(tmp_path / "webui2")
    load(tiny_sd1)
    clean_out = train(config(tmp_path, steps=3)).output_path
    assert merged_out != clean_out
    a, b = load_file(str(merged_out)), load_file(str(clean_out))
    assert set(a) == set(b) and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------ 6. refusals

def _refused(tmp_path, match):
    cfg = config(tmp_path)
    cfg.data.train_dir = str(tmp_path / "no-such-folder")   # the host refuses before the dataset is read
    gc_calls = devices.torch_gc_calls
    with pytest.raises(HostError, match=match) as e:
        run_training(cfg, A1111Host())
    with pytest.raises(HostError, match=match):
        A1111Host().check_ready(cfg)
    assert_webui_idle()
    assert devices.torch_gc_calls == gc_calls            # no state.begin(): no job was started
    assert networks.list_available_networks_calls == 0
    assert not any(Path(shared.cmd_opts.lora_dir).iterdir())
    return str(e.value)


def test_refuses_without_a_loaded_model_and_does_not_load_one(tmp_path):
    msg = _refused(tmp_path, "No checkpoint is loaded")
    assert "Stable Diffusion 1.x and 2.x" in msg and "checkpoint dropdown" in msg
    assert sd_models.load_model_calls == []              # shared.sd_model was never read


def test_refuses_sdxl(tmp_path, tiny_sd1):
    load(tiny_sd1).is_sdxl = True
    assert "1.x and 2.x" in _refused(tmp_path, "SDXL checkpoint")


def test_refuses_sd3(tmp_path, tiny_sd1):
    load(tiny_sd1).is_sd3 = True
    _refused(tmp_path, "Stable Diffusion 3")


def test_refuses_fp8_weights_without_fp16_originals(tmp_path, tiny_sd1):
    model = load(tiny_sd1)
    assert fsm.apply_fp8(model, cache_fp16_weight=False) > 0
    before = snapshot(model)
    msg = _refused(tmp_path, "FP8 weight")
    assert "Settings > Optimizations" in msg and "Cache FP16 weight for LoRA" in msg
    assert_unchanged(model, before)


def test_refuses_an_inpainting_unet(tmp_path, tiny_sd1):
    sd, tok = tiny_sd1
    sd = dict(sd)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    w = sd[key]
    sd[key] = torch.zeros(w.shape[0], 9, *w.shape[2:])
    fw.load_model(fsm.make_fake_sd_model(sd, tok))
    assert "9 input channels" in _refused(tmp_path, "inpainting model")


def test_refuses_lowvram_and_medvram(tmp_path, tiny_sd1):
    load(tiny_sd1).lowvram = True
    assert "--medvram" in _refused(tmp_path, "--lowvram")


def test_refuses_a_model_unloaded_to_ram(tmp_path, tiny_sd1, monkeypatch):
    load(tiny_sd1)
    monkeypatch.setattr(devices, "device", torch.device("cuda"))     # the GPU it normally lives on
    _refused(tmp_path, "Load SD checkpoint to VRAM from RAM")


def test_refuses_float16_weights_on_the_cpu(tmp_path, tiny_sd1):
    sd, tok = tiny_sd1
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    fw.load_model(fsm.make_fake_sd_model(half, tok))
    assert "--no-half" in _refused(tmp_path, "float16 on the CPU")


def test_float16_weights_on_a_gpu_need_mixed_precision(tmp_path, tiny_sd1, monkeypatch):
    from extensions_lib.hosts import a1111_model

    sd, tok = tiny_sd1
    fw.load_model(fsm.make_fake_sd_model({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, tok))
    monkeypatch.setattr(a1111_model, "unet_device", lambda m: torch.device("cuda"))
    cfg = config(tmp_path)
    with pytest.raises(HostError, match=r"training.mixed_precision .* fp16 or bf16"):
        A1111Host().check_ready(cfg)
    cfg.training.mixed_precision = "bf16"
    A1111Host().check_ready(cfg)


def test_refuses_an_unknown_text_encoder(tmp_path, tiny_sd1):
    model = load(tiny_sd1)
    model.cond_stage_model.wrapped.roberta = model.cond_stage_model.wrapped.transformer   # Alt-Diffusion-like
    del model.cond_stage_model.wrapped.transformer
    _refused(tmp_path, "text encoder the trainer does not know")


# ------------------------------------------------------------------------------ FP8 with originals, SD2

def test_fp8_storage_trains_on_the_kept_fp16_originals(tmp_path, tiny_sd1):
    model = load(tiny_sd1)
    fsm.apply_fp8(model, cache_fp16_weight=True)
    before = snapshot(model)
    host = A1111Host()
    cfg = config(tmp_path, steps=2)
    host.check_ready(cfg)
    q = model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1.to_q
    assert q.weight.dtype == torch.float8_e4m3fn
    with host.exclusive(), host.borrow_bundle(cfg) as bundle:
        ours = bundle.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
        assert ours.dtype == torch.float32
        assert torch.equal(ours, q.fp16_weight.float())
        assert bundle.extra["fp8_originals"] is True
    result = train(cfg, host)
    assert result.steps == 2 and result.output_path.is_file()
    assert_unchanged(model, before)


def test_sd2_uses_open_clips_vocabulary_and_the_models_v_prediction(tmp_path, tiny_sd2):
    from open_clip import tokenizer as oc

    load(tiny_sd2, parameterization="v")
    host = A1111Host()
    cfg = config(tmp_path, steps=2)
    host.check_ready(cfg)
    with host.exclusive(), host.borrow_bundle(cfg) as bundle:
        assert bundle.version == "sd2" and bundle.v_prediction
        text = "A photo of sks_1, on a hill!"
        ids = bundle.tokenizer(text).input_ids
        start, end = oc._tokenizer.all_special_ids
        assert ids == [start] + oc._tokenizer.encode(text) + [end]
        assert bundle.tokenizer.pad_token_id == 0           # as the WebUI pads SD2 prompts (id_pad 0)
    result = train(cfg, host)
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"


def test_sd2_without_open_clip_is_refused_with_the_fix(tmp_path, tiny_sd2, monkeypatch):
    load(tiny_sd2)
    monkeypatch.setitem(sys.modules, "open_clip.tokenizer", None)    # import fails
    msg = _refused(tmp_path, "open_clip")
    assert "--skip-install" in msg


# ------------------------------------------------------------------------------ folders, refresh, facts

def test_output_folders_are_the_webuis(tmp_path, webui):
    host, cfg = A1111Host(), config(tmp_path)
    assert host.output_dir("lora", cfg) == Path(webui.lora_dir)
    assert host.output_dir("embedding", cfg) == Path(webui.embeddings_dir)
    assert host.output_dir("hypernetwork", cfg) == Path(webui.hypernetwork_dir)
    cfg.output.output_dir = str(tmp_path / "mine")
    assert host.output_dir("lora", cfg) == tmp_path / "mine"
    with pytest.raises(ValueError, match="unknown output kind"):
        host.output_dir("checkpoint", cfg)


def test_trainer_output_dir_holds_the_latent_cache_not_models(tmp_path, tiny_sd1):
    opts = fw.reset(tmp_path / "webui", argv=["--trainer-output-dir", str(tmp_path / "runs")])
    assert opts.trainer_output_dir == str(tmp_path / "runs")
    cfg = config(tmp_path)
    assert A1111Host().output_dir("lora", cfg) == Path(opts.lora_dir)
    load(tiny_sd1)
    cfg.data.cache_latents_to_disk = True
    result = run_training(cfg, A1111Host())
    assert result.output_path.parent == Path(opts.lora_dir)
    assert list((tmp_path / "runs" / "latent_cache").iterdir())       # the cache went to the option's folder
    assert not (tmp_path / "data" / ".latent_cache").exists()          # not into the user's dataset


def test_max_resolution_option_refuses_larger_trainings(tmp_path, tiny_sd1):
    fw.reset(tmp_path / "webui", argv=["--trainer-max-resolution", "512"])
    load(tiny_sd1)
    cfg = config(tmp_path)
    cfg.data.resolution = 768
    with pytest.raises(HostError, match=r"data.resolution = 768.*--trainer-max-resolution 512"):
        run_training(cfg, A1111Host())
    cfg.data.resolution = 64
    A1111Host().check_ready(cfg)


def _token_width(model) -> int:
    return model.cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight.shape[1]


@pytest.mark.parametrize("save_pt", [False, True], ids=["safetensors", "pt"])
def test_a_trained_embedding_is_loaded_by_the_webuis_database_and_foreign_files_are_not(
        tmp_path, webui, tiny_sd1, save_pt):
    """The refresh after saving makes the WebUI read the file: ours loads with the model's width and our
    vectors; a garbage file is reported and left out, one of another model's width is skipped."""
    from modules import errors

    model = load(tiny_sd1)
    emb_dir = Path(webui.embeddings_dir)
    emb_dir.mkdir(parents=True, exist_ok=True)
    (emb_dir / "garbage.pt").write_bytes(b"not a pickle")
    (emb_dir / "garbage2.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"{not json}")
    safetensors.torch.save_file({"emb_params": torch.zeros(2, _token_width(model) + 8)}, str(emb_dir / "wide.safetensors"))
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = quick_config(tmp_path / "data", "", "embedding", training__max_train_steps=2, embedding__token="mytok",
                       embedding__num_vectors=2, embedding__save_pt=save_pt, output__name="")
    result = train(cfg)

    assert result.output_path.suffix == (".pt" if save_pt else ".safetensors")
    db = sd_hijack.model_hijack.embedding_db
    assert db.load_calls[-1] is True
    emb = db.word_embeddings["mytok"]
    assert emb.shape == _token_width(model) and emb.vectors == 2 and emb.filename == str(result.output_path)
    if save_pt:
        saved = torch.load(result.output_path, weights_only=True)["string_to_param"]["*"]
    else:
        saved = next(iter(load_file(result.output_path).values()))
    torch.testing.assert_close(emb.vec, saved.float())
    assert db.ids_lookup, "registered under its token ids, where prompt parsing finds it"
    assert set(db.word_embeddings) == {"mytok"} and set(db.skipped_embeddings) == {"wide"}
    assert any("garbage.pt" in r for r in errors.reported), errors.reported
    assert any("garbage2.safetensors" in r for r in errors.reported), errors.reported


def test_refresh_hypernetworks(tmp_path, webui):
    host = A1111Host()
    hn = Path(webui.hypernetwork_dir) / "style.pt"
    hn.write_bytes(b"x")
    stale = types.SimpleNamespace(name="style", filename=str(hn))
    other = types.SimpleNamespace(name="other", filename=str(tmp_path / "other.pt"))
    shared.loaded_hypernetworks.extend([stale, other])
    host.refresh("hypernetwork", hn)
    assert shared_items.reload_hypernetworks_calls == 1 and shared.hypernetworks == {"style": str(hn)}
    assert shared.loaded_hypernetworks == [other]


@pytest.fixture(scope="module")
def sd_layout_sd1():
    """A tiny SD1 with SD's two resnets per UNet level: the WebUI's Lora support turns kohya names into
    its own layer names assuming that layout (the default tiny model has one)."""
    return tiny_ldm_state_dict(TOKENIZER_DIR, size=ModelSize(layers_per_block=2), seed=0)


def _fixed_outputs(bundle, tok):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = tok(["a photo of sks", "another picture"], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = bundle.text_encoder(ids).last_hidden_state
        return bundle.unet(latents, torch.tensor([100, 700]), ctx).sample, ctx


@pytest.mark.parametrize("method", ["lora", "locon", "loha", "lokr"])
def test_a_trained_lora_loads_in_the_webuis_lora_support_and_changes_outputs_as_our_forward_does(
        tmp_path, sd_layout_sd1, method):
    """Listed is not loaded: the file goes through the WebUI's Lora loading (tests/fake_webui/networks.py:
    its name conversion, module types and shape rules), every module in it must land on a layer, and the
    updates it merges must give the UNet and text encoder the outputs our own forward gives."""
    from extensions_lib.methods.base import make_method
    from extensions_lib.model.ldm import bundle_from_ldm

    sd, tok = sd_layout_sd1
    load(sd_layout_sd1)
    cfg = config(tmp_path, steps=3, name=f"mine_{method}", training__learning_rate=2e-2,
                 output__save_precision="fp32")
    cfg.network.method = method
    cfg.network.alpha = cfg.network.conv_alpha = 2      # a scale alpha/dim of 0.5, so a wrong scale shows
    result = train(cfg)
    file = load_file(result.output_path)
    entry = networks.available_networks[f"mine_{method}"]

    webui_sd = {k: v.clone() for k, v in sd.items()}       # the WebUI's model over a fresh copy of the checkpoint
    model = fw.load_model(fsm.make_fake_sd_model(webui_sd, tok))
    net = networks.load_network(entry.name, entry)
    assert net.keys_failed_to_match == {}
    assert len(net.modules) == len({k.split(".")[0] for k in file})
    assert {m.kind for m in net.modules.values()} == {"loha": {"hada"}, "lokr": {"lokr"}}.get(method, {"lora"})
    layers = [m.sd_module for m in net.modules.values()]
    assert any("transformer" in m.sd_key[:20] for m in net.modules.values()), "the text encoder part loaded"
    if method != "lora":   # resnet and sampler convs, whose WebUI names differ most from kohya's
        assert any(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in layers)
    fsm.apply_merged_lora(model, networks.merged_deltas(net, model), network_name=entry.name)
    webui_unet, webui_ctx = _fixed_outputs(bundle_from_ldm(webui_sd, tok), tok)

    base = bundle_from_ldm({k: v.clone() for k, v in sd.items()}, tok)
    base_unet, base_ctx = _fixed_outputs(base, tok)
    ours = make_method(cfg)
    ours.attach(base)
    ours.network.load_state_dict(file, strict=True)
    our_unet, our_ctx = _fixed_outputs(base, tok)
    ours.detach()
    assert not torch.allclose(our_unet, base_unet, atol=1e-4) and not torch.allclose(our_ctx, base_ctx, atol=1e-4)
    torch.testing.assert_close(webui_ctx, our_ctx, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(webui_unet, our_unet, atol=2e-4, rtol=1e-3)


def _cache_some_conditioning():
    """What a txt2img run leaves behind: the prompt's conditioning, cached across requests."""
    StableDiffusionProcessing.cached_c = [("a photo of sks", 20), "old conditioning"]
    StableDiffusionProcessing.cached_uc = [("", 20), "old unconditional"]
    StableDiffusionProcessingTxt2Img.cached_hr_c = [("a photo of sks", 20), "old hires conditioning"]
    StableDiffusionProcessingTxt2Img.cached_hr_uc = [("", 20), "old hires unconditional"]


def _assert_no_cached_conditioning():
    assert StableDiffusionProcessing.cached_c == [None, None]
    assert StableDiffusionProcessing.cached_uc == [None, None]
    assert StableDiffusionProcessingTxt2Img.cached_hr_c == [None, None]
    assert StableDiffusionProcessingTxt2Img.cached_hr_uc == [None, None]


@pytest.mark.parametrize("method", ["embedding", "hypernetwork", "lora"])
def test_a_written_file_clears_the_webuis_cached_prompt_conditioning(tmp_path, tiny_sd1, method):
    """The WebUI's conditioning cache is keyed on the prompt, not on embedding or hypernetwork files:
    without a reset, repeating the prompt after training gives the image of the old file."""
    load(tiny_sd1)
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = quick_config(tmp_path / "data", "", method, training__max_train_steps=2,
                       embedding__token="sks", output__name="" if method == "embedding" else "mine")
    _cache_some_conditioning()
    result = train(cfg)
    assert result.output_path.is_file()
    _assert_no_cached_conditioning()


def test_an_unknown_checkpoint_hash_is_left_out_of_the_lora_metadata(tmp_path, tiny_sd1, monkeypatch):
    """Under --no-hashing the WebUI knows no sha256: the key is left out rather than written as "None";
    a hash the WebUI has cached for the file is used without hashing it again."""
    from modules import hashes

    load(tiny_sd1, sha256=None)
    result = train(config(tmp_path, steps=1, name="unhashed"))
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
    assert "ss_new_sd_model_hash" not in meta and "ss_sd_model_hash" not in meta
    assert not [k for k, v in meta.items() if v.strip() in ("", "None")], meta

    monkeypatch.setattr(hashes, "sha256_from_cache", lambda filename, title, use_addnet_hash=False: "c" * 64)
    cfg = config(tmp_path, steps=1, name="cached_hash")
    result = train(cfg)
    with safe_open(str(result.output_path), "pt") as f:
        assert f.metadata()["ss_new_sd_model_hash"] == "c" * 64


def test_refresh_loras_drops_a_stale_cached_copy(tmp_path, webui):
    networks.networks_in_memory["mine"] = object()
    path = Path(webui.lora_dir) / "mine.safetensors"
    A1111Host().refresh("lora", path)
    assert "mine" not in networks.networks_in_memory and networks.list_available_networks_calls == 1


def test_clip_skip_device_and_describe(tmp_path, tiny_sd1):
    host, cfg = A1111Host(), config(tmp_path)
    assert host.describe()["ready"] is False and "No checkpoint" in host.describe()["problem"]
    assert host.device() == torch.device(devices.device)
    load(tiny_sd1)
    assert host.clip_skip(cfg) == 1
    shared.opts.CLIP_stop_at_last_layers = 2
    assert host.clip_skip(cfg) == 2
    cfg.model.clip_skip = 3
    assert host.clip_skip(cfg) == 3
    assert host.device() == torch.device("cpu")
    d = host.describe()
    assert d["ready"] and d["version"] == "sd1" and d["model_name"] == "fake-sd15.safetensors" and not d["fp8"]


# ------------------------------------------------------------------------------ 7. the WebUI loads our script

def test_extension_script_registers_a_tab_that_builds(tmp_path, tiny_sd1):
    import gradio as gr  # noqa: F401
    from modules import script_callbacks

    load(tiny_sd1)
    fw.load_extension_scripts(str(REPO))
    assert str(REPO) not in sys.path[:1]
    tabs = script_callbacks.ui_tabs_callback()
    ours = [t for t in tabs if t[1] == "Trainer"]
    assert len(ours) == 1, tabs
    blocks, label, elem_id = ours[0]
    assert isinstance(blocks, gr.Blocks) and label == "Trainer" and elem_id != "train"
    from extensions_lib.ui import webui as glue

    assert isinstance(glue.host(), A1111Host)
    assert_webui_idle()
