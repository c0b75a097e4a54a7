"""Hold out part of the training images for validation: chosen with the seed, never trained on.

The choice depends only on the seed and the set of training files (their paths, sorted), so the
same dataset and seed hold out the same images in every run, process and resumed part of a run.
Regularization images are never held out: they are not what the validation loss should measure.
"""
from __future__ import annotations

import copy
import math
import random

from .dataset import TrainDataset
from .folders import DatasetError, DatasetScan

# the settings a TrainDataset is built with (its attributes of the same names)
_SETTINGS = ("resolution", "enable_buckets", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
             "bucket_no_upscale", "random_crop", "flip_aug", "shuffle_caption", "keep_tokens",
             "caption_dropout_rate", "caption_tag_dropout_rate", "batch_size", "seed")


def split_scan(scan: DatasetScan, fraction: float, seed: int) -> tuple[DatasetScan, DatasetScan]:
    """(training scan without the held-out images, scan of only the held-out images).

    At least one image is held out when fraction > 0, and at least one is left to train on.
    Each side keeps the subfolders (repeats, folder words) its images came from.
    """
    items = sorted((item for s in scan.train_subsets for item in s.items), key=lambda it: str(it.path))
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction {fraction}: must be above 0 and below 1")
    if len(items) < 2:
        raise DatasetError(f"data.validation_split = {fraction:g} needs at least 2 training images to hold one "
                           f"out; the dataset has {len(items)}: add images, or set data.validation_split to 0 "
                           "and use data.validation_dir")
    count = min(len(items) - 1, max(1, math.floor(len(items) * fraction + 0.5)))
    held = {str(it.path) for it in random.Random(f"{seed}/validation").sample(items, count)}
    return _keep(scan, lambda p: p not in held, keep_reg=True), _keep(scan, lambda p: p in held, keep_reg=False)


def _keep(scan: DatasetScan, wanted, *, keep_reg: bool) -> DatasetScan:
    subsets = []
    for subset in scan.subsets:
        if subset.is_reg and not keep_reg:
            continue
        twin = copy.copy(subset)
        twin.items = [copy.copy(it) for it in subset.items if subset.is_reg or wanted(str(it.path))]
        for item in twin.items:
            item.subset = twin
        if twin.items:
            subsets.append(twin)
    return DatasetScan(subsets, list(scan.problems) if keep_reg else [])


def once_each(scan: DatasetScan) -> DatasetScan:
    """The same images with 1 repeat each: a validation pass looks at every image once."""
    subsets = []
    for subset in scan.subsets:
        twin = copy.copy(subset)
        twin.repeats = 1
        twin.items = [copy.copy(it) for it in subset.items]
        for item in twin.items:
            item.subset = twin
        subsets.append(twin)
    return DatasetScan(subsets, list(scan.problems))


def dataset_like(dataset: TrainDataset, scan: DatasetScan, **overrides) -> TrainDataset:
    """A TrainDataset of `scan` built with `dataset`'s settings (some replaced by `overrides`); the
    latents `dataset` already cached for the same image and bucket are reused, not encoded again."""
    settings = {name: getattr(dataset, name) for name in _SETTINGS}
    settings.update(overrides)
    twin = TrainDataset(scan, **settings)
    # private on both sides: this module is the dataset's own helper
    known = {(e.item.path, e.bucket): i for i, e in enumerate(dataset._entries)}
    for i, entry in enumerate(twin._entries):
        j = known.get((entry.item.path, entry.bucket))
        if j is not None and j in dataset._latents:
            twin._latents[i] = dataset._latents[j]
            if j in dataset._latents_flipped:
                twin._latents_flipped[i] = dataset._latents_flipped[j]
    return twin
