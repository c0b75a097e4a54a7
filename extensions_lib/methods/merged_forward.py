"""LoHa / LoKr training forward that keeps no full-size weight for backward.

lycoris' rebuild forward computes ΔW from the factors, adds it to the base weight, subtracts the
base again and runs the layer's op on that delta beside the base op. Autograd keeps the full-size
ΔW of every adapted layer (plus the Hadamard / Kronecker halves it came from) until backward: on
the SD1.5 UNet with conv layers that is several GiB, the whole model again and more. It also runs
the layer's op twice forward and twice backward.

Here one autograd function per layer runs the op once on the merged weight W + m·ΔW (computed in
fp32, cast to the compute dtype, as the WebUI applies the file) and saves only the layer input,
which the graph holds anyway. Backward rebuilds ΔW from the factors, takes the input gradient
through the merged weight and the weight gradient from input and output gradient, and sends that
through lycoris' own `get_weight` to the factors. Every full-size tensor lives only while its layer
runs. Cost per adapted layer: one op forward, two backward (input and weight gradient), against
lycoris' two and three.

Modules this does not cover (rank dropout, DoRA, scalar, non-zero padding modes, fp8 bases) keep
lycoris' own forward.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

_CONVS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def merged_eligible(lora) -> bool:
    base = lora.org_module[0]
    return (type(lora).__name__ in ("LohaModule", "LokrModule") and not lora.bypass_mode
            and not lora.wd and not lora.rank_dropout and not lora.is_quant
            and not isinstance(lora.scalar, torch.nn.Parameter)
            and (lora.module_type == "linear"
                 or (lora.module_type in _CONVS and getattr(base, "padding_mode", "zeros") == "zeros")))


# devices whose autocast state we read and switch off around our own casts
_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype the base layer's own op would compute in here (autocast's, else its weight's)."""
    kind = device.type
    if kind not in _AUTOCAST_DEVICES:
        return fallback
    try:  # torch >= 2.4
        on, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # the WebUI's torch 2.1
        if kind == "cpu":
            on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if on else fallback


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False) if device.type in _AUTOCAST_DEVICES else nullcontext()


def _delta(lora, scale: float) -> torch.Tensor:
    """m·ΔW in the factors' precision, by lycoris' own formula for the module."""
    with _no_autocast(lora.device):
        return lora.get_weight(lora.shape) * (lora.scalar * scale)


def _merged(lora, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (delta.detach() + lora._current_weight()).to(dtype)


class _MergedOp(torch.autograd.Function):
    """y = op(x, W + m·ΔW, b); saves x only; the factors get their gradients through get_weight."""

    @staticmethod
    def forward(ctx, x, lora, scale, *params):
        dtype = _autocast_dtype(x.device, lora._current_weight().dtype)
        with torch.no_grad():
            weight = _merged(lora, _delta(lora, scale), dtype)
        bias = lora._current_bias()
        bias = None if bias is None else bias.to(dtype)
        with _no_autocast(x.device):
            y = lora.op(x.to(dtype), weight, bias, **lora.kw_dict)
        ctx.save_for_backward(x)
        ctx.lora, ctx.scale, ctx.params = lora, scale, params
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        lora, dtype = ctx.lora, grad_y.dtype
        wanted = [p for p, need in zip(ctx.params, ctx.needs_input_grad[3:]) if need]
        with torch.enable_grad():
            delta = _delta(lora, ctx.scale)
        weight = _merged(lora, delta, dtype)
        xc = x.to(dtype)
        if lora.module_type == "linear":
            g2 = grad_y.reshape(-1, grad_y.shape[-1])
            grad_x = (g2 @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
            grad_w = g2.t() @ xc.reshape(-1, xc.shape[-1]) if wanted else None
        else:
            kw = lora.kw_dict
            dims = _CONVS[lora.module_type]
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad_y, xc, weight, None, _tuple(kw["stride"], dims), _tuple(kw["padding"], dims),
                _tuple(kw["dilation"], dims), False, [0] * dims, kw["groups"],
                [ctx.needs_input_grad[0], bool(wanted), False])
        del weight, xc
        grads = iter(torch.autograd.grad(delta, wanted, grad_w.to(delta.dtype), allow_unused=True) if wanted else ())
        param_grads = [next(grads) if need else None for need in ctx.needs_input_grad[3:]]
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        return (grad_x, None, None, *param_grads)


def _tuple(value, dims: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * dims


def merged_forward(lora, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What lycoris' rebuild forward computes (base op + op on m·ΔW), as one op on the merged weight."""
    if scale == 0:
        return lora.org_forward(x)
    return _MergedOp.apply(x, lora, float(scale), *lora.parameters())


def use_merged_forward(loras) -> int:
    """Route every eligible LoHa/LoKr module through the merged forward. lycoris' own `forward`
    (which applies module dropout) calls `bypass_forward` when `bypass_mode` is set, so the
    function goes there as an instance attribute; `restore` and the saved keys are unaffected."""
    count = 0
    for lora in loras:
        if merged_eligible(lora):
            lora.bypass_mode = True
            lora.bypass_forward = partial(merged_forward, lora)
            count += 1
    return count
