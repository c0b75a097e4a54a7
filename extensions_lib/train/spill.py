"""A warning when training on a CUDA GPU slows down the way it does when the driver starts spilling
into shared system memory.

NVIDIA's Windows driver (536.40 and later, "CUDA - Sysmem Fallback Policy") answers an allocation that
does not fit in VRAM with system memory over PCIe instead of an out-of-memory error: nothing fails,
but every step becomes several times slower. What can be seen from here is the pair of symptoms: the
step time jumps well above what it settled at, while the card's memory is nearly all in use. Then the
user is told which knobs bring the run back into VRAM.
"""
from __future__ import annotations

import statistics
from typing import Callable, Optional

import torch


def cuda_memory_used(device: torch.device) -> Optional[float]:
    """Fraction of the card's memory in use (by every process), None when it cannot be read."""
    try:
        free, total = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError, ValueError):
        return None
    return 1.0 - free / total if total else None


class SpillWatch:
    """Fed each optimizer step's time; returns a warning once, when the median of the last `window`
    steps is `factor` times the median of the `settle` steps after the warm-up and the card is at
    least `full` used."""

    def __init__(self, memory_used: Callable[[], Optional[float]], *, warmup: int = 3, settle: int = 5,
                 window: int = 5, factor: float = 2.5, full: float = 0.9):
        self.memory_used = memory_used
        self.warmup, self.settle, self.window, self.factor, self.full = warmup, settle, window, factor, full
        self.times: list[float] = []
        self.warned = False

    @classmethod
    def for_device(cls, device: torch.device) -> Optional["SpillWatch"]:
        """A watch on a CUDA device; None elsewhere (a CPU or MPS run cannot spill this way)."""
        if device.type != "cuda":
            return None
        return cls(lambda: cuda_memory_used(device))

    def observe(self, seconds: float) -> Optional[str]:
        if self.warned:
            return None
        self.times.append(seconds)
        base_end = self.warmup + self.settle
        if len(self.times) < base_end + self.window:
            return None
        settled = statistics.median(self.times[self.warmup:base_end])
        recent = statistics.median(self.times[-self.window:])
        if settled <= 0 or recent < self.factor * settled:
            return None
        used = self.memory_used()
        if used is None or used < self.full:
            return None
        self.warned = True
        return (f"steps became {recent / settled:.1f}x slower ({settled:.2f} s -> {recent:.2f} s) while the GPU's "
                f"memory is {used:.0%} used: the driver is probably spilling into shared system memory (NVIDIA's "
                "'CUDA - Sysmem Fallback Policy'). The run goes on, slowly. To bring it back into VRAM: lower "
                "training.train_batch_size or data.resolution, turn on training.gradient_checkpointing, pick an "
                "8-bit optimizer (training.optimizer = adamw8bit) or a lower network.dim; or set that driver policy "
                "to 'Prefer No Sysmem Fallback' to get an out-of-memory error instead")
