"""Console progress for the CLI (tqdm), main process only."""
from __future__ import annotations

from .events import Callbacks, StepInfo


class ConsoleProgress(Callbacks):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_start(self, info: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        print(f"training {info['trainable_params']:,} parameters for {info['total_steps']} steps "
              f"({info['epochs']} epochs of {info['steps_per_epoch']})")
        self.bar = tqdm(total=info["total_steps"], unit="step", dynamic_ncols=True)

    def on_status(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(text)

    def on_step(self, info: StepInfo) -> None:
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(epoch=f"{info.epoch}/{info.total_epochs}", loss=f"{info.avg_loss:.4f}",
                                 lr=f"{info.lr:.2e}")

    def on_saved(self, path, final: bool) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(f"saved {path}")

    def on_end(self, result) -> None:
        if self.bar:
            self.bar.close()
