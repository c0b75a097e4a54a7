"""The CPU-only speed-ups a training run switches on for its duration, and off again after.

Each one is its own file with the measurements behind it: small_convs.py (small convolutions as one
GEMM; "pointwise_convs" is its bf16 1x1 rule), cpu_attention.py (bf16 attention with saved
probabilities), cpu_heap.py (freed memory kept in the heap). `ENABLED` lets bench/bench_train.py
--without / --alternate measure what each one is worth.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterable, Iterator

import torch

from ..model.attention_processor import use_own_attention
from .cpu_attention import MAX_SCORES_CHECKPOINTED, scores_limit
from .cpu_heap import keep_freed_memory
from .small_convs import switch_small_convs

ENABLED = {"small_convs": True, "pointwise_convs": True, "attention": True, "heap": True}


def keep_freed_memory_on(device: torch.device):
    """The heap setting alone, for CPU work outside the training loop (latent caching)."""
    return keep_freed_memory(device.type == "cpu" and ENABLED["heap"])


@contextmanager
def cpu_fast_paths(unet: torch.nn.Module, device: torch.device, checkpointing: bool = False,
                   adapters: Iterable[torch.nn.Module] = ()) -> Iterator[None]:
    """`adapters`: the method's own modules that run inside the UNet (LoRA's convs get the small-conv
    path too)."""
    if device.type != "cpu":
        yield
        return
    with ExitStack() as undo:
        undo.enter_context(keep_freed_memory_on(device))
        if ENABLED["small_convs"]:
            for module in (unet, *adapters):
                undo.callback(switch_small_convs(module, device, pointwise=ENABLED["pointwise_convs"]))
        if ENABLED["attention"]:
            undo.callback(use_own_attention(unet))
            if checkpointing:   # one block's attention probabilities live at a time
                undo.enter_context(scores_limit(MAX_SCORES_CHECKPOINTED))
        yield
