"""How the loop talks to its caller: callbacks out, commands in (polled once per step)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class StepInfo:
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    loss: float
    avg_loss: float
    lr: float
    it_per_s: float
    eta_s: float


@dataclass
class TrainResult:
    output_path: Optional[Path]
    steps: int
    epochs: int
    stopped: bool
    saved: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    prompt_usage: str = ""
    previews: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)   # [(step, validation loss)]


class Callbacks:
    """Subclass and override what you need; every hook is optional."""

    def on_start(self, info: dict) -> None: ...
    def on_status(self, text: str) -> None: ...

    def on_warning(self, text: str) -> None:
        """Something the user must know (a NaN preview, ...); the run goes on. By default shown as a
        status line, so a subscriber that only knows on_status still shows it."""
        self.on_status(f"Warning: {text}")

    def on_step(self, info: StepInfo) -> None: ...
    def on_sample(self, images: list, step: int) -> None: ...   # [(prompt, PIL.Image)]
    def on_validation(self, step: int, loss: float) -> None: ...   # validation loss after this step
    def on_saved(self, path: Path, final: bool) -> None: ...
    def on_end(self, result: TrainResult) -> None: ...


class MultiCallbacks(Callbacks):
    """Fans every event out to several subscribers (UI, console, WebUI progress)."""

    def __init__(self, *targets: Callbacks):
        self.targets = [t for t in targets if t is not None]

    def _each(self, hook: str, *args) -> None:
        for t in self.targets:
            getattr(t, hook)(*args)

    def on_start(self, info): self._each("on_start", info)
    def on_status(self, text): self._each("on_status", text)
    def on_warning(self, text): self._each("on_warning", text)
    def on_step(self, info): self._each("on_step", info)
    def on_sample(self, images, step): self._each("on_sample", images, step)
    def on_validation(self, step, loss): self._each("on_validation", step, loss)
    def on_saved(self, path, final): self._each("on_saved", path, final)
    def on_end(self, result): self._each("on_end", result)


class Commands:
    """Thread-safe requests from the UI/CLI; the loop polls them after every optimizer step."""

    def __init__(self):
        self._stop = threading.Event()
        self._sample = threading.Event()
        self._save = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def request_sample(self) -> None:
        self._sample.set()

    def request_save(self) -> None:
        self._save.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def take_sample(self) -> bool:
        hit = self._sample.is_set()
        self._sample.clear()
        return hit

    def take_save(self) -> bool:
        hit = self._save.is_set()
        self._save.clear()
        return hit


class NonFiniteLossError(RuntimeError):
    """Training met a NaN/inf loss, gradient or weight and stopped before it could reach the weights or a
    file. A user-fixable failure: the message names the step, the likely causes and their settings."""

    def __init__(self, step: int, what: str, *, learning_rates: str, mixed_precision: str,
                 detail: str = "nothing from this step was applied or saved"):
        self.step, self.what = step, what
        super().__init__(
            f"training stopped at step {step}: the {what} became NaN/inf; {detail}. Files saved before it "
            f"are kept; no final file was written.\n"
            f"Likely causes and fixes:\n"
            f"  - the learning rate is too high ({learning_rates}): lower it (e.g. 10x) and keep "
            f"training.max_grad_norm on;\n"
            f"  - fp16 overflow (training.mixed_precision = {mixed_precision}): use bf16, or no (fp32);\n"
            f"  - NaN latents from a VAE run in fp16: use an fp32 VAE (the WebUI's --no-half-vae) and "
            f"re-cache the latents (delete the latent cache, or turn data.cache_latents off).")
