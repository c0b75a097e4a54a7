"""On the CPU, run convolutions over small feature maps as one matrix product.

Why: oneDNN's direct convolution is slow when the output has few pixels and many channels. The
SD UNet's low-resolution levels (1280-2560 channels at 4x4 and 8x8 at 256 px; 8x8 at 512 px) ran
at 20-90 GFLOP/s in fp32 and 40-260 in bf16 on a 2-core EPYC, against 150-370 for the same work
done as unfold + one GEMM (bench/bench_small_convs.py prints them). At 256 px those convolutions
took a third of a LoRA training step.

1x1 convolutions (the transformer blocks' proj_in/proj_out, and LoRA's rank-r down/up convs on them)
are a plain GEMM over the pixels, with no unfold. In bf16 at batch 1 that beat oneDNN 1.1-1.35x for
the base layers and 1.3-2.8x for the rank-16 LoRA convs, forward + backward; in fp32, and at batch 2
and up, oneDNN won or tied, so those keep it.

The swap is an instance attribute over `Conv2d._conv_forward`, so it composes with whatever wraps
`forward` (lycoris' bypass modules, the WebUI's Lora patch), and it is removed when training ends.
GPUs are left alone: cuDNN has no such weak spot.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..model.autocast import compute_dtype

# Output columns (batch x output pixels) up to which the GEMM form wins in every dtype measured,
# and the larger limit where it still wins in fp32 for wide layers (input channels x kernel area).
SMALL_COLUMNS = 64
FP32_COLUMNS = 256
FP32_MIN_DEPTH = 1280 * 9
# Largest batch at which a bf16 1x1 convolution runs as a GEMM.
POINTWISE_MAX_BATCH = 1


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def prefers_matmul(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: tuple,
                   pointwise: bool = True) -> bool:
    """`pointwise`: whether bf16 1x1 convolutions at batch 1 take the GEMM form (off: small outputs only)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return False
    n, _, h, w = x.shape
    o, c, kh, kw = weight.shape
    if (pointwise and _is_pointwise(weight, stride, padding) and n <= POINTWISE_MAX_BATCH
            and _compute_dtype(weight) == torch.bfloat16):
        return True
    columns = n * _output_size(h, kh, stride[0], padding[0]) * _output_size(w, kw, stride[1], padding[1])
    if columns <= SMALL_COLUMNS:
        return True
    return _compute_dtype(weight) == torch.float32 and columns <= FP32_COLUMNS and c * kh * kw >= FP32_MIN_DEPTH


def _is_pointwise(weight: torch.Tensor, stride: tuple, padding: tuple) -> bool:
    """A 1x1 kernel, stride 1, no padding: the convolution is a plain product over the pixels."""
    return weight.shape[2:] == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    return compute_dtype(torch.device("cpu"), weight.dtype)


def conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: tuple,
                   padding: tuple) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) for groups=1, dilation=1, as unfold + one GEMM.

    The batch goes into the GEMM's columns (one [O, C*k*k] @ [C*k*k, N*L] product): a batched
    product per image is much slower in bf16."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    oh, ow = _output_size(h, kh, stride[0], padding[0]), _output_size(w, kw, stride[1], padding[1])
    if _is_pointwise(weight, stride, padding):
        cols = x.transpose(0, 1).reshape(x.shape[1], n * h * w)  # the pixels are the columns: a view at batch 1
    else:
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # [N, C*k*k, L]
        cols = cols.permute(1, 0, 2).reshape(cols.shape[1], n * oh * ow)
    flat = weight.reshape(o, -1)
    # addmm/mm are autocast ops, so under bf16 autocast this casts exactly like F.conv2d would
    out = torch.addmm(bias.unsqueeze(1), flat, cols) if bias is not None else torch.mm(flat, cols)
    return out.view(o, n, oh, ow).permute(1, 0, 2, 3)


def _conv_forward(module: torch.nn.Conv2d, pointwise: bool, x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> torch.Tensor:
    if prefers_matmul(x, weight, module.stride, module.padding, pointwise):
        return conv_as_matmul(x, weight, bias, module.stride, module.padding)
    return type(module)._conv_forward(module, x, weight, bias)


def _eligible(m: torch.nn.Module) -> bool:
    return (isinstance(m, torch.nn.Conv2d) and m.groups == 1 and tuple(m.dilation) == (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and "_conv_forward" not in vars(m))  # somebody else's override: leave it


def switch_small_convs(module: torch.nn.Module, device: torch.device, pointwise: bool = True) -> Callable[[], int]:
    """Make the eligible Conv2d layers of `module` use the GEMM form for small outputs, on the CPU.
    Returns the undo (which says how many layers it restored)."""
    switched = [m for m in module.modules() if _eligible(m)] if device.type == "cpu" else []
    for m in switched:
        m._conv_forward = partial(_conv_forward, m, pointwise)

    def undo() -> int:
        for m in switched:
            vars(m).pop("_conv_forward", None)
        return len(switched)

    return undo
