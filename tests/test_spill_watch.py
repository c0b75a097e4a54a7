"""The CUDA shared-memory spill warning: a step time that jumps while the card is nearly full warns once,
with the knobs; a slow step on a card with room, or noise, does not; the loop passes it on and goes on."""
from __future__ import annotations

import pytest
import torch

import extensions_lib.train.loop as loop
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train.events import Callbacks
from extensions_lib.train.session import run_training
from extensions_lib.train.spill import SpillWatch

from helpers import make_images, quick_config, tiny_bundle

SETTLED = [0.9, 0.5, 0.5, 0.40, 0.42, 0.41, 0.40, 0.43]     # warm-up (3) then settled (5)


def feed(watch: SpillWatch, times) -> list:
    return [m for m in (watch.observe(t) for t in times) if m]


def test_a_jump_with_a_full_card_warns_once_naming_the_knobs():
    watch = SpillWatch(lambda: 0.97)
    warnings = feed(watch, SETTLED + [1.3, 1.2, 1.4, 1.3, 1.25] + [1.3] * 20)
    assert len(warnings) == 1
    assert "3.2x slower (0.41 s -> 1.30 s)" in warnings[0] and "97% used" in warnings[0]
    for knob in ("train_batch_size", "data.resolution", "gradient_checkpointing", "adamw8bit",
                 "Prefer No Sysmem Fallback"):
        assert knob in warnings[0]


@pytest.mark.parametrize("used, times", [
    (0.5, SETTLED + [1.3] * 10),                                     # slow, but the card has room
    (0.97, SETTLED + [0.6] * 10),                                    # full, but only 1.5x
    (0.97, SETTLED + [0.4, 3.0, 0.4, 0.4, 3.0, 0.41, 0.4] * 2),      # single slow steps (a save, a hiccup)
    (None, SETTLED + [1.3] * 10),                                    # memory cannot be read
])
def test_no_warning_without_both_symptoms(used, times):
    assert feed(SpillWatch(lambda: used), times) == []


def test_only_cuda_devices_are_watched():
    assert SpillWatch.for_device(torch.device("cpu")) is None
    assert SpillWatch.for_device(torch.device("cuda", 0)) is not None


def test_the_loop_passes_the_warning_on_and_keeps_training(tmp_path, monkeypatch):
    class Slowing(SpillWatch):
        def observe(self, seconds):
            assert seconds > 0
            return super().observe(0.4 if len(self.times) < 8 else 1.5)

    monkeypatch.setattr(loop.SpillWatch, "for_device", classmethod(lambda cls, device: Slowing(lambda: 0.95)))
    make_images(tmp_path / "data" / "1_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", training__max_train_steps=16)
    seen = []

    class Rec(Callbacks):
        def on_warning(self, text):
            seen.append(text)

    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=Rec())
    assert result.steps == 16 and result.output_path.is_file()
    assert [w for w in seen if "spilling into shared system memory" in w] != []
    assert sum("spilling" in w for w in seen) == 1
