"""The CPU speed paths compute what the plain layers compute, and leave nothing behind.

- small convolutions as one GEMM (train/small_convs.py) against F.conv2d, values and gradients;
- the lean LoRA bypass (methods/lora_bypass.py) against lycoris' own bypass forward;
- bf16 attention with saved probabilities (train/cpu_attention.py) against fp32 SDPA, and our
  processor (model/attention_processor.py) against diffusers' AttnProcessor2_0;
- the heap setting (train/cpu_heap.py): freed memory is reused while on, given back after;
- a bf16 training run on the CPU takes those paths and leaves the model as it found it.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from extensions_lib.train.small_convs import conv_as_matmul, prefers_matmul, switch_small_convs


@pytest.mark.parametrize("batch,channels,size,kernel,stride,bias", [
    (1, 8, 4, 3, 1, True), (3, 8, 5, 3, 2, True), (2, 6, 8, 1, 1, False), (1, 4, 7, 3, 2, False),
    (1, 6, 8, 1, 1, True), (3, 5, 4, 1, 1, True)])
def test_conv_as_matmul_matches_conv2d(batch, channels, size, kernel, stride, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=g, requires_grad=True)
    w = torch.randn(5, channels, kernel, kernel, generator=g)
    b = torch.randn(5, generator=g) if bias else None
    pad = kernel // 2
    ref = F.conv2d(x, w, b, stride=stride, padding=pad)
    out = conv_as_matmul(x, w, b, (stride, stride), (pad, pad))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn(ref.shape, generator=g)
    (gx_ref,) = torch.autograd.grad(ref, x, grad)
    (gx,) = torch.autograd.grad(out, x, grad)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_conv_as_matmul_under_bf16_autocast_casts_like_conv2d():
    x = torch.randn(2, 8, 4, 4)
    w, b = torch.randn(6, 8, 3, 3), torch.randn(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.conv2d(x, w, b, padding=1)
        out = conv_as_matmul(x, w, b, (1, 1), (1, 1))
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=5e-2)


def test_gemm_form_only_for_small_outputs():
    w = torch.zeros(1280, 1280, 3, 3)
    assert prefers_matmul(torch.zeros(1, 1280, 8, 8), w, (1, 1), (1, 1))           # 64 columns
    assert prefers_matmul(torch.zeros(1, 1280, 16, 16), w, (1, 1), (1, 1))         # wide layer, fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not prefers_matmul(torch.zeros(1, 1280, 16, 16), w, (1, 1), (1, 1))  # oneDNN wins in bf16
    assert not prefers_matmul(torch.zeros(1, 320, 32, 32), torch.zeros(320, 320, 3, 3), (1, 1), (1, 1))


def test_gemm_form_for_bf16_pointwise_convs_at_batch_one():
    w = torch.zeros(16, 320, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert prefers_matmul(torch.zeros(1, 320, 64, 64), w, (1, 1), (0, 0))
        assert not prefers_matmul(torch.zeros(1, 320, 64, 64), w, (1, 1), (0, 0), pointwise=False)
        assert not prefers_matmul(torch.zeros(2, 320, 64, 64), w, (1, 1), (0, 0))     # oneDNN ties or wins
        assert not prefers_matmul(torch.zeros(1, 320, 64, 64), w, (2, 2), (0, 0))     # strided: not a plain GEMM
    assert prefers_matmul(torch.zeros(1, 320, 64, 64, dtype=torch.bfloat16), w.bfloat16(), (1, 1), (0, 0))
    assert not prefers_matmul(torch.zeros(1, 320, 64, 64), w, (1, 1), (0, 0))         # fp32: oneDNN


def test_switch_small_convs_gives_same_outputs_and_undoes():
    from helpers import tiny_bundle

    unet = tiny_bundle().unet
    own = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d))
    own._conv_forward = torch.nn.Conv2d._conv_forward.__get__(own)   # someone else's override
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        ref = unet(x, t, ctx).sample
        undo = switch_small_convs(unet, torch.device("cpu"))
        out = unet(x, t, ctx).sample
    switched = undo()
    assert switched > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # every switched layer is back to its class method; the foreign override is still there
    assert "_conv_forward" in vars(own)
    assert [m for m in unet.modules() if "_conv_forward" in vars(m)] == [own]
    assert switch_small_convs(unet, torch.device("cuda"))() == 0   # GPUs keep cuDNN


def _lycoris_pair(method: str, **kw):
    """Two identical networks on two copies of one tiny UNet: one lean, one lycoris' own forward."""
    from extensions_lib.config import TrainConfig
    from extensions_lib.methods.lora import build_network
    from extensions_lib.methods.lora_bypass import use_lean_bypass
    from helpers import tiny_bundle

    out = []
    for lean in (True, False):
        bundle = tiny_bundle()
        cfg = TrainConfig()
        cfg.network.method, cfg.network.dim, cfg.network.alpha = method, 4, 2
        cfg.network.conv_dim, cfg.network.conv_alpha = 4, 2
        cfg.network.train_text_encoder = False
        for k, v in kw.items():
            setattr(cfg.network, k, v)
        net = build_network(cfg, bundle.text_encoder, bundle.unet)
        net.apply_to(bundle.text_encoder, bundle.unet, apply_text_encoder=False, apply_unet=True)
        torch.manual_seed(1)
        for p in net.parameters():   # non-zero up weights so the adapter path matters
            p.data.normal_(0, 0.2)
        count = use_lean_bypass(net.loras) if lean else 0
        out.append((bundle.unet, net, count))
    return out


@pytest.mark.parametrize("method", ["lora", "locon"])
def test_lean_bypass_matches_lycoris(method):
    (unet_a, net_a, count), (unet_b, net_b, _) = _lycoris_pair(method, multiplier=0.7)
    assert count == len(net_a.loras) > 0
    if method == "locon":
        assert any(m.isconv and m.lora_down.kernel_size == (3, 3) for m in net_a.loras)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    ctx = torch.randn(1, 77, unet_a.config.cross_attention_dim)
    outs, grads = [], []
    for unet, net in ((unet_a, net_a), (unet_b, net_b)):
        out = unet(x, t, ctx).sample
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    # the multiplier still switches the adapters off (previews of the base model)
    net_a.set_multiplier(0.0)
    net_b.restore()
    with torch.no_grad():
        torch.testing.assert_close(unet_a(x, t, ctx).sample, unet_b(x, t, ctx).sample, rtol=1e-5, atol=1e-6)


def test_lean_bypass_dropout_acts_on_hidden_units_and_rank_dropout_keeps_lycoris():
    from extensions_lib.methods.lora_bypass import lean_eligible

    (_, net, count), _ = _lycoris_pair("lora", dropout=0.5)
    assert count == len(net.loras)
    lora = next(m for m in net.loras if not m.isconv and m.lora_up.out_features > m.lora_dim)
    x = torch.randn(3, lora.lora_down.in_features)
    hidden = F.linear(x, lora.lora_down.weight) * lora.scale
    lora.train()
    torch.manual_seed(0)
    diff = lora.bypass_forward(x, scale=1.0) - lora.org_forward(x)
    # kohya's LoRA dropout: up(dropout(down(x))). Recover the dropped hidden units through up's
    # column space; each is either 0 or scaled by 1/(1-p), and some of each kind occur.
    dropped = torch.linalg.lstsq(lora.lora_up.weight, diff.T).solution.T
    zero = dropped.abs() < 1e-4
    kept = torch.isclose(dropped, hidden * 2, rtol=1e-3, atol=1e-4)
    assert bool((zero | kept).all()) and zero.any() and kept.any()
    lora.eval()
    full = lora.bypass_forward(x, scale=1.0) - lora.org_forward(x)
    torch.testing.assert_close(full, F.linear(hidden, lora.lora_up.weight), rtol=1e-4, atol=1e-5)

    (_, net_r, count_r), _ = _lycoris_pair("lora", rank_dropout=0.2)
    assert count_r == 0 and not any(lean_eligible(m) for m in net_r.loras)


# -- attention ---------------------------------------------------------------------------------

def _qkv(shape_q, keys, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = shape_q
    q, k, v = (torch.randn(b, h, t, d, generator=g).to(dtype).requires_grad_()
               for t in (n, keys, keys))
    return q, k, v, torch.randn(b, h, n, d, generator=g).to(dtype)


@pytest.mark.parametrize("shape_q,keys", [((2, 3, 40, 8), 40), ((1, 4, 33, 16), 7), ((1, 2, 5, 24), 77)])
def test_saved_probs_attention_matches_sdpa(shape_q, keys, monkeypatch):
    from extensions_lib.train import cpu_attention

    q, k, v, grad = _qkv(shape_q, keys, torch.bfloat16)
    assert cpu_attention.uses_saved_probs(q, k, v)
    calls = []
    real = cpu_attention._SavedProbsAttention.apply
    monkeypatch.setattr(cpu_attention._SavedProbsAttention, "apply", lambda *a: calls.append(1) or real(*a))
    out = cpu_attention.attention(q, k, v)
    assert calls and out.dtype == torch.bfloat16 and out.shape == q.shape
    ours = (out, *torch.autograd.grad(out, (q, k, v), grad))
    # the attention math every trainer used before SDPA, in bf16 (scores and probabilities in bf16)
    classic = ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1) @ v
    classic = (classic, *torch.autograd.grad(classic, (q, k, v), grad))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref32 = F.scaled_dot_product_attention(q32, k32, v32)
    ref = (ref32, *torch.autograd.grad(ref32, (q32, k32, v32), grad.float()))
    for name, a, c, r in zip(("out", "dq", "dk", "dv"), ours, classic, ref):
        torch.testing.assert_close(a, c, rtol=1e-2, atol=1e-2 * float(c.abs().max()), msg=name)
        assert float((a.float() - r).abs().max() / r.abs().max()) < 0.025, name   # fp32 within bf16 error


def test_attention_falls_back_to_sdpa_where_saved_probs_do_not_pay(monkeypatch):
    from extensions_lib.train import cpu_attention

    q, k, v, _ = _qkv((1, 2, 6, 8), 6, torch.float32)
    assert not cpu_attention.uses_saved_probs(q, k, v)                                  # fp32
    torch.testing.assert_close(cpu_attention.attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=0, atol=0)
    qb, kb, vb, _ = _qkv((1, 2, 6, 8), 6, torch.bfloat16)
    assert not cpu_attention.uses_saved_probs(qb, kb, vb, attn_mask=torch.zeros(6, 6, dtype=torch.bfloat16))
    assert not cpu_attention.uses_saved_probs(qb, kb, vb, dropout_p=0.1)
    with torch.no_grad():                                                               # previews
        assert not cpu_attention.uses_saved_probs(qb, kb, vb)
    # the size limit: larger while freed memory stays in the heap (fresh mmaps make big scores slow)
    from extensions_lib.train.cpu_heap import keep_freed_memory

    assert cpu_attention.uses_saved_probs(qb, kb, vb)
    monkeypatch.setattr(cpu_attention, "MAX_SCORES_UNKEPT", 1 * 2 * 6 * 6 - 1)
    assert not cpu_attention.uses_saved_probs(qb, kb, vb)
    with keep_freed_memory() as kept:
        assert cpu_attention.uses_saved_probs(qb, kb, vb) == kept
        monkeypatch.setattr(cpu_attention, "MAX_SCORES", 1 * 2 * 6 * 6 - 1)
        assert not cpu_attention.uses_saved_probs(qb, kb, vb)
        with cpu_attention.scores_limit(1 * 2 * 6 * 6):   # what a checkpointed run allows
            assert cpu_attention.uses_saved_probs(qb, kb, vb) == kept
        assert not cpu_attention.uses_saved_probs(qb, kb, vb)


def test_own_processor_matches_diffusers_and_is_undone():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from extensions_lib.model.attention_processor import SdpaAttnProcessor, use_own_attention
    from helpers import tiny_bundle

    unet = tiny_bundle().unet
    attns = [m for m in unet.modules() if isinstance(m, Attention)]
    foreign = object.__new__(type("UserProcessor", (AttnProcessor2_0,), {}))   # a subclass: not ours to swap
    attns[0].set_processor(foreign)
    x, t = torch.randn(2, 4, 8, 8, requires_grad=True), torch.tensor([10, 500])
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
    ref = unet(x, t, ctx).sample
    ref_grads = torch.autograd.grad(ref.pow(2).mean(), x)
    undo = use_own_attention(unet)
    assert all(type(m.processor) is SdpaAttnProcessor for m in attns[1:]) and attns[0].processor is foreign
    out = unet(x, t, ctx).sample
    grads = torch.autograd.grad(out.pow(2).mean(), x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-5, atol=1e-7)
    assert undo() == len(attns) - 1
    assert all(type(m.processor) is AttnProcessor2_0 for m in attns[1:]) and attns[0].processor is foreign


# -- heap --------------------------------------------------------------------------------------

def _faults_per_reuse(rounds: int = 6, mib: int = 48) -> float:
    """Minor page faults per allocate-touch-free round of a block above glibc's mmap ceiling."""
    import resource

    torch.empty(mib * 2**18).fill_(1.0)   # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        torch.empty(mib * 2**18).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def test_heap_keeps_freed_memory_only_while_training():
    import platform

    from extensions_lib.train.cpu_heap import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        with keep_freed_memory() as on:
            assert not on   # nothing to tune elsewhere: a no-op, not an error
        return
    pages = 48 * 2**20 / 4096
    assert _faults_per_reuse() > pages / 2            # glibc default: a fresh mmap every time
    with keep_freed_memory() as on:
        assert on
        with keep_freed_memory():                     # re-entrant: the inner exit restores nothing
            pass
        _faults_per_reuse()                           # the heap grows once
        assert _faults_per_reuse() < pages / 20       # then it is reused
    assert _faults_per_reuse() > pages / 20           # given back to the system again


# -- a bf16 run on the CPU ---------------------------------------------------------------------

@pytest.mark.parametrize("checkpointing", [False, True])
def test_bf16_cpu_training_takes_fast_paths_and_restores_the_model(tmp_path, monkeypatch, checkpointing):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from extensions_lib.hosts.standalone import StandaloneHost
    from extensions_lib.train import cpu_attention, small_convs
    from extensions_lib.train.session import run_training
    from helpers import make_images, quick_config, tiny_bundle

    make_images(tmp_path / "data" / "10_sks")
    bundle = tiny_bundle()
    before = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    calls, pointwise = [], []
    real = cpu_attention._SavedProbsAttention.apply
    real_gemm = small_convs.conv_as_matmul
    monkeypatch.setattr(small_convs, "conv_as_matmul",
                        lambda x, w, *a: pointwise.append(tuple(w.shape)) or real_gemm(x, w, *a))
    monkeypatch.setattr(cpu_attention._SavedProbsAttention, "apply",
                        lambda *a: calls.append(cpu_attention._limit) or real(*a))
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__mixed_precision="bf16",
                       training__max_train_epochs=3, training__gradient_checkpointing=checkpointing)
    result = run_training(cfg, StandaloneHost(bundle))
    assert calls, "bf16 on the CPU should use the saved-probabilities attention"
    # checkpointing keeps one block's probabilities at a time, so the run allows larger ones
    assert set(calls) == {cpu_attention.MAX_SCORES_CHECKPOINTED if checkpointing else None}
    assert cpu_attention._limit is None
    # the LoRA's rank-4 down/up convs on proj_in/proj_out ran as GEMMs too (batch 1, bf16)
    rank = cfg.network.dim
    assert {s for s in pointwise if s[2:] == (1, 1) and rank in s[:2]} >= {(rank, 32, 1, 1), (32, rank, 1, 1)}
    assert result.output_path.exists() and all(map(math.isfinite, result.losses))
    attns = [m for m in bundle.unet.modules() if isinstance(m, Attention)]
    assert attns and all(type(m.processor) is AttnProcessor2_0 for m in attns)
    assert not [m for m in bundle.unet.modules() if "_conv_forward" in vars(m)]
    after = bundle.unet.state_dict()   # the standalone host keeps frozen weights in the training precision
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)
