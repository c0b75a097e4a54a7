"""oneDNN's conv2d against the unfold + one GEMM form (train/small_convs.py) on the SD1.5 UNet's
convolution shapes, forward and forward + input-gradient, fp32 and bf16. Prints GFLOP/s and which
form `prefers_matmul` picks, so the rule can be checked on another CPU.

    python bench/bench_small_convs.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from extensions_lib.train.small_convs import conv_as_matmul, prefers_matmul  # noqa: E402

# (batch, in channels, out channels, size, kernel, stride): the UNet's levels at 256 and 512 px
SHAPES = [(1, 1280, 1280, 4, 3, 1), (1, 2560, 1280, 4, 3, 1), (1, 1280, 1280, 8, 3, 1), (1, 2560, 1280, 8, 3, 1),
          (1, 1280, 1280, 8, 3, 2), (1, 1280, 1280, 16, 3, 1), (1, 640, 640, 16, 3, 1), (1, 320, 320, 32, 3, 1),
          (2, 1280, 1280, 8, 3, 1), (4, 1280, 1280, 8, 3, 1),
          # 1x1: proj_in/proj_out, and the rank-16 LoRA down/up convs on them
          (1, 320, 320, 32, 1, 1), (1, 640, 640, 16, 1, 1), (1, 320, 320, 64, 1, 1), (2, 320, 320, 32, 1, 1),
          (1, 320, 16, 32, 1, 1), (1, 16, 320, 32, 1, 1), (1, 320, 16, 64, 1, 1), (1, 16, 320, 64, 1, 1),
          (2, 320, 16, 32, 1, 1), (2, 16, 320, 32, 1, 1)]


def seconds(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    print(f"{'dtype':>5} {'shape (N, C->O, HxW, k, s)':>30} {'conv2d f':>9} {'f+b':>6} {'gemm f':>7} {'f+b':>6}  picks")
    for dtype in (torch.float32, torch.bfloat16):
        for n, c, o, size, k, s in SHAPES:
            x = torch.randn(n, c, size, size, dtype=dtype, requires_grad=True)
            w = torch.randn(o, c, k, k, dtype=dtype) * 0.01
            b = torch.randn(o, dtype=dtype)
            pad = k // 2
            out_size = (size + 2 * pad - k) // s + 1
            gflop = 2 * n * c * o * k * k * out_size * out_size / 1e9
            rates = []
            for form in (lambda: F.conv2d(x, w, b, stride=s, padding=pad),
                         lambda: conv_as_matmul(x, w, b, (s, s), (pad, pad))):
                grad = torch.randn_like(form())
                forward = seconds(lambda: form().detach())
                both = seconds(lambda: torch.autograd.grad(form(), x, grad))
                rates += [gflop / forward, 2 * gflop / both]
            pick = "gemm" if prefers_matmul(x, w, (s, s), (pad, pad)) else "conv2d"
            shape = f"{n}, {c}->{o}, {size}x{size}, {k}, {s}"
            print(f"{str(dtype)[6:]:>5} {shape:>30} {rates[0]:9.0f} {rates[1]:6.0f} {rates[2]:7.0f} {rates[3]:6.0f}  {pick}",
                  flush=True)


if __name__ == "__main__":
    main()
