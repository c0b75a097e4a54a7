"""Preview images during training: DDIM sampling with classifier-free guidance on the bundle.

Uses the same text conditioning as training (chunks, clip skip) so previews show what the WebUI
will show. Seeded, so previews at different steps compare.

A preview whose latents or decoded pixels hold NaN/inf is not a picture (it would be saved as black):
sample_images gives None in its place and the caller warns with `non_finite_message`.

A prompt line may carry its own settings (sd-scripts' --n --w --h --s --l --d): see
config/prompt_line.py.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..config.prompt_line import parse_prompt_line
from .text import encode, tokenize

@torch.no_grad()
def sample_images(bundle, prompts: list[str], *, negative: str = "", steps: int = 20, cfg_scale: float = 7.0,
                  width: int = 512, height: int = 512, seed: int = 1234, clip_skip: int = 1,
                  max_token_length: int = 75, autocast_dtype=None,
                  problems: Optional[list] = None) -> list[Optional[Image.Image]]:
    """One image per prompt line (its own --n/--w/--h/--s/--l/--d settings over the keyword arguments:
    parse_prompt_line); None where the result is not finite (then `problems`, if given, gets
    (prompt index, "latents" | "decoded image")). Every line is read before any sampling, so a bad
    line raises PromptLineError before time is spent."""
    from diffusers import DDIMScheduler

    lines = [parse_prompt_line(line, negative=negative, width=width, height=height, steps=steps,
                               cfg_scale=cfg_scale, seed=seed + i) for i, line in enumerate(prompts)]
    unet, vae = bundle.unet, bundle.vae
    device = next(unet.parameters()).device
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    images = []
    for i, p in enumerate(lines):
        # a fresh scheduler per prompt: the number of steps may differ from line to line
        sched = DDIMScheduler.from_config(bundle.noise_scheduler.config)
        sched.config.clip_sample = False
        sched.set_timesteps(p.steps)
        uncond = encode(bundle.text_encoder, tokenize(bundle.tokenizer, [p.negative], max_token_length), clip_skip)
        cond = encode(bundle.text_encoder, tokenize(bundle.tokenizer, [p.prompt], max_token_length), clip_skip)
        ctx = torch.cat([uncond, cond]).to(device)
        g = torch.Generator().manual_seed(p.seed)
        shape = (1, vae.config.latent_channels, p.height // down, p.width // down)
        latents = torch.randn(shape, generator=g).to(device) * sched.init_noise_sigma
        ctx_dtype = next(unet.parameters()).dtype
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            for t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([latents] * 2), t)
                pred = unet(inp.to(ctx_dtype), t, ctx.to(ctx_dtype)).sample.float()
                pu, pc = pred.chunk(2)
                latents = sched.step(pu + p.cfg_scale * (pc - pu), t, latents).prev_sample
            if not torch.isfinite(latents).all():
                images.append(None)
                if problems is not None:
                    problems.append((i, "latents"))
                continue
            x = vae.decode((latents / bundle.vae_scale_factor).to(next(vae.parameters()).dtype)).sample
        if not torch.isfinite(x).all():
            images.append(None)
            if problems is not None:
                problems.append((i, "decoded image"))
            continue
        arr = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        images.append(Image.fromarray(np.ascontiguousarray(arr)))
    return images


def non_finite_message(prompt: str, where: str, step: int) -> str:
    """The warning for a preview that came out NaN/inf, naming the likely causes and their fixes."""
    return (f"preview '{prompt}' at step {step}: the {where} contain NaN/inf, so no picture was saved. "
            "Likely causes: the learning rate is too high (the network diverged: lower it, or keep "
            "max_grad_norm on); fp16 overflow (set mixed precision to bf16, or no = fp32); the VAE "
            "running in fp16 (use an fp32 VAE: the WebUI's --no-half-vae).")
