"""Optimizers and learning-rate schedules by name, with clear refusals when one cannot run here."""
from __future__ import annotations

import math

import torch

from ..config import ConfigError, ConfigProblem, TrainConfig


def _unavailable(name: str, why: str) -> ConfigError:
    return ConfigError([ConfigProblem("training.optimizer", name,
                                      f"cannot run here ({why}); choose adamw, lion or adafactor instead")])


def _probe_8bit(cls, device) -> None:
    """bitsandbytes' support depends on its version and build: one tiny real step tells."""
    p = torch.nn.Parameter(torch.ones(4096, device=device))
    opt = cls([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    if not torch.isfinite(p).all():
        raise RuntimeError("the test step produced non-finite values")


def has_cpu_8bit_kernel() -> bool:
    """Whether the loaded bitsandbytes registers a CPU kernel for its 8-bit blockwise optimizer step.
    0.50.2 does; 0.45.3 (the newest for torch < 2.4) runs 8-bit optimizers only on a CUDA GPU."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(
            "bitsandbytes::optimizer_update_8bit_blockwise", "CPU"))
    except RuntimeError:  # no such operator: a bitsandbytes without torch custom ops
        return False


def _adamw8bit(groups: list[dict], lr: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """bitsandbytes is imported here and nowhere else: loading it prints warnings on CPU builds."""
    name = "adamw8bit"
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise _unavailable(name, "the bitsandbytes package is missing: pip install bitsandbytes") from None
    except Exception as e:  # a broken install can fail inside its own import
        raise _unavailable(name, f"bitsandbytes failed to import: {str(e).splitlines()[0][:160]}") from None
    version = getattr(bnb, "__version__", "?")
    if torch.device(device).type == "cpu" and not has_cpu_8bit_kernel():
        raise _unavailable(name, f"bitsandbytes {version} has no CPU 8-bit optimizer, only a CUDA one; "
                                 "bitsandbytes 0.50.2 (torch >= 2.4) runs it on CPU")
    try:
        _probe_8bit(bnb.optim.AdamW8bit, device)
    except Exception as e:  # missing native library, unsupported device
        raise _unavailable(name, f"bitsandbytes {version} 8-bit AdamW failed: "
                                 f"{str(e).splitlines()[0][:160]}") from None
    return bnb.optim.AdamW8bit(groups, lr=lr, weight_decay=weight_decay)


_FUSED_ADAMW: dict = {}


def _fused_adamw_runs(device) -> bool:
    """Whether this torch has a fused AdamW kernel for the device type, tried once with one tiny step:
    torch 2.1-2.3 accept fused=True for CPU tensors and only fail at the first step (no CPU kernel)."""
    kind = torch.device(device).type
    if kind not in _FUSED_ADAMW:
        try:
            p = torch.nn.Parameter(torch.zeros(4, device=device))
            p.grad = torch.ones_like(p)
            torch.optim.AdamW([p], lr=1e-3, fused=True).step()
            _FUSED_ADAMW[kind] = bool(torch.isfinite(p).all())
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            _FUSED_ADAMW[kind] = False
    return _FUSED_ADAMW[kind]


def _adamw(groups: list[dict], lr: float, weight_decay: float, device) -> torch.optim.Optimizer:
    """torch's fused AdamW where this torch has it for the device (CPU from torch 2.4): one
    kernel per step instead of ~10 per parameter; 19 -> 6.5 ms for a 528-tensor LoRA on 2 cores."""
    if _fused_adamw_runs(device):
        try:
            return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def build_optimizer(cfg: TrainConfig, groups: list[dict], device) -> torch.optim.Optimizer:
    t = cfg.training
    name = t.optimizer
    lr = t.learning_rate
    clean = [{k: v for k, v in g.items() if k != "name"} for g in groups]
    if name == "adamw":
        return _adamw(clean, lr, t.weight_decay, device)
    if name == "adamw8bit":
        return _adamw8bit(clean, lr, t.weight_decay, device)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(clean, lr=lr, weight_decay=t.weight_decay, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise _unavailable(name, "the lion-pytorch package is missing: pip install lion-pytorch") from None
        return Lion(clean, lr=lr, weight_decay=t.weight_decay)
    if name == "sgd_nesterov":
        return torch.optim.SGD(clean, lr=lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise _unavailable(name, "the prodigyopt package is missing: pip install prodigyopt") from None
        return Prodigy(clean, lr=lr, weight_decay=t.weight_decay)
    raise ConfigError([ConfigProblem("training.optimizer", name, "unknown optimizer")])


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    w = cfg.training.lr_warmup_steps
    return int(math.ceil(w * total_steps)) if 0 < w < 1 else int(w)


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    t = cfg.training
    return get_scheduler(
        t.lr_scheduler, optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        num_cycles=t.lr_scheduler_num_cycles,
        power=t.lr_scheduler_power,
    )
