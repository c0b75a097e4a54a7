"""TrainDataset: a scanned dataset turned into deterministic, bucketed batches per epoch.

An epoch holds every training image `repeats` times and, when regularization images exist, as
many regularization samples (sd-scripts' prior-preservation balance). Samples of one bucket are
shuffled and cut into batches, then the batches are shuffled; everything random derives from
(seed, epoch), so every process of a multi-GPU run computes the same epoch and takes its own
slice of it.

Latents can be cached once (in memory, optionally on disk); otherwise batches carry pixels that
are loaded only when a batch is taken from the epoch's sequence.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union, overload

import numpy as np
import torch
from PIL import Image

from .buckets import Size, assign_bucket, center_crop_offset, make_buckets, resize_and_crop
from .captions import process_caption, tag_counts
from .folders import DatasetError, DatasetScan, ImageItem, usable_subsets
from .images import load_rgb, probe_size
from .latent_cache import LatentDiskCache

# The VAE downsamples by 8, so every training size must be a multiple of 8.
_VAE_FACTOR = 8

Encoder = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass
class Batch:
    latents: Optional[torch.Tensor]     # (B, C, h, w) float32 CPU, when latents are cached
    pixels: Optional[torch.Tensor]      # (B, 3, H, W) float32 in [-1, 1], when they are not
    captions: list[str]
    is_reg: torch.Tensor                # (B,) bool
    paths: list[Path]
    bucket: Size = (0, 0)               # (width, height) in pixels
    index: int = 0                      # position of this batch in the whole (unsharded) epoch
    crop_offsets: list[tuple[int, int]] = field(default_factory=list)  # (left, top) after resize
    flipped: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class _Entry:
    item: ImageItem
    bucket: Size
    is_reg: bool
    size: Size       # (width, height) as scanned, after EXIF rotation


@dataclass(frozen=True)
class _PlannedBatch:
    index: int                     # position in the whole (unsharded) epoch
    entries: tuple[int, ...]       # indices into TrainDataset._entries
    captions: tuple[str, ...]
    flips: tuple[bool, ...]


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> (3, H, W) float32 in [-1, 1], the VAE's input range."""
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value}: must be between 0 and 1")


class EpochBatches(Sequence[Batch]):
    """The batches of one epoch (one shard of it), built when indexed: pixels are only read for
    the batch being taken. Supports len(), indexing, slicing (e.g. to resume mid-epoch) and
    iteration."""

    def __init__(self, dataset: "TrainDataset", epoch: int, plans: list[_PlannedBatch]):
        self._dataset = dataset
        self._epoch = epoch
        self._plans = plans

    def __len__(self) -> int:
        return len(self._plans)

    @overload
    def __getitem__(self, index: int) -> Batch: ...

    @overload
    def __getitem__(self, index: slice) -> "EpochBatches": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return EpochBatches(self._dataset, self._epoch, self._plans[index])
        return self._dataset._materialize(self._plans[index], self._epoch)

    def __iter__(self) -> Iterator[Batch]:
        for plan in self._plans:
            yield self._dataset._materialize(plan, self._epoch)


class TrainDataset:
    def __init__(self, scan: DatasetScan, *, resolution: int = 512, enable_buckets: bool = False,
                 min_bucket_reso: int = 256, max_bucket_reso: int = 1024, bucket_reso_steps: int = 64,
                 bucket_no_upscale: bool = False, random_crop: bool = False, flip_aug: bool = False,
                 shuffle_caption: bool = False, keep_tokens: int = 0, caption_dropout_rate: float = 0.0,
                 caption_tag_dropout_rate: float = 0.0, batch_size: int = 1, seed: int = 0):
        if resolution < _VAE_FACTOR or resolution % _VAE_FACTOR:
            raise ValueError(f"resolution={resolution}: must be a positive multiple of {_VAE_FACTOR}")
        if bucket_reso_steps <= 0 or bucket_reso_steps % _VAE_FACTOR:
            raise ValueError(f"bucket_reso_steps={bucket_reso_steps}: must be a positive multiple of "
                             f"{_VAE_FACTOR} (64 is usual)")
        if enable_buckets and not bucket_no_upscale and not 0 < min_bucket_reso <= max_bucket_reso:
            raise ValueError(f"min_bucket_reso={min_bucket_reso}, max_bucket_reso={max_bucket_reso}: "
                             "need 0 < min <= max")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        if keep_tokens < 0:
            raise ValueError(f"keep_tokens={keep_tokens}: must be 0 or more")
        _check_rate("caption_dropout_rate", caption_dropout_rate)
        _check_rate("caption_tag_dropout_rate", caption_tag_dropout_rate)

        self.scan = scan
        self.resolution = resolution
        self.enable_buckets = enable_buckets
        self.min_bucket_reso = min_bucket_reso
        self.max_bucket_reso = max_bucket_reso
        self.bucket_reso_steps = bucket_reso_steps
        self.bucket_no_upscale = bucket_no_upscale
        self.random_crop = random_crop
        self.flip_aug = flip_aug
        self.shuffle_caption = shuffle_caption
        self.keep_tokens = keep_tokens
        self.caption_dropout_rate = caption_dropout_rate
        self.caption_tag_dropout_rate = caption_tag_dropout_rate
        self.batch_size = batch_size
        self.seed = seed

        self._subsets = usable_subsets(scan.subsets)
        self._entries = self._assign_buckets()
        if not any(not e.is_reg for e in self._entries):
            raise DatasetError("the dataset has no usable training image, so training refuses to start; "
                               "scan the training folder again and fix the problems it lists")
        self._train_samples, self._reg_samples = self._static_samples()
        self._latents: dict[int, torch.Tensor] = {}
        self._latents_flipped: dict[int, torch.Tensor] = {}

    # ----- construction -------------------------------------------------------------------

    def _assign_buckets(self) -> list[_Entry]:
        buckets = None
        if self.enable_buckets and not self.bucket_no_upscale:
            buckets = make_buckets(self.resolution, self.min_bucket_reso, self.max_bucket_reso,
                                   self.bucket_reso_steps)
        entries = []
        for subset in self._subsets:
            for item in subset.items:
                width, height = item.size or probe_size(item.path)
                bucket = assign_bucket(width, height, resolution=self.resolution, min_reso=self.min_bucket_reso,
                                       max_reso=self.max_bucket_reso, step=self.bucket_reso_steps,
                                       enabled=self.enable_buckets, no_upscale=self.bucket_no_upscale,
                                       buckets=buckets)
                entries.append(_Entry(item, bucket, subset.is_reg, (width, height)))
        return entries

    def _static_samples(self) -> tuple[list[int], list[int]]:
        """Entry indices of one epoch: each training image `repeats` times, and regularization
        samples repeated or truncated to the same count.

        The reg selection is fixed for the whole run (seeded, not per epoch) so every epoch has
        the same batches per bucket and hence the same length.
        """
        train, reg_pool = [], []
        for idx, entry in enumerate(self._entries):
            (reg_pool if entry.is_reg else train).extend([idx] * entry.item.subset.repeats)
        if not reg_pool:
            return train, []
        # Shuffled before truncation so that a large reg set is not cut alphabetically.
        random.Random(f"{self.seed}/reg").shuffle(reg_pool)
        reg = [reg_pool[i % len(reg_pool)] for i in range(len(train))]
        return train, reg

    # ----- facts about the dataset --------------------------------------------------------

    @property
    def can_cache_latents(self) -> bool:
        """False with random_crop: every epoch crops differently, so pixels must be encoded live."""
        return not self.random_crop

    @property
    def latents_cached(self) -> bool:
        return bool(self._entries) and len(self._latents) == len(self._entries)

    @property
    def captions_are_static(self) -> bool:
        """True when every sample's caption is its file's caption, so text-encoder outputs can be cached."""
        return not self.shuffle_caption and self.caption_dropout_rate == 0 and self.caption_tag_dropout_rate == 0

    @property
    def num_train_samples(self) -> int:
        return len(self._train_samples)

    @property
    def num_reg_samples(self) -> int:
        """Regularization samples per epoch (equal to the training samples when any reg image exists)."""
        return len(self._reg_samples)

    def bucket_counts(self) -> dict[Size, int]:
        """Samples per bucket in one epoch, for the log."""
        counts: dict[Size, int] = defaultdict(int)
        for idx in self._train_samples + self._reg_samples:
            counts[self._entries[idx].bucket] += 1
        return dict(sorted(counts.items()))

    def __len__(self) -> int:
        """Batches per epoch with a single process."""
        return sum(math.ceil(n / self.batch_size) for n in self.bucket_counts().values())

    def steps_per_epoch(self, num_shards: int = 1) -> int:
        return len(self) // num_shards

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """{subset folder name: {tag: count}}, kohya's ss_tag_frequency."""
        result: dict[str, dict[str, int]] = {}
        for subset in self._subsets:
            counts = result.setdefault(subset.folder_name, {})
            for tag, n in tag_counts([item.caption for item in subset.items]).items():
                counts[tag] = counts.get(tag, 0) + n
        return result

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """{subset folder name: {"n_repeats", "img_count"}}, kohya's ss_dataset_dirs."""
        return {s.folder_name: {"n_repeats": s.repeats, "img_count": len(s.items)} for s in self._subsets}

    # ----- latents --------------------------------------------------------------------------

    def _pixels(self, idx: int, *, crop_rng: Optional[random.Random] = None
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        entry = self._entries[idx]
        img = load_rgb(entry.item.path)
        img, offset = resize_and_crop(img, entry.bucket, random_crop=crop_rng is not None, rng=crop_rng)
        return pil_to_tensor(img), offset

    @staticmethod
    def _encode(encode: Encoder, pixels: torch.Tensor, paths: list[Path]) -> torch.Tensor:
        with torch.no_grad():
            latents = encode(pixels)
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] != pixels.shape[0]:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"the encoder returned {shape} for {pixels.shape[0]} image(s) "
                             f"(first: {paths[0]}); it must return latents shaped (B, C, H/8, W/8)")
        return latents.detach().to("cpu", torch.float32)

    def cache_latents(self, encode: Encoder, *, batch_size: int = 1, disk_dir: Optional[Union[str, Path]] = None,
                      progress: Optional[Progress] = None, cache_key: str = "") -> None:
        """Encode every image once (and its mirror image with flip_aug) and keep the latents.

        `encode` gets (B, 3, H, W) float32 CPU pixels in [-1, 1] (same bucket per call, at most
        `batch_size` images) and returns (B, C, H/8, W/8); it moves data to its own device.
        With disk_dir, latents are also stored there and read back by later runs; pass a
        cache_key identifying the VAE so another VAE's latents are never reused.
        progress(done, total) is called after each step.
        """
        if not self.can_cache_latents:
            raise RuntimeError("latents cannot be cached with random_crop on (each epoch crops anew); "
                               "check can_cache_latents and train from Batch.pixels instead")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        disk = LatentDiskCache(disk_dir, cache_key) if disk_dir is not None else None
        total, done = len(self._entries), 0

        pending: dict[Size, list[int]] = defaultdict(list)
        for idx, entry in enumerate(self._entries):
            if idx in self._latents and (idx in self._latents_flipped or not self.flip_aug):
                done += 1
                continue
            hit = disk.load(entry.item.path, entry.bucket, self.flip_aug) if disk else None
            if hit is None:
                pending[entry.bucket].append(idx)
                continue
            self._latents[idx] = hit[0]
            if self.flip_aug:
                self._latents_flipped[idx] = hit[1]
            done += 1
        if progress:
            progress(done, total)

        for bucket in sorted(pending):
            indices = pending[bucket]
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                paths = [self._entries[i].item.path for i in chunk]
                pixels = torch.stack([self._pixels(i)[0] for i in chunk])
                latents = self._encode(encode, pixels, paths)
                flipped = self._encode(encode, pixels.flip(-1), paths) if self.flip_aug else None
                for j, idx in enumerate(chunk):
                    # clone(): do not keep the whole batch's storage alive through a view.
                    self._latents[idx] = latents[j].clone()
                    if flipped is not None:
                        self._latents_flipped[idx] = flipped[j].clone()
                    if disk:
                        disk.save(paths[j], bucket, self._latents[idx], self._latents_flipped.get(idx))
                done += len(chunk)
                if progress:
                    progress(done, total)

    # ----- epochs ----------------------------------------------------------------------------

    def _plan_epoch(self, epoch: int) -> list[_PlannedBatch]:
        rng = random.Random(f"{self.seed}/epoch/{epoch}")
        by_bucket: dict[Size, list[int]] = defaultdict(list)
        for idx in self._train_samples + self._reg_samples:
            by_bucket[self._entries[idx].bucket].append(idx)

        groups: list[list[int]] = []
        for bucket in sorted(by_bucket):
            samples = by_bucket[bucket]
            rng.shuffle(samples)
            groups += [samples[i:i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        rng.shuffle(groups)

        plans = []
        for index, group in enumerate(groups):
            captions = tuple(
                process_caption(self._entries[i].item.caption, shuffle=self.shuffle_caption,
                                keep_tokens=self.keep_tokens, tag_dropout_rate=self.caption_tag_dropout_rate,
                                caption_dropout_rate=self.caption_dropout_rate, rng=rng)
                for i in group)
            flips = tuple(self.flip_aug and rng.random() < 0.5 for _ in group)
            plans.append(_PlannedBatch(index, tuple(group), captions, flips))
        return plans

    def epoch_batches(self, epoch: int, *, num_shards: int = 1, shard_index: int = 0) -> EpochBatches:
        """This process's batches of `epoch`, in training order.

        Deterministic for (seed, epoch). With num_shards > 1 the epoch's batches are dealt out
        round-robin and every shard gets the same count (the remainder is dropped), so processes
        stay in lockstep.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index={shard_index}, num_shards={num_shards}: need 0 <= index < shards")
        plans = self._plan_epoch(epoch)
        per_shard = len(plans) // num_shards
        if per_shard == 0:
            raise DatasetError(f"one epoch has only {len(plans)} batch(es) for {num_shards} processes; "
                               "lower the batch size, raise the folder repeats or use fewer GPUs")
        return EpochBatches(self, epoch, plans[shard_index::num_shards][:per_shard])

    def _materialize(self, plan: _PlannedBatch, epoch: int) -> Batch:
        entries = [self._entries[i] for i in plan.entries]
        bucket = entries[0].bucket
        latents = pixels = None
        offsets: list[tuple[int, int]] = []
        if self.latents_cached:
            latents = torch.stack([
                (self._latents_flipped if flip else self._latents)[i] for i, flip in zip(plan.entries, plan.flips)])
            offsets = [center_crop_offset(e.size, e.bucket) for e in entries]
        else:
            images = []
            for j, (idx, flip) in enumerate(zip(plan.entries, plan.flips)):
                crop_rng = random.Random(f"{self.seed}/crop/{epoch}/{plan.index}/{j}") if self.random_crop else None
                tensor, offset = self._pixels(idx, crop_rng=crop_rng)
                images.append(tensor.flip(-1) if flip else tensor)
                offsets.append(offset)
            pixels = torch.stack(images)
        return Batch(
            latents=latents,
            pixels=pixels,
            captions=list(plan.captions),
            is_reg=torch.tensor([e.is_reg for e in entries], dtype=torch.bool),
            paths=[e.item.path for e in entries],
            bucket=bucket,
            index=plan.index,
            crop_offsets=offsets,
            flipped=list(plan.flips),
        )
