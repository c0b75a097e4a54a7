"""The CPU speed paths compute what the plain layers compute, and leave nothing behind.

- small convolutions as one GEMM (train/small_convs.py) against F.conv2d, values and gradients;
- the lean LoRA bypass (methods/lora_bypass.py) against lycoris' own bypass forward.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from extensions_lib.train.small_convs import conv_as_matmul, prefers_matmul, switch_small_convs


@pytest.mark.parametrize("batch,channels,size,kernel,stride,bias", [
    (1, 8, 4, 3, 1, True), (3, 8, 5, 3, 2, True), (2, 6, 8, 1, 1, False), (1, 4, 7, 3, 2, False)])
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
