"""Autocast state, read the same way on the WebUI's torch 2.1 and on current torch."""
from __future__ import annotations

from contextlib import nullcontext

import torch

# device types whose autocast state is read and switched here (others have no autocast to query)
AUTOCAST_DEVICES = ("cpu", "cuda")


def compute_dtype(device: torch.device, fallback: torch.dtype) -> torch.dtype:
    """The dtype an autocast op (linear, conv, matmul) computes in on `device` now: autocast's when
    it is on, else `fallback` (the layer's weight dtype)."""
    kind = device.type
    if kind not in AUTOCAST_DEVICES:
        return fallback
    try:  # torch >= 2.4
        on, dtype = torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)
    except (TypeError, AttributeError):  # torch 2.1
        if kind == "cpu":
            on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if on else fallback


def autocast_off(device: torch.device):
    """A context in which ops on `device` run in their inputs' dtype."""
    if device.type in AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()
