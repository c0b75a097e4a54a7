"""LoHa / LoKr merged forward (and LoHa through its factors): the same outputs and gradients as
lycoris' rebuild forward, without keeping any full-size weight for backward."""
from __future__ import annotations

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

from extensions_lib.methods import merged_forward as mf
from extensions_lib.methods.merged_forward import merged_eligible, use_merged_forward

LAYERS = {
    "linear": (lambda: torch.nn.Linear(32, 48), (2, 5, 32)),
    "conv3x3_strided": (lambda: torch.nn.Conv2d(16, 24, 3, padding=1, stride=2), (2, 16, 9, 9)),
    "conv1x1": (lambda: torch.nn.Conv2d(16, 24, 1), (1, 16, 4, 4)),
}
WIDE = {  # layers whose weight is much bigger than a rank-4 factor pair
    "wide_linear": (lambda: torch.nn.Linear(256, 384), (2, 5, 256)),
    "wide_conv": (lambda: torch.nn.Conv2d(64, 96, 3, padding=1, stride=2), (2, 64, 9, 9)),
}
ALGOS = {
    "loha": (LohaModule, {}),
    "lokr": (LokrModule, {"factor": 4}),
    "lokr_both_low_rank": (LokrModule, {"factor": -1, "decompose_both": True, "lora_dim": 2}),
}


def _module(algo, layer, **extra):
    cls, kw = ALGOS[algo]
    torch.manual_seed(0)
    base = {**LAYERS, **WIDE}[layer][0]().requires_grad_(False)
    torch.manual_seed(1)
    module = cls("test", base, **{"multiplier": 0.7, "lora_dim": 4, "alpha": 2, **kw, **extra})
    for p in module.parameters():  # trained-looking factors: lycoris starts one of them at zero
        torch.nn.init.normal_(p, std=0.3)
    return base, module


def _run(algo, layer, merged: bool, autocast: bool = False, **extra):
    base, module = _module(algo, layer, **extra)
    module.apply_to()
    if merged:
        assert use_merged_forward([module]) == 1
    x = torch.randn(LAYERS[layer][1], generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = base(x)
    weights = torch.linspace(-1, 1, y.numel()).view(y.shape)
    (y.float() * weights).sum().backward()
    module.restore()
    return y.detach().float(), x.grad, [p.grad.clone() for p in module.parameters()]


@pytest.fixture(params=["merged", "factors"])
def loha_form(request, monkeypatch):
    """Which of its two forms a LoHa / LoKr layer takes (LoHa's size rule picks one per call)."""
    monkeypatch.setattr(mf, "_loha_prefers_factors", lambda lora, columns: request.param == "factors")
    monkeypatch.setattr(mf, "_lokr_prefers_factors", lambda lora: request.param == "factors")
    return request.param


@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("algo", list(ALGOS))
def test_merged_forward_matches_lycoris_outputs_and_gradients(algo, layer, loha_form):
    want_y, want_gx, want_gp = _run(algo, layer, merged=False)
    got_y, got_gx, got_gp = _run(algo, layer, merged=True)
    torch.testing.assert_close(got_y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_gx, want_gx, atol=1e-5, rtol=1e-5)
    assert len(got_gp) == len(want_gp) >= 2
    for got, want in zip(got_gp, want_gp):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_merged_forward_under_bf16_autocast_matches_to_bf16_rounding(algo, loha_form):
    for layer in ("linear", "conv3x3_strided"):
        want_y, want_gx, want_gp = _run(algo, layer, merged=False, autocast=True)
        got_y, got_gx, got_gp = _run(algo, layer, merged=True, autocast=True)
        scale = lambda t: t.abs().max().item()  # noqa: E731
        assert (got_y - want_y).abs().max() <= 0.02 * scale(want_y)
        assert (got_gx - want_gx).abs().max() <= 0.02 * scale(want_gx)
        for got, want in zip(got_gp, want_gp):
            assert (got - want).abs().max() <= 0.02 * scale(want)


def _saved_bytes(algo, layer, merged: bool, **extra) -> tuple[int, int]:
    """Bytes autograd keeps for backward in one adapted layer's forward, and that layer's weight size."""
    base, module = _module(algo, layer, **extra)
    module.apply_to()
    if merged:
        use_merged_forward([module])
    x = torch.randn({**LAYERS, **WIDE}[layer][1]).requires_grad_(True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        base(x)
    module.restore()
    storage = lambda t: t.untyped_storage().data_ptr()  # noqa: E731  (views share their base's)
    own = {storage(t) for t in (*module.parameters(), base.weight, x)}
    fresh = {storage(t): t for t in kept if storage(t) not in own}  # memory made for this layer alone
    return sum(t.untyped_storage().nbytes() for t in fresh.values()), base.weight.numel() * base.weight.element_size()


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_merged_forward_keeps_no_full_size_weight_for_backward(algo, monkeypatch):
    monkeypatch.setattr(mf, "_loha_prefers_factors", lambda lora, columns: False)
    monkeypatch.setattr(mf, "_lokr_prefers_factors", lambda lora: False)
    for layer in ("linear", "conv3x3_strided"):
        old, weight_bytes = _saved_bytes(algo, layer, merged=False)
        new, _ = _saved_bytes(algo, layer, merged=True)
        assert old >= weight_bytes  # lycoris' rebuild form keeps at least one full-size ΔW
        assert new < weight_bytes / 4, (layer, new, weight_bytes)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_through_the_factors_only_rank_or_activation_sized_tensors_are_kept(algo, monkeypatch):
    monkeypatch.setattr(mf, "_loha_prefers_factors", lambda lora, columns: True)
    monkeypatch.setattr(mf, "_lokr_prefers_factors", lambda lora: True)
    for layer in WIDE:
        new, weight_bytes = _saved_bytes(algo, layer, merged=True, lora_dim=2)
        assert new < weight_bytes / 4, (layer, new, weight_bytes)


def test_loha_size_rule_takes_the_factors_where_few_positions_meet_a_big_weight():
    big = LohaModule("big", torch.nn.Conv2d(1280, 1280, 3, padding=1), lora_dim=8, alpha=4)
    small = LohaModule("small", torch.nn.Linear(320, 320), lora_dim=16, alpha=8)
    assert mf._columns(big, torch.empty(1, 1280, 8, 8)) == 64
    assert mf._columns(small, torch.empty(2, 1024, 320)) == 2048
    assert mf._loha_prefers_factors(big, 64)  # 8x8 latent: rank 64 against 14.7 M weights
    assert not mf._loha_prefers_factors(small, 1024)  # 32x32 tokens: rank 256 against a 320x320 weight


def test_merged_forward_at_multiplier_zero_is_the_base_layer():
    base, module = _module("loha", "linear")
    module.apply_to()
    use_merged_forward([module])
    module.multiplier = 0.0
    x = torch.randn(3, 32)
    torch.testing.assert_close(base(x), torch.nn.functional.linear(x, base.weight, base.bias))
    module.restore()


def test_modules_it_does_not_cover_keep_lycoris_forward():
    _, with_rank_dropout = _module("loha", "linear", rank_dropout=0.1)
    _, dora = _module("loha", "linear", weight_decompose=True)
    _, tucker = _module("loha", "conv3x3_strided", use_tucker=True)
    for module in (with_rank_dropout, dora, tucker):
        assert not merged_eligible(module)
    assert use_merged_forward([with_rank_dropout, dora, tucker]) == 0


@pytest.mark.parametrize("algo", ["loha", "lokr_both_low_rank"])
def test_frozen_factors_get_no_gradient_and_the_others_the_right_one(algo):
    def run(merged):
        base, module = _module(algo, "conv3x3_strided")
        frozen = next(iter(module.parameters()))
        frozen.requires_grad_(False)
        module.apply_to()
        if merged:
            use_merged_forward([module])
        base(torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(3))).square().sum().backward()
        module.restore()
        return [p.grad for p in module.parameters()]

    want, got = run(False), run(True)
    assert want[0] is None and got[0] is None
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_factor_forms_run_on_a_half_precision_base_without_autocast(algo, monkeypatch):
    monkeypatch.setattr(mf, "_loha_prefers_factors", lambda lora, columns: True)
    for layer in ("linear", "conv3x3_strided"):
        base, module = _module(algo, layer)
        base.to(torch.bfloat16)
        module.apply_to()
        use_merged_forward([module])
        x = torch.randn(LAYERS[layer][1]).to(torch.bfloat16).requires_grad_(True)
        y = base(x)
        y.float().sum().backward()
        module.restore()
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
