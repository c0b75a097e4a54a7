"""Host: where the base model comes from and where results go.

The WebUI host (a1111.py) lends the checkpoint it already holds; the standalone host (standalone.py)
loads a file. The session only talks to this interface.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from ..config import TrainConfig
from ..model.bundle import ModelBundle

if TYPE_CHECKING:
    from PIL import Image

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

    # -- preparing a dataset (captions, crops, class images) -----------------------------------------
    def captioners(self) -> dict[str, str]:
        """'blip', 'deepbooru', 'wd14' -> '' when usable here, else the reason (shown in the UI)."""
        return {name: f"{name}: {PREPARE_UNSUPPORTED}" for name in CAPTIONERS}

    @contextmanager
    def captioner(self, name: str) -> Iterator[Callable[["Image.Image"], str]]:
        """Load the named captioner, yield image -> caption text, unload it afterwards.
        HostError with the reason when it is not usable here."""
        raise HostError(self.captioners().get(name) or f"unknown captioner {name!r}; expected one of {CAPTIONERS}")
        yield  # pragma: no cover

    def focal_crop(self) -> Optional[Callable[["Image.Image", int, int], "Image.Image"]]:
        """image, width, height -> a crop of exactly that size around the subject, or None where the
        host has no such crop (the caller then crops the centre)."""
        return None

    @contextmanager
    def prepare_job(self, label: str, total: int) -> Iterator["PrepareProgress"]:
        """Run one prepare step of `total` units as a job of the host (its lock, progress and stop)."""
        yield PrepareProgress(label, total)

    def image_generation_refusal(self) -> str:
        """'' where generate_images works here, else why not (checked before a preparation starts)."""
        return f"class images: {PREPARE_UNSUPPORTED}"

    def generate_images(self, requests: list["ImageRequest"], progress: "PrepareProgress") -> Iterator["Image.Image"]:
        """One txt2img image per request with the host's loaded model; advances `progress` once per
        image itself and stops between images when progress.stopped(). Call inside prepare_job."""
        raise HostError(f"class images: {PREPARE_UNSUPPORTED}")


CAPTIONERS = ("blip", "deepbooru", "wd14")
PREPARE_UNSUPPORTED = "this host cannot do it"


@dataclass
class ImageRequest:
    """One txt2img image (a class / regularisation image)."""
    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    sampler_name: str = "Euler a"


class PrepareProgress:
    """Given to the caller inside Host.prepare_job: count units done, ask whether to stop.

    This plain one only counts; the WebUI host's subclass also shows the count in the WebUI's
    progress bar and reads its Interrupt button."""

    def __init__(self, label: str = "", total: int = 0):
        self.label = label
        self.total = int(total)
        self.done = 0
        self.text = ""
        self._stop = False

    def advance(self, text: str = "") -> None:
        """One unit done (`text`: what it was, e.g. the file name)."""
        self.done += 1
        self.text = text

    def set_total(self, total: int) -> None:
        """The number of units, once known (e.g. after the images are made)."""
        self.total = int(total)

    def stopped(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        self._stop = True
