"""The denoising objective: noise, timesteps, eps / v targets, noise offset, min-SNR, prior weight."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    if noise_offset:
        # a per-image, per-channel constant shift teaches the model to change overall brightness
        shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=latents.dtype)
        noise = noise + noise_offset * shift.to(latents.device)
    return noise


def sample_timesteps(batch: int, scheduler, generator: Optional[torch.Generator], device) -> torch.Tensor:
    n = scheduler.config.num_train_timesteps
    return torch.randint(0, n, (batch,), generator=generator).to(device)


def target_for(scheduler, latents, noise, timesteps) -> torch.Tensor:
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return ac / (1.0 - ac)


def denoising_loss(pred, target, *, scheduler, timesteps, min_snr_gamma: float = 0.0,
                   sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error per image, weighted by min-SNR and the per-image (prior) weight."""
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        s = snr(scheduler, timesteps)
        w = torch.clamp(s, max=min_snr_gamma)
        w = w / (s + 1) if scheduler.config.prediction_type == "v_prediction" else w / s
        loss = loss * w
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device)
    return loss.mean()
