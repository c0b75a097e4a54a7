"""ModelBundle: the diffusers view of one Stable Diffusion checkpoint that training works on.

Every base weight in a bundle is frozen and, when built from an in-memory state dict, is the very
tensor the caller holds (see model/ldm.py). Methods attach trainable pieces to it and must leave it
as they found it when they detach.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

SD1 = "sd1"
SD2 = "sd2"

# kohya's ss_base_model_version values and modelspec architectures, per (version, v-prediction)
BASE_MODEL_VERSION = {
    (SD1, False): "sd_v1",
    (SD1, True): "sd_v1_v",
    (SD2, False): "sd_v2",
    (SD2, True): "sd_v2_v",
}
MODELSPEC_ARCH = {
    (SD1, False): "stable-diffusion-v1",
    (SD1, True): "stable-diffusion-v1",
    (SD2, False): "stable-diffusion-v2-512",
    (SD2, True): "stable-diffusion-v2-768-v",
}


@dataclass
class ModelBundle:
    unet: Any                   # diffusers UNet2DConditionModel
    text_encoder: Any           # transformers CLIPTextModel (SD1: OpenAI CLIP-L, SD2: OpenCLIP-H layout)
    vae: Any                    # diffusers AutoencoderKL
    tokenizer: Any              # transformers CLIPTokenizer(Fast)
    noise_scheduler: Any        # diffusers DDPMScheduler with the SD training schedule
    version: str = SD1          # SD1 | SD2
    v_prediction: bool = False
    vae_scale_factor: float = 0.18215
    model_name: str = ""        # file name / title of the checkpoint, for metadata
    model_hash: Optional[str] = None      # short (legacy) hash if known
    model_sha256: Optional[str] = None
    vae_name: Optional[str] = None
    extra: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return "v_prediction" if self.v_prediction else "epsilon"

    @property
    def base_model_version(self) -> str:
        return BASE_MODEL_VERSION[(self.version, self.v_prediction)]

    @property
    def modelspec_architecture(self) -> str:
        return MODELSPEC_ARCH[(self.version, self.v_prediction)]

    @property
    def context_dim(self) -> int:
        return int(self.text_encoder.config.hidden_size)

    def modules(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder, "vae": self.vae}

    def freeze(self) -> None:
        """Base weights never train: methods add their own parameters."""
        for m in self.modules().values():
            m.requires_grad_(False)
            m.eval()

    @property
    def vae_device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def encode_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Cached latents of [-1, 1] pixels: the VAE distribution's mean (deterministic), scaled, as
        float32 on the CPU."""
        vae = self.vae
        p = next(vae.parameters())
        out = vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mean
        return out.float().cpu() * self.vae_scale_factor

    def to(self, device=None, dtype=None) -> "ModelBundle":
        for m in self.modules().values():
            m.to(device=device, dtype=dtype)
        return self


def make_noise_scheduler(v_prediction: bool = False):
    """The DDPM schedule every SD1/SD2 checkpoint was trained with (scaled-linear betas)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def snapshot(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """Copy of every base tensor (parameters and buffers), for bit-identity checks in tests."""
    out = {}
    for prefix, module in bundle.modules().items():
        for k, v in module.state_dict(keep_vars=True).items():
            out[f"{prefix}.{k}"] = v.detach().clone()
    return out
