"""Forward + backward time of SD UNet attention shapes in bf16 on the CPU: PyTorch's SDPA (flash)
against train/cpu_attention.py's saved-probabilities form, with freed memory kept in the heap as
during training (train/cpu_heap.py) and, for comparison, without.

    python bench/bench_cpu_attention.py            # 256 px and 512 px shapes, batch 1
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from extensions_lib.train.cpu_attention import saved_probs_attention, uses_saved_probs  # noqa: E402
from extensions_lib.train.cpu_heap import keep_freed_memory  # noqa: E402

# (queries, keys, head_dim, heads, what): SD1.5 UNet at 256 px and 512 px, and the text encoder
SHAPES = [(1024, 1024, 40, 8, "256 px level 1 self"), (1024, 77, 40, 8, "256 px level 1 cross"),
          (256, 256, 80, 8, "256 px level 2 self"), (256, 77, 80, 8, "256 px level 2 cross"),
          (64, 64, 160, 8, "256 px level 3 self"), (64, 77, 160, 8, "256 px level 3 cross"),
          (4096, 4096, 40, 8, "512 px level 1 self"), (4096, 77, 40, 8, "512 px level 1 cross")]


def timed(fn, repeat: int) -> float:
    fn()
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000


def main() -> None:
    torch.manual_seed(0)
    print(f"{'shape':24} {'heap':>5} {'SDPA f+b ms':>12} {'ours f+b ms':>12} {'ratio':>6}  training uses")
    for n, m, d, h, what in SHAPES:
        q, k, v = (torch.randn(1, h, t, d, dtype=torch.bfloat16, requires_grad=True) for t in (n, m, m))
        g = torch.randn(1, h, n, d, dtype=torch.bfloat16)
        repeat = 3 if n * m > 2**22 else 20
        for keep in (True, False):
            with keep_freed_memory(keep):
                sdpa = timed(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), g),
                             repeat)
                ours = timed(lambda: torch.autograd.grad(saved_probs_attention(q, k, v), (q, k, v), g), repeat)
                picked = "ours" if uses_saved_probs(q, k, v) else "SDPA"
            print(f"{what:24} {'kept' if keep else 'glibc':>5} {sdpa:12.2f} {ours:12.2f} {ours / sdpa:6.2f}  {picked}",
                  flush=True)


if __name__ == "__main__":
    main()
