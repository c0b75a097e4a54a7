"""Hand the WebUI its model back exactly as lent.

Training only reads the WebUI's tensors (the bundle's modules hold detached views of them), so
nothing should change. ModelGuard makes that checkable without copying gigabytes: it records, per
tensor, the object, storage pointer, device, dtype, shape, requires_grad and autograd version
counter (every in-place write, through any view, bumps it), and per module the training flag, the
registered hooks and any instance-level forward. `restore()` puts back whatever can be put back
(flags, hooks, forwards) and returns what cannot (changed tensors, a changed module tree).
Class-level patches (the Lora support's Linear.forward etc.) are left alone: "Reload UI" during a
training legitimately re-applies them.
"""
from __future__ import annotations

from typing import Any

import torch


class WebUIModelChanged(RuntimeError):
    """The WebUI's model differs after training in a way that cannot be undone here."""


def _tensor_mark(t: torch.Tensor) -> tuple:
    return (id(t), t.data_ptr(), str(t.device), t.dtype, tuple(t.shape), t._version)


def _hook_dicts(module: Any) -> dict[str, dict]:
    """_forward_hooks, _forward_pre_hooks, _backward_hooks, … (and their *_with_kwargs companions)."""
    return {k: v for k, v in vars(module).items() if k.startswith("_") and "hooks" in k and isinstance(v, dict)}


class ModelGuard:
    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.tensors = {k: _tensor_mark(t) for k, t in model.state_dict(keep_vars=True).items()}
        self.grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
        self.modules = {n: m for n, m in model.named_modules()}
        self.training = {n: m.training for n, m in self.modules.items()}
        self.hooks = {n: {k: set(d) for k, d in _hook_dicts(m).items()} for n, m in self.modules.items()}
        self.forwards = {n: m.__dict__.get("forward") for n, m in self.modules.items()}

    def restore(self) -> list[str]:
        """Undo what can be undone; return a description of each difference that remains."""
        problems: list[str] = []
        now_modules = dict(self.model.named_modules())
        if set(now_modules) != set(self.modules) or any(now_modules[n] is not m for n, m in self.modules.items()
                                                        if n in now_modules):
            added = sorted(set(now_modules) - set(self.modules))[:3]
            removed = sorted(set(self.modules) - set(now_modules))[:3]
            problems.append(f"the module tree changed (added {added}, removed {removed})")
        for n, m in self.modules.items():
            if m.training != self.training[n]:
                m.training = self.training[n]
            for key, before in self.hooks[n].items():
                d = getattr(m, key, None)
                if isinstance(d, dict):
                    for extra in [h for h in d if h not in before]:
                        del d[extra]
            if m.__dict__.get("forward") is not self.forwards[n]:
                if self.forwards[n] is None:
                    del m.__dict__["forward"]
                else:
                    m.__dict__["forward"] = self.forwards[n]
        for n, p in self.model.named_parameters():
            if n in self.grad_flags and p.requires_grad != self.grad_flags[n] and p.is_leaf:
                p.requires_grad_(self.grad_flags[n])

        now = self.model.state_dict(keep_vars=True)
        changed = [k for k, mark in self.tensors.items() if k not in now or _tensor_mark(now[k]) != mark]
        added = [k for k in now if k not in self.tensors]
        if changed:
            problems.append(f"{len(changed)} tensors were replaced, moved or written to (e.g. {changed[:3]})")
        if added:
            problems.append(f"{len(added)} tensors were added (e.g. {added[:3]})")
        return problems
