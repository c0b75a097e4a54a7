"""Validation loss: held-out images (a seeded split, or a folder of their own), never trained on,
measured deterministically without touching the training's random state; reported to callbacks,
the job status, the loss plot and the saved file; and sample.sample_at_first."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from extensions_lib.data.dataset import TrainDataset
from extensions_lib.data.folders import scan_dataset
from extensions_lib.data.split import dataset_like, once_each, split_scan
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train import loop
from extensions_lib.train.evaluate import evaluate_loss
from extensions_lib.train.events import Callbacks
from extensions_lib.train.session import run_training
from extensions_lib.ui.job import TrainingJob
from extensions_lib.ui.plot import VALIDATION, loss_plot

from helpers import assert_refused, make_images, quick_config, tiny_bundle


def _paths(scan) -> set[Path]:
    return {item.path for s in scan.subsets for item in s.items}


def test_the_split_is_seeded_disjoint_and_keeps_one_image_each_side(tmp_path):
    make_images(tmp_path / "d" / "3_sks", n=8)
    make_images(tmp_path / "r" / "1_dog", n=2, seed=5)
    scan = scan_dataset(tmp_path / "d", tmp_path / "r")
    train, held = split_scan(scan, 0.25, seed=7)
    assert len(_paths(held)) == 2 and len(_paths(train)) == 8      # 6 training + 2 regularization images
    assert not _paths(held) & _paths(train)
    assert not held.reg_subsets and len(train.reg_subsets) == 1    # regularization images are never held out
    assert train.train_subsets[0].repeats == 3                    # the subfolder's facts travel along
    assert _paths(split_scan(scan, 0.25, seed=7)[1]) == _paths(held)
    assert any(_paths(split_scan(scan, 0.25, seed=s)[1]) != _paths(held) for s in range(1, 6))
    assert len(_paths(split_scan(scan, 0.01, seed=7)[1])) == 1    # at least one held out
    assert [len(_paths(part)) for part in split_scan(scan, 0.5, seed=7)] == [4 + 2, 4]
    assert once_each(held).subsets[0].repeats == 1
    assert scan.subsets[0].repeats == 3 and len(scan.subsets[0].items) == 8   # the input is not changed


def test_bad_validation_options_are_refused_naming_the_field(tmp_path):
    cfg = quick_config(tmp_path / "d", tmp_path / "o")
    assert_refused(cfg, "data.validation_split", 0.6)
    cfg = quick_config(tmp_path / "d", tmp_path / "o")
    assert_refused(cfg, "data.validation_dir", str(tmp_path / "d"))
    cfg = quick_config(tmp_path / "d", tmp_path / "o")
    assert_refused(cfg, "training.validate_every_n_steps", -1)


class _Seen:
    """Records what the run trains on, and its trained network's loss on its training images
    (measured like the validation loss, before the method is detached)."""

    def __init__(self, monkeypatch):
        self.batches: list[tuple[object, list[Path]]] = []
        self.trainer = None
        self.train_loss = self.again = None
        seen = self
        materialize, run = TrainDataset._materialize, loop.Trainer.run

        def recording(ds, plan, epoch):
            batch = materialize(ds, plan, epoch)
            seen.batches.append((ds, list(batch.paths)))
            return batch

        def running(trainer):
            seen.trainer = trainer
            result = run(trainer)
            once = dataset_like(trainer.dataset, once_each(trainer.dataset.scan), flip_aug=False,
                                shuffle_caption=False)
            seen.train_loss = evaluate_loss(trainer.bundle, once, method=trainer.method,
                                            seed=trainer.cfg.training.seed, clip_skip=trainer.clip_skip)
            if trainer.validation:
                seen.again = trainer.validation.measure(trainer.method, result.steps)
            return result

        monkeypatch.setattr(TrainDataset, "_materialize", recording)
        monkeypatch.setattr(loop.Trainer, "run", running)

    def trained_paths(self) -> set[Path]:
        val = self.trainer.validation.dataset
        return {p for ds, paths in self.batches if ds is not val for p in paths}


class _Rec(Callbacks):
    def __init__(self):
        self.val: list[tuple[int, float]] = []

    def on_validation(self, step, loss):
        self.val.append((step, loss))


def _distinct_images(folder: Path, n: int) -> None:
    """n pictures with nothing in common (random 2x2 colour blocks) and their own captions: what a
    network memorises (which colours go with which caption) shows up as a lower loss on these than on
    others of the same kind."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        blocks = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((64, 64), Image.NEAREST).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"picture {i}", encoding="utf-8")


def test_held_out_images_are_never_trained_on_and_their_loss_is_higher(tmp_path, monkeypatch):
    _distinct_images(tmp_path / "d" / "4_sks", 8)
    cfg = quick_config(tmp_path / "d", tmp_path / "o", data__validation_split=0.25, training__max_train_epochs=6,
                       training__learning_rate=5e-3, network__dim=8, network__alpha=8)
    bundle = tiny_bundle()
    # the tiny VAE's latents are ~0.05 wide, so every image is nearly the same to the UNet; scaled to
    # about unit width (as a real VAE's with its 0.18215) what the network learns of an image shows
    bundle.vae_scale_factor = 4.0
    seen, rec = _Seen(monkeypatch), _Rec()
    result = run_training(cfg, StandaloneHost(bundle), callbacks=rec)

    held = seen.trainer.validation.paths
    assert len(held) == 2
    trained = seen.trained_paths()
    assert len(trained) == 6 and not trained & held
    # once per epoch (24 samples, batch 1: 24 steps each), the last one at the end
    assert [s for s, _ in rec.val] == [24 * e for e in range(1, 7)]
    assert result.val_losses == rec.val
    unseen, seen_loss = rec.val[-1][1], seen.train_loss
    assert math.isfinite(unseen) and math.isfinite(seen_loss)
    assert rec.val[-1][1] < rec.val[0][1]                       # it learnt what all of them share
    assert seen_loss < unseen, (seen_loss, unseen)              # and what only the seen ones show
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
    assert float(meta["ss_validation_loss"]) == pytest.approx(unseen, rel=1e-6)
    # the file describes what it was trained on: 6 images x 4 repeats, their captions only
    assert meta["ss_num_train_images"] == "24"
    counted = json.loads(meta["ss_tag_frequency"])["4_sks"]
    assert sum(counted.values()) == 6 and {f"picture {i}" for i in range(8)} - set(counted) \
        == {f"picture {p.stem[3:]}" for p in held}


def _rng_heavy(tmp_path: Path, out: str, **overrides):
    """Every random source of the training in use: dropout, noise offset, caption shuffling, flips."""
    data = tmp_path / "d"
    if not data.exists():
        make_images(data / "2_sks", n=4)
    cfg = quick_config(data, tmp_path / out, training__noise_offset=0.05, data__shuffle_caption=True,
                       data__flip_aug=True, output__save_precision="fp32", training__max_train_epochs=2,
                       **overrides)
    cfg.network.dropout = 0.1
    return cfg


def test_training_is_bitwise_the_same_with_validation_on_and_off(tmp_path):
    off = run_training(_rng_heavy(tmp_path, "off"), StandaloneHost(tiny_bundle()))
    make_images(tmp_path / "v" / "1_val", n=2, seed=9)
    rec = _Rec()
    on = run_training(_rng_heavy(tmp_path, "on", data__validation_dir=str(tmp_path / "v"),
                                 training__validate_every_n_steps=3),
                      StandaloneHost(tiny_bundle()), callbacks=rec)
    a, b = load_file(str(off.output_path)), load_file(str(on.output_path))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [s for s, _ in rec.val] == [3, 6, 9, 12, 15, 16]   # every 3 steps, and at the end
    assert all(math.isfinite(v) for _, v in rec.val)
    with safe_open(str(on.output_path), "pt") as f:
        assert f.metadata()["ss_validation_loss"] == str(rec.val[-1][1])
    with safe_open(str(off.output_path), "pt") as f:
        assert "ss_validation_loss" not in f.metadata()


def test_the_same_weights_give_the_same_validation_loss(tmp_path, monkeypatch):
    """Deterministic: measured twice at the end (no training in between) it is the same number."""
    make_images(tmp_path / "d" / "2_sks", n=4)
    cfg = quick_config(tmp_path / "d", tmp_path / "o", data__validation_split=0.25, training__max_train_steps=2)
    seen = _Seen(monkeypatch)
    result = run_training(cfg, StandaloneHost(tiny_bundle()))
    assert [s for s, _ in result.val_losses] == [2]
    assert seen.again == result.val_losses[-1][1]


def test_the_job_status_and_the_plot_show_the_validation_loss(tmp_path):
    make_images(tmp_path / "d" / "2_sks", n=4)
    cfg = quick_config(tmp_path / "d", tmp_path / "o", data__validation_split=0.25,
                       training__validate_every_n_steps=2, training__max_train_steps=4)
    job = TrainingJob()
    job.start(cfg, StandaloneHost(tiny_bundle()))
    assert job.wait(300)
    s = job.status()
    assert s["state"] == "done", s["error"]
    assert [step for step, _ in s["val_losses"]] == [2, 4]
    assert all(isinstance(v, float) and math.isfinite(v) for _, v in s["val_losses"])
    assert job.status(losses=False)["val_losses"] == []
    with_val = loss_plot(s["losses"], s["total_steps"], val_losses=s["val_losses"])
    without = loss_plot(s["losses"], s["total_steps"])
    blue = lambda img: sum(1 for px in img.getdata() if px == VALIDATION)    # noqa: E731
    assert blue(with_val) > 0 and blue(without) == 0


def test_sample_at_first_makes_a_preview_before_the_first_step(tmp_path):
    make_images(tmp_path / "d" / "1_sks", n=2)
    got: list[int] = []

    class Rec(Callbacks):
        def on_sample(self, images, step):
            got.append(step)

    for first in (False, True):
        got.clear()
        cfg = quick_config(tmp_path / "d", tmp_path / f"o{first}", training__max_train_steps=2,
                           sample__every_n_epochs=0, sample__sample_at_first=first)
        cfg.sample.prompts = ["a photo of sks"]
        cfg.sample.width = cfg.sample.height = 64
        cfg.sample.steps = 2
        run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=Rec())
        assert got == ([0, 2] if first else [2])


def test_a_validation_folder_without_images_is_refused_before_the_model(tmp_path):
    from extensions_lib.data.folders import DatasetError
    from extensions_lib.hosts.standalone import StandaloneHost
    from extensions_lib.train.session import run_training
    from helpers import make_images, quick_config

    class NoModel(StandaloneHost):
        def check_ready(self, cfg):
            pass

        def borrow_bundle(self, cfg):
            raise AssertionError("the model was borrowed")

    make_images(tmp_path / "data" / "1_sks")
    (tmp_path / "empty" / "1_x").mkdir(parents=True)
    cfg = quick_config(tmp_path / "data", tmp_path / "out")
    cfg.data.validation_dir = str(tmp_path / "empty")
    with pytest.raises(DatasetError, match="validation_dir"):
        run_training(cfg, NoModel())
    assert not (tmp_path / "out").exists()


def test_keep_best_validation_keeps_the_weights_of_the_lowest_validation_loss(tmp_path):
    """<name>-best holds the weights of the step with the lowest validation loss: measured again from
    the file, the loss is that minimum; it is refused without validation and when a file of that name
    exists (the user's), and a resumed run goes on from the best loss it had."""
    from safetensors.torch import load_file

    from extensions_lib.config import ConfigError

    _distinct_images(tmp_path / "d" / "2_sks", 6)
    cfg = quick_config(tmp_path / "d", tmp_path / "o", data__validation_split=0.34, training__max_train_steps=12,
                       training__validate_every_n_steps=2, training__learning_rate=2e-2,
                       output__keep_best_validation=True, output__save_precision="fp32")
    rec = _Rec()
    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=rec)
    best_step, best = min(rec.val, key=lambda sv: (sv[1], sv[0]))
    improvements = [s for i, (s, v) in enumerate(rec.val) if v < min([math.inf] + [w for _, w in rec.val[:i]])]
    assert len(improvements) >= 2, rec.val        # the file was written, then replaced
    path = tmp_path / "o" / "test_lora-best.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert float(meta["ss_validation_loss"]) == pytest.approx(best, rel=1e-6)
    assert meta["ss_steps"] == str(best_step)
    assert result.saved.count(path) == 1
    if best_step == result.steps:                 # the final weights were the best: the same tensors
        final = load_file(str(result.output_path))
        assert all(torch.equal(final[k], v) for k, v in load_file(str(path)).items())

    off = quick_config(tmp_path / "d", tmp_path / "o2", output__keep_best_validation=True)
    with pytest.raises(ConfigError, match="output.keep_best_validation"):
        run_training(off, StandaloneHost(tiny_bundle()))
    with pytest.raises(Exception, match="test_lora-best"):          # the file is there now: not replaced
        run_training(cfg, StandaloneHost(tiny_bundle()))
