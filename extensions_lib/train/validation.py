"""Validation loss: the fixed-noise, fixed-timestep denoising loss (evaluate.py) on images the run
never trains on, either held out of the training folder (data.validation_split) or a folder of their
own (data.validation_dir, same <repeats>_<name> layout).

It is measured without gradients and inside torch.random.fork_rng, and its noise comes from its own
seeded generators: a run with validation trains bit for bit like one without it (on the same
training images), and a resumed run still goes on where it left off.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from ..config import TrainConfig
from ..data.dataset import TrainDataset
from ..data.folders import DatasetError, DatasetScan, scan_dataset
from ..data.split import dataset_like, once_each, split_scan
from .evaluate import evaluate_loss


def validation_scans(cfg: TrainConfig, train_scan: DatasetScan) -> tuple[DatasetScan, Optional[DatasetScan]]:
    """(the images to train on, the validation images or None). Raises DatasetError naming the
    option when the split or the validation folder gives no image."""
    d = cfg.data
    held: list = []
    if d.validation_split > 0:
        train_scan, out = split_scan(train_scan, d.validation_split, cfg.training.seed)
        held += out.subsets
    if d.validation_dir.strip():
        try:
            own = scan_dataset(Path(d.validation_dir.strip()), caption_extension=d.caption_extension or ".txt")
        except DatasetError as e:
            raise DatasetError(f"data.validation_dir: {e}") from None
        held += own.train_subsets
    if not held:
        return train_scan, None
    return train_scan, once_each(DatasetScan(held))


def fixed_step(cfg: TrainConfig, step: int, *, epoch_end: bool) -> bool:
    """Whether the loss is measured after this optimizer step (validate_every_n_steps, else at each
    epoch's end)."""
    every = cfg.training.validate_every_n_steps
    return bool(step % every == 0) if every else epoch_end


@contextmanager
def untouched_rng(device: torch.device) -> Iterator[None]:
    """Every random generator the training draws from is as it was afterwards."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        yield


class Validation:
    """The held-out images as a dataset with cached latents, and the losses measured on them."""

    def __init__(self, cfg: TrainConfig, bundle, dataset: TrainDataset, held: DatasetScan, *, clip_skip: int = 1,
                 autocast_dtype: Optional[torch.dtype] = None):
        """`dataset`: what the run trains on (its settings are copied); `held`: the validation images
        (validation_scans' second half, chosen once per run by the session)."""
        self.cfg, self.bundle, self.clip_skip, self.autocast = cfg, bundle, clip_skip, autocast_dtype
        # no augmentation: the same images, crops and captions every time
        self.dataset = dataset_like(dataset, held, random_crop=False, flip_aug=False, shuffle_caption=False,
                                    caption_dropout_rate=0.0, caption_tag_dropout_rate=0.0)
        self.losses: list[tuple[int, float]] = []

    @property
    def num_images(self) -> int:
        return self.dataset.num_train_samples

    @property
    def paths(self) -> set[Path]:
        return {item.path for s in self.dataset.scan.subsets for item in s.items}

    def cache_latents(self) -> None:
        """Encode the validation images the training did not already cache (the distribution's mean:
        deterministic, like the training's cache)."""
        with untouched_rng(self.bundle.vae_device), torch.no_grad():
            self.dataset.cache_latents(self.bundle.encode_latents, batch_size=self.dataset.batch_size)

    def measure(self, method, step: int) -> float:
        """The validation loss now (the method is back in training mode afterwards)."""
        device = next(self.bundle.unet.parameters()).device
        with untouched_rng(device):
            try:
                loss = evaluate_loss(self.bundle, self.dataset, method=method, seed=self.cfg.training.seed,
                                     clip_skip=self.clip_skip, max_token_length=self.cfg.data.max_token_length,
                                     autocast_dtype=self.autocast)
            finally:
                method.train_mode(True)
        self.losses.append((step, loss))
        return loss

    @property
    def last(self) -> Optional[float]:
        """The latest finite validation loss, for the saved file's metadata."""
        for _, loss in reversed(self.losses):
            if math.isfinite(loss):
                return loss
        return None
