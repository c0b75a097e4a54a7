"""Mean denoising loss at fixed noise and timesteps: the honest before/after number.

Training loss is noisy (random timesteps); this evaluates every training image at the same
timesteps with the same noise, so base vs trained compares like with like.
"""
from __future__ import annotations

from typing import Optional

import torch

from .objective import denoising_loss, target_for
from .text import encode, tokenize

DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


@torch.no_grad()
def evaluate_loss(bundle, dataset, *, method=None, seed: int = 0, timesteps=DEFAULT_TIMESTEPS,
                  clip_skip: int = 1, max_token_length: int = 75,
                  autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Average loss over every (image, timestep) of epoch 0's batches (latents must be cached).
    Each batch's noise comes from its own generator seeded by (seed, batch, timestep): the same
    number every time for the same weights, and no random state of the caller is drawn from."""
    unet, sched = bundle.unet, bundle.noise_scheduler
    device = next(unet.parameters()).device
    if method is not None:
        method.train_mode(False)
    total, count = 0.0, 0
    for batch_index, batch in enumerate(dataset.epoch_batches(0)):
        latents = batch.latents.to(device)
        captions = [method.caption(c) if method is not None else c for c in batch.captions]
        ctx = encode(bundle.text_encoder, tokenize(bundle.tokenizer, captions, max_token_length), clip_skip)
        for t in timesteps:
            g = torch.Generator().manual_seed(seed * 100003 + batch_index * 1009 + t)
            noise = torch.randn(latents.shape, generator=g).to(device)
            ts = torch.full((latents.shape[0],), t, dtype=torch.long, device=device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                pred = unet(sched.add_noise(latents, noise, ts), ts, ctx.to(device)).sample
            total += float(denoising_loss(pred.float(), target_for(sched, latents, noise, ts), scheduler=sched,
                                          timesteps=ts)) * latents.shape[0]
            count += latents.shape[0]
    return total / max(count, 1)
