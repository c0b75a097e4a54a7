"""Fake of modules/devices.py (1.10.1), as on a CPU-only WebUI run with --no-half.

Real defaults are float16 for dtype/dtype_unet/dtype_vae with CUDA; the fake uses float32 and the CPU.
torch_gc() calls are counted in torch_gc_calls.
"""
import contextlib

import torch

cpu: torch.device = torch.device("cpu")
fp8: bool = False
force_fp16: bool = False
device: torch.device = cpu
device_interrogate: torch.device = cpu
device_gfpgan: torch.device = cpu
device_esrgan: torch.device = cpu
device_codeformer: torch.device = cpu
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32
dtype_inference: torch.dtype = torch.float32
unet_needs_upcast = False

torch_gc_calls = 0


def get_optimal_device_name():
    return "cpu"


def get_optimal_device():
    return cpu


def get_device_for(task):
    return cpu


def torch_gc():
    global torch_gc_calls
    torch_gc_calls += 1


def cond_cast_unet(input):
    if force_fp16:
        return input.to(torch.float16)
    return input.to(dtype_unet) if unet_needs_upcast else input


def cond_cast_float(input):
    return input.float() if unet_needs_upcast else input


def autocast(disable=False):
    # float32 on the CPU: the real one returns a nullcontext in this case too
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()
