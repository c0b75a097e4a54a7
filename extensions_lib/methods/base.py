"""The contract every trainable add-on (LoRA family, embedding, hypernetwork) follows.

The training loop only talks to this interface: it never knows which method it trains.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..model.bundle import ModelBundle


@dataclass
class SaveInfo:
    """Facts about the run that go into a file's metadata."""
    step: int
    epoch: int
    final: bool
    started_at: float
    finished_at: float | None = None
    extra: dict = field(default_factory=dict)   # dataset facts: tag frequency, dirs, image counts


class Method(ABC):
    """One thing that learns. Lifecycle: attach -> param_groups -> (train) -> save* -> detach."""

    kind: str = ""            # output folder kind: "lora" | "embedding" | "hypernetwork"
    file_suffix: str = ".safetensors"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.bundle: ModelBundle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @abstractmethod
    def attach(self, bundle: ModelBundle) -> None:
        """Add trainable pieces to the (frozen) bundle. Base weights are never modified."""

    @abstractmethod
    def detach(self) -> None:
        """Remove everything attach added; the bundle must be as it was before attach."""

    @abstractmethod
    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups: dicts with params, lr and a name."""

    # -- what the loop needs to know ---------------------------------------------------------
    @property
    def trains_text_encoder(self) -> bool:
        """True when gradients must flow through the text encoder (no text-output caching)."""
        return False

    def caption(self, caption: str) -> str:
        """Hook to rewrite a training caption (embeddings insert their word)."""
        return caption

    def train_mode(self, training: bool) -> None:
        """Switch dropout etc. of the method's own modules."""

    def adapter_modules(self) -> list[torch.nn.Module]:
        """The method's own modules that run inside the model's forward (for the CPU fast paths)."""
        return []

    def set_enabled(self, enabled: bool) -> None:
        """Turn the method's effect off/on without detaching (base vs trained comparisons)."""

    # -- output ------------------------------------------------------------------------------
    @abstractmethod
    def save(self, path: Path, info: SaveInfo, *, overwrite: bool) -> Path:
        """Write the learned state to `path` atomically (never a half-written file)."""

    def file_path(self, folder: Path, name: str, *, epoch: int | None = None, step: int | None = None,
                  best: bool = False) -> Path:
        """Where a save goes: `name.ext` for the final file, sd-scripts' names for intermediate ones,
        `name-best.ext` for the lowest validation loss."""
        from ..export.naming import output_path

        return Path(output_path(folder, name, epoch=epoch, step=step, best=best, ext=self.file_suffix))

    @abstractmethod
    def prompt_usage(self, name: str) -> str:
        """What the user types in a prompt to use the result, e.g. <lora:name:0.8>."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.param_groups() for p in g["params"]]


def make_method(cfg: TrainConfig) -> Method:
    method = cfg.network.method
    if method in ("lora", "locon", "loha", "lokr"):
        from .lora import LoraMethod

        return LoraMethod(cfg)
    if method == "embedding":
        from .embedding import EmbeddingMethod

        return EmbeddingMethod(cfg)
    if method == "hypernetwork":
        from .hypernetwork import HypernetworkMethod

        return HypernetworkMethod(cfg)
    raise ValueError(f"network.method = {method!r}: unknown method")
