"""Training options: optimizers, schedules, objectives, token length, clip skip, stop, caching."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from extensions_lib.config import ConfigError, TrainConfig
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train.events import Callbacks, Commands
from extensions_lib.train.objective import denoising_loss, sample_noise, snr, target_for
from extensions_lib.train.optimizers import build_optimizer, build_scheduler, warmup_steps
from extensions_lib.train.session import run_training
from extensions_lib.train.text import TextConditioner, encode, tokenize

from helpers import make_images, quick_config, tiny_bundle

REPO = Path(__file__).resolve().parent.parent


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 8))]


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion", "sgd_nesterov", "prodigy"])
def test_each_optimizer_takes_a_step(name):
    cfg = TrainConfig()
    cfg.training.optimizer = name
    cfg.training.learning_rate = 1.0 if name == "prodigy" else 1e-2
    p = _params()
    opt = build_optimizer(cfg, [{"params": p, "lr": cfg.training.learning_rate, "name": "x"}], torch.device("cpu"))
    before = p[0].detach().clone()
    (p[0] ** 2).sum().backward()
    opt.step()
    assert not torch.equal(before, p[0].detach())
    assert torch.isfinite(p[0]).all()


def test_adamw_is_fused_where_torch_can_and_steps_like_plain_adamw():
    cfg = TrainConfig()
    cfg.training.weight_decay = 0.1
    fused_p, plain_p = _params(), _params()
    fused = build_optimizer(cfg, [{"params": fused_p, "lr": 1e-2, "name": "x"}], torch.device("cpu"))
    plain = torch.optim.AdamW(plain_p, lr=1e-2, weight_decay=0.1)
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4):
        assert fused.defaults["fused"] is True
    else:  # torch 2.1-2.3 take fused=True for CPU tensors but have no CPU kernel for the step
        assert not fused.defaults["fused"]
    for _ in range(3):
        for p, opt in ((fused_p, fused), (plain_p, plain)):
            opt.zero_grad()
            (p[0] ** 3).sum().backward()
            opt.step()
    torch.testing.assert_close(fused_p[0], plain_p[0], rtol=1e-5, atol=1e-6)


def _bitsandbytes_steps_on_cpu() -> bool:
    """Whether the installed bitsandbytes has a CPU kernel for its 8-bit blockwise optimizer step
    (a torch custom op that 0.50 registers and 0.45 does not have at all). Measured: 0.50.2 (the a1111
    stack) steps on CPU; 0.45.3 (forge, a1111-torch21) runs 8-bit optimizers on CUDA only."""
    bnb = pytest.importorskip("bitsandbytes")
    op = getattr(getattr(torch.ops, "bitsandbytes", None), "optimizer_update_8bit_blockwise", None)
    has_kernel = op is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "bitsandbytes::optimizer_update_8bit_blockwise", "CPU")
    major_minor = tuple(int(x) for x in bnb.__version__.split(".")[:2])
    if major_minor in ((0, 45), (0, 50)):  # the versions our stacks pin, measured as the docstring says
        assert has_kernel == (major_minor >= (0, 50)), bnb.__version__
    return has_kernel


def test_adamw8bit_runs_on_cpu_where_bitsandbytes_can_and_refuses_clearly_where_not():
    """Never a silent switch to another optimizer: 8-bit AdamW either trains (its state really
    8-bit) or the refusal names the field, the optimizer, the bitsandbytes version and the way out."""
    steps_on_cpu = _bitsandbytes_steps_on_cpu()
    import bitsandbytes as bnb

    cfg = TrainConfig()
    cfg.training.optimizer = "adamw8bit"
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8192))  # above bitsandbytes' 4096-element floor for 8-bit state
    groups = [{"params": [p], "lr": 1e-2, "name": "x"}]
    if not steps_on_cpu:
        with pytest.raises(ConfigError) as e:
            build_optimizer(cfg, groups, torch.device("cpu"))
        msg = str(e.value)
        assert "training.optimizer" in msg and "'adamw8bit'" in msg
        assert f"bitsandbytes {bnb.__version__} has no CPU 8-bit optimizer" in msg
        assert "choose adamw" in msg
        return
    opt = build_optimizer(cfg, groups, torch.device("cpu"))
    assert type(opt).__name__ == "AdamW8bit"
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert opt.state[p]["state1"].dtype == torch.uint8  # the moments are stored in 8 bits
    assert losses[-1] < 0.8 * losses[0]


def test_an_adamw_run_never_loads_bitsandbytes():
    """accelerate, diffusers, peft and lycoris import bitsandbytes as they load, and its CPU builds
    then print a warning or a traceback; a LoRA or LoHa run with plain AdamW must not load it at all."""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed: nothing could load it")
    script = textwrap.dedent("""
        import sys, tempfile
        from pathlib import Path
        import torch
        from extensions_lib.config import TrainConfig
        from extensions_lib.methods.base import make_method
        from extensions_lib.model.tiny import build_tiny_bundle
        from extensions_lib.train.optimizers import build_optimizer

        for method in ("lora", "loha"):
            bundle = build_tiny_bundle(Path(tempfile.mkdtemp()))
            cfg = TrainConfig()
            cfg.network.method = method
            cfg.network.dim = cfg.network.alpha = cfg.network.conv_dim = 2
            m = make_method(cfg)
            m.attach(bundle)
            opt = build_optimizer(cfg, m.param_groups(), torch.device("cpu"))
            assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["params"], method
        import lycoris, diffusers.models  # really loaded, so the check below means something
        print("bitsandbytes loaded:", "bitsandbytes" in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bitsandbytes loaded: False" in done.stdout
    for noise in ("bitsandbytes", "gemm_4bit_forward", "GLIBCXX", "Traceback"):
        assert noise not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial"])
def test_schedules(name):
    cfg = TrainConfig()
    cfg.training.lr_scheduler = name
    cfg.training.lr_warmup_steps = 0 if name == "constant" else 0.1
    cfg.training.lr_scheduler_num_cycles = 2
    cfg.training.lr_scheduler_power = 2.0
    opt = torch.optim.SGD(_params(), lr=1.0)
    sched = build_scheduler(cfg, opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if name == "constant":
        assert set(lrs) == {1.0}
        return
    assert warmup_steps(cfg, 100) == 10
    assert lrs[0] < 0.2 and max(lrs) == pytest.approx(1.0)  # warmup ramps up
    if name == "constant_with_warmup":
        assert lrs[-1] == 1.0
    else:
        assert lrs[-1] < 0.1
    if name == "cosine_with_restarts":
        assert any(b > a + 0.3 for a, b in zip(lrs, lrs[1:]))  # the restart jumps back up


def test_noise_offset_shifts_channel_means():
    lat = torch.zeros(64, 4, 16, 16)
    g = torch.Generator().manual_seed(0)
    plain = sample_noise(lat, 0.0, g)
    offset = sample_noise(lat, 0.5, torch.Generator().manual_seed(0))
    assert plain.mean(dim=(2, 3)).std() < 0.1
    assert offset.mean(dim=(2, 3)).std() > 0.3


def test_v_prediction_target_and_min_snr():
    b = tiny_bundle(v_prediction=True)
    sched = b.noise_scheduler
    lat, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ts = torch.tensor([10, 900])
    v = target_for(sched, lat, noise, ts)
    ac = sched.alphas_cumprod[ts].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, ac.sqrt() * noise - (1 - ac).sqrt() * lat)
    # min-SNR: low-noise timesteps (huge SNR) are down-weighted
    pred = torch.zeros_like(lat)
    plain = [denoising_loss(pred[i:i + 1], v[i:i + 1], scheduler=sched, timesteps=ts[i:i + 1]) for i in range(2)]
    weighted = [denoising_loss(pred[i:i + 1], v[i:i + 1], scheduler=sched, timesteps=ts[i:i + 1], min_snr_gamma=5)
                for i in range(2)]
    s = snr(sched, ts)
    for i in range(2):
        expected = min(float(s[i]), 5.0) / (float(s[i]) + 1)
        assert float(weighted[i]) == pytest.approx(float(plain[i]) * expected, rel=1e-5)


@pytest.mark.parametrize("length", [75, 150, 225])
def test_long_captions_become_77_token_chunks(length):
    b = tiny_bundle()
    caption = "x " * 200
    ids = tokenize(b.tokenizer, [caption, "short"], length)
    chunks = length // 75
    assert ids.shape == (2, chunks * 77)
    rows = ids.view(2, chunks, 77)
    assert (rows[:, :, 0] == b.tokenizer.bos_token_id).all()
    assert (rows[0, :, 76] == b.tokenizer.eos_token_id).all()  # every chunk of a long caption is full
    ctx = encode(b.text_encoder, ids)
    assert ctx.shape == (2, chunks * 77, b.context_dim)
    # each chunk is encoded on its own, as the WebUI does
    first = encode(b.text_encoder, rows[:, 0])
    torch.testing.assert_close(ctx[:, :77], first)


def test_clip_skip_uses_earlier_layer_through_final_norm():
    b = tiny_bundle()
    ids = tokenize(b.tokenizer, ["a photo"], 75)
    with torch.no_grad():
        out = b.text_encoder(ids, output_hidden_states=True)
        skip2 = encode(b.text_encoder, ids, clip_skip=2)
        expected = b.text_encoder.text_model.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(skip2, expected)
    assert not torch.allclose(skip2, out.last_hidden_state)


def test_text_outputs_cached_when_text_encoder_frozen():
    b = tiny_bundle()
    calls = []
    b.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    cond = TextConditioner(b.tokenizer, b.text_encoder, max_token_length=75, clip_skip=1, cache=True)
    first = cond(["a", "b"])
    again = cond(["b", "a", "a"])
    assert len(calls) == 1
    torch.testing.assert_close(again[0], first[1])


def test_stop_request_honoured_within_one_step_and_saved(tmp_path):
    make_images(tmp_path / "data" / "10_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_epochs=5)
    commands = Commands()
    seen = []

    class StopAt3(Callbacks):
        def on_step(self, info):
            seen.append(info.step)
            if info.step == 3:
                commands.request_stop()

    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=StopAt3(), commands=commands)
    assert result.stopped and result.steps == 3 and seen == [1, 2, 3]
    with safe_open(str(result.output_path), "pt") as f:
        assert f.metadata()["ss_steps"] == "3"


def test_gradient_accumulation_and_epoch_saves(tmp_path):
    make_images(tmp_path / "data" / "2_sks")  # 4 images x 2 repeats = 8 batches of 1
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_epochs=2,
                       training__gradient_accumulation_steps=4, output__save_every_n_epochs=1)
    events = []

    class Rec(Callbacks):
        def on_start(self, info):
            events.append(info)

    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=Rec())
    assert events[0]["steps_per_epoch"] == 2 and events[0]["total_steps"] == 4
    assert result.steps == 4
    names = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    # epoch 2 is the last: its file is the final one, not a duplicate numbered save
    assert names == ["test_lora-000001.safetensors", "test_lora.safetensors"]


def test_sd2_v_prediction_trains_and_labels_file(tmp_path):
    make_images(tmp_path / "data" / "2_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=2,
                       training__min_snr_gamma=5.0, training__noise_offset=0.05)
    losses = []

    class Rec(Callbacks):
        def on_step(self, info):
            losses.append(info.loss)

    result = run_training(cfg, StandaloneHost(tiny_bundle(version="sd2", v_prediction=True)), callbacks=Rec())
    assert all(math.isfinite(x) for x in losses)
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["modelspec.prediction_type"] == "v"
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)


def test_preview_images_reported(tmp_path):
    make_images(tmp_path / "data" / "1_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=2)
    cfg.sample.prompts = ["a photo of sks", "sks on a beach"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps = 3
    got = []

    class Rec(Callbacks):
        def on_sample(self, images, step):
            got.append((step, images))

    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=Rec())
    assert got and got[-1][0] == 2
    prompts = [p for p, _ in got[-1][1]]
    assert prompts == cfg.sample.prompts
    assert all(img.size == (64, 64) for _, img in got[-1][1])
    # the last preview is written beside the LoRA, with the card's json
    assert result.output_path.with_suffix(".png").is_file()
    assert result.output_path.with_suffix(".json").is_file()


def _nan_decoder(vae):
    def decode(z, *args, **kwargs):
        n, _, h, w = z.shape
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        return types.SimpleNamespace(sample=torch.full((n, 3, h * down, w * down), float("nan")))
    return decode


def test_a_non_finite_preview_gives_none_not_a_black_picture():
    from extensions_lib.train.preview import sample_images

    bundle = tiny_bundle()
    kw = dict(steps=2, width=64, height=64)
    assert all(img is not None for img in sample_images(bundle, ["a photo of sks"], **kw))

    bundle.vae.decode = _nan_decoder(bundle.vae)
    problems = []
    assert sample_images(bundle, ["a photo of sks", "sks"], problems=problems, **kw) == [None, None]
    assert problems == [(0, "decoded image"), (1, "decoded image")]

    bundle = tiny_bundle()
    forward = bundle.unet.forward
    bundle.unet.forward = lambda *a, **k: types.SimpleNamespace(sample=forward(*a, **k).sample * float("inf"))
    problems = []
    assert sample_images(bundle, ["a photo of sks"], problems=problems, **kw) == [None]
    assert problems == [(0, "latents")]


def test_a_non_finite_preview_is_reported_and_never_saved(tmp_path):
    make_images(tmp_path / "data" / "1_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=2)
    cfg.sample.prompts = ["a photo of sks"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps = 2
    warnings, samples, statuses = [], [], []

    class Rec(Callbacks):
        def on_warning(self, text):
            warnings.append(text)

        def on_sample(self, images, step):
            samples.append(images)

    class StatusOnly(Callbacks):           # a subscriber that knows only on_status still hears it
        def on_status(self, text):
            statuses.append(text)

    bundle = tiny_bundle()
    bundle.vae.decode = _nan_decoder(bundle.vae)
    from extensions_lib.train.events import MultiCallbacks

    result = run_training(cfg, StandaloneHost(bundle), callbacks=MultiCallbacks(Rec(), StatusOnly()))
    assert result.output_path.is_file() and result.previews == [] and samples == []
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "'a photo of sks'" in text and "step 2" in text and "NaN" in text
    assert "learning rate" in text and "bf16" in text and "VAE" in text
    assert any(s.startswith("Warning: preview 'a photo of sks'") for s in statuses)
    card = result.output_path.with_suffix(".png")
    if card.exists():       # a card picture may come from the training images, never from the NaN preview
        from PIL import Image
        import numpy as np
        assert np.asarray(Image.open(card)).max() > 0
