"""Host: where the base model comes from and where results go.

The WebUI host (a1111.py) lends the checkpoint it already holds; the standalone host (standalone.py)
loads a file. The session only talks to this interface.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..config import TrainConfig
from ..model.bundle import ModelBundle

KINDS = ("lora", "embedding", "hypernetwork")


class HostError(RuntimeError):
    """A refusal before any work: no model, unsupported model, busy, … (message says the fix)."""


class Host:
    name = "host"
    # True for a host that loads the checkpoint named in cfg.model (the form then shows those fields);
    # the WebUI host trains on the model the WebUI has loaded
    model_from_config = False

    def check_ready(self, cfg: TrainConfig) -> None:
        """Raise HostError if training cannot start now (checked before any model work)."""

    @contextmanager
    def borrow_bundle(self, cfg: TrainConfig) -> Iterator[ModelBundle]:
        """Yield a frozen bundle for the run; on exit (success, error or stop) give everything back
        exactly as it was."""
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold whatever lock keeps other GPU work away while training."""
        yield

    def output_dir(self, kind: str, cfg: TrainConfig) -> Path:
        raise NotImplementedError

    def refresh(self, kind: str, path: Path) -> None:
        """Make a freshly written file usable at once (reload the host's lists)."""

    def work_dir(self) -> Optional[Path]:
        """Where working files (the on-disk latent cache) go; None = inside the dataset folder."""
        return None

    def clip_skip(self, cfg: TrainConfig) -> int:
        return cfg.model.clip_skip or 1

    def device(self):
        import torch

        return torch.device("cpu")

    def describe(self) -> dict:
        return {}

    def progress(self, commands=None) -> Optional[object]:
        """Callbacks that mirror progress into the host's own progress display, if any; a host with
        its own stop button (the WebUI's Interrupt) turns it into `commands.request_stop()`."""
        return None
