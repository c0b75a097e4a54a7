"""Keep bitsandbytes unloaded until an 8-bit optimizer asks for it.

accelerate 0.21 (which transformers 4.30 and diffusers 0.30 import), diffusers 0.31, peft and
lycoris-lora import bitsandbytes while they are first imported, whenever it is installed. Importing
it loads its native library, and the CPU builds print on every run even when AdamW is chosen:
0.50.2 "Failed to load CPU gemm_4bit_forward from kernels-community ...", 0.45.3 a full traceback
where its library needs a newer libstdc++ (GLIBCXX_3.4.32). None of those libraries needs it unless
a model is quantised with it, which a Trainer run never does.

So while one of those packages runs its top-level module for the first time, bitsandbytes is marked
absent (None in sys.modules: Python's own "this import must fail" marker). Each of them looks for it
with importlib.util.find_spec or a guarded import and records it as unavailable, then goes on. The
marker is removed as soon as that module has run, so an 8-bit optimizer (or anyone else) imports
bitsandbytes normally afterwards. Where bitsandbytes is already loaded, nothing changes: a WebUI that
imported it at start-up keeps its own state.
"""
from __future__ import annotations

import importlib.abc
import sys
import threading

# top-level packages that import bitsandbytes from their own import-time code (or compute
# "is bitsandbytes available" then, which later decides their imports)
LIBRARIES = frozenset({"accelerate", "diffusers", "transformers", "peft", "lycoris"})

_lock = threading.Lock()
_depth = 0        # gated package imports running (they nest: transformers imports accelerate)
_marked = False   # whether the None marker in sys.modules is ours


def _enter() -> None:
    global _depth, _marked
    with _lock:
        if _depth == 0 and "bitsandbytes" not in sys.modules:
            sys.modules["bitsandbytes"] = None
            _marked = True
        _depth += 1


def _leave() -> None:
    global _depth, _marked
    with _lock:
        _depth -= 1
        if _depth == 0 and _marked:
            _marked = False
            if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
                del sys.modules["bitsandbytes"]


class _GatedLoader(importlib.abc.Loader):
    """Runs the real loader with bitsandbytes marked absent, then hands the module its real loader."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        _enter()
        try:
            self._inner.exec_module(module)
        finally:
            _leave()
            module.__loader__ = self._inner
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._inner

    def __getattr__(self, name):  # get_source, get_resource_reader, ... while the import runs
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    trainer_bitsandbytes_gate = True  # found again by install() after a reload of this module

    def find_spec(self, name, path=None, target=None):
        if name not in LIBRARIES or name in sys.modules or "bitsandbytes" in sys.modules:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or getattr(finder, "trainer_bitsandbytes_gate", False) or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _GatedLoader(spec.loader)
        return spec


def install() -> None:
    """Put the gate in front of the import system once per process."""
    if not any(getattr(f, "trainer_bitsandbytes_gate", False) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
