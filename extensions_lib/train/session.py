"""One training run from a config, on any host: the single entry point of the CLI, tab and REST API.

Order matters: everything that can be refused (config, host state, dataset, output file) is checked
before the model is touched, so a bad input never costs a model load or leaves anything behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..config import ConfigError, TrainConfig
from ..data.dataset import TrainDataset
from ..data.folders import scan_dataset
from ..export.atomic import OutputExistsError
from ..export.naming import output_path
from ..hosts.base import Host
from ..methods.base import make_method
from .events import Callbacks, Commands, TrainResult
from .loop import Dist, Trainer


def build_dataset(cfg: TrainConfig, scan) -> TrainDataset:
    d = cfg.data
    return TrainDataset(
        scan, resolution=d.resolution, enable_buckets=d.enable_buckets, min_bucket_reso=d.min_bucket_reso,
        max_bucket_reso=d.max_bucket_reso, bucket_reso_steps=d.bucket_reso_steps,
        bucket_no_upscale=d.bucket_no_upscale, random_crop=d.random_crop, flip_aug=d.flip_aug,
        shuffle_caption=d.shuffle_caption, keep_tokens=d.keep_tokens, caption_dropout_rate=d.caption_dropout_rate,
        caption_tag_dropout_rate=d.caption_tag_dropout_rate, batch_size=cfg.training.train_batch_size,
        seed=cfg.training.seed,
    )


def scan(cfg: TrainConfig):
    d = cfg.data
    return scan_dataset(Path(d.train_dir), Path(d.reg_dir) if d.reg_dir else None,
                        caption_extension=d.caption_extension)


def cache_latents(dataset: TrainDataset, bundle, cfg: TrainConfig, callbacks: Callbacks) -> None:
    if not (cfg.data.cache_latents and dataset.can_cache_latents):
        return
    vae = bundle.vae
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        # the distribution's mean: deterministic, and what a cached latent should be
        out = vae.encode(pixels.to(device, dtype)).latent_dist.mean
        return out.float().cpu() * bundle.vae_scale_factor

    disk = Path(cfg.data.train_dir) / ".latent_cache" if cfg.data.cache_latents_to_disk else None
    callbacks.on_status("Caching latents…")
    # the disk cache must never hand latents of another model/VAE to this one
    key = f"{bundle.model_name}|{bundle.model_sha256 or bundle.model_hash}|{bundle.vae_name}"
    dataset.cache_latents(encode, batch_size=max(1, cfg.training.train_batch_size), disk_dir=disk, cache_key=key)


def run_training(cfg: TrainConfig, host: Host, *, callbacks: Optional[Callbacks] = None,
                 commands: Optional[Commands] = None, dist: Optional[Dist] = None) -> TrainResult:
    callbacks = callbacks or Callbacks()
    dist = dist or Dist()
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    host.check_ready(cfg)
    data_scan = scan(cfg)
    method = make_method(cfg)
    out_dir = host.output_dir(method.kind, cfg)
    final_path = Path(output_path(out_dir, cfg.output_name, ext=method.file_suffix))
    if final_path.exists() and not cfg.output.overwrite:
        raise OutputExistsError(final_path)

    with host.exclusive(), host.borrow_bundle(cfg) as bundle:
        callbacks.on_status("Preparing dataset…")
        dataset = build_dataset(cfg, data_scan)
        method.attach(bundle)
        try:
            cache_latents(dataset, bundle, cfg, callbacks)
            extra = {
                # kohya counts images x repeats here
                "num_train_images": dataset.num_train_samples,
                "num_reg_images": dataset.num_reg_samples,
                "tag_frequency": dataset.tag_frequency(),
                "dataset_dirs": dataset.dataset_dirs(),
            }
            trainer = Trainer(cfg, bundle, method, dataset, output_dir=out_dir, callbacks=callbacks,
                              commands=commands, dist=dist, clip_skip=host.clip_skip(cfg), save_extra=extra)
            result = trainer.run()
        finally:
            method.detach()
    if dist.is_main and result.output_path is not None:
        host.refresh(method.kind, result.output_path)
    return result
