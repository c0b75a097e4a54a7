"""Preview images during training: DDIM sampling with classifier-free guidance on the bundle.

Uses the same text conditioning as training (chunks, clip skip) so previews show what the WebUI
will show. Seeded, so previews at different steps compare.

A preview whose latents or decoded pixels hold NaN/inf is not a picture (it would be saved as black):
sample_images gives None in its place and the caller warns with `non_finite_message`.

A prompt line may carry its own settings the way sd-scripts' prompt files do, after the prompt:
`a photo of sks dog --n blurry --w 512 --h 768 --s 30 --l 6.5 --d 42` (negative prompt, width,
height, steps, CFG scale, seed). An option is `--name` after a space; `--` inside a word ("well--lit")
is prompt text. What a line leaves out comes from the sample.* settings; a line's own seed is used
as is, otherwise prompt i gets sample.seed + i.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..config import SampleConfig
from .text import encode, tokenize

# an option starts with "--" at the start of the line or after whitespace, its name runs to the next space
_OPTION = re.compile(r"(?:^|(?<=\s))--(\S+)")
# sd-scripts options that pick things the Trainer does not have (a sampler, ControlNet, flow models...)
_SD_SCRIPTS_ONLY = {"ss": "the sampler; previews always sample with DDIM", "g": "a second guidance scale; use --l",
                    "cn": "a ControlNet image", "ctr": "CFG truncation", "rcfg": "CFG renormalisation",
                    "fs": "a flow shift"}


class PromptLineError(ValueError):
    """A preview prompt line whose options cannot be used; the message names the line and the option."""


@dataclass(frozen=True)
class PromptSettings:
    prompt: str
    negative: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    seed: int


def _limits(name: str) -> tuple:
    meta = next(f.metadata for f in fields(SampleConfig) if f.name == name)
    return meta["min"], meta["max"]


def _int_option(option: str, value: str, field: str, multiple: int = 1) -> int:
    low, high = _limits(field)
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--{option} expects a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"--{option} {number} is outside {low}..{high}")
    if number % multiple:
        down = max(low, number - number % multiple)
        raise ValueError(f"--{option} {number} is not a multiple of {multiple}; use e.g. --{option} {down}")
    return number


def _float_option(option: str, value: str, field: str) -> float:
    low, high = _limits(field)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--{option} expects a number like 7.5, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"--{option} expects a finite number like 7.5, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"--{option} {value} is outside {low}..{high}")
    return number


# option name -> (PromptSettings field, reader of the option's text)
_READERS = {
    "n": ("negative", lambda v: v),
    "w": ("width", lambda v: _int_option("w", v, "width", 8)),
    "h": ("height", lambda v: _int_option("h", v, "height", 8)),
    "s": ("steps", lambda v: _int_option("s", v, "steps")),
    "l": ("cfg_scale", lambda v: _float_option("l", v, "cfg_scale")),
    "d": ("seed", lambda v: _int_option("d", v, "seed")),
}
_EXAMPLES = {"w": "--w 512", "h": "--h 512", "s": "--s 20", "l": "--l 7.5", "d": "--d 42"}


def _shown(line: str) -> str:
    return repr(line if len(line) <= 120 else line[:117] + "...")


def parse_prompt_line(line: str, *, negative: str = "", width: int = 512, height: int = 512, steps: int = 20,
                      cfg_scale: float = 7.0, seed: int = 1234) -> PromptSettings:
    """The prompt of a sample.prompts line and its settings: the line's own --n/--w/--h/--s/--l/--d,
    the keyword arguments (the sample.* values) for the rest. PromptLineError for a bad line."""
    def refuse(why: str) -> PromptLineError:
        return PromptLineError(f"sample.prompts line {_shown(line)}: {why}")

    matches = list(_OPTION.finditer(line))
    prompt = line[:matches[0].start()] if matches else line
    values = {}
    for m, after in zip(matches, matches[1:] + [None]):
        option = m.group(1).lower()
        text = line[m.end():after.start() if after else len(line)].strip()
        if option in _SD_SCRIPTS_ONLY:
            raise refuse(f"--{option} ({_SD_SCRIPTS_ONLY[option]}) is an sd-scripts option that Trainer "
                         "previews do not use; remove it")
        if option not in _READERS:
            raise refuse(f"unknown option --{m.group(1)}; the options are --n (negative prompt), --w (width), "
                         "--h (height), --s (steps), --l (CFG scale), --d (seed); to keep '--' as prompt text, "
                         "put no space before it")
        field, read = _READERS[option]
        if field in values:
            raise refuse(f"--{option} is given twice; keep one")
        if not text and option != "n":     # "--n" alone: no negative prompt for this line
            raise refuse(f"--{option} needs a value, e.g. {_EXAMPLES[option]}")
        try:
            values[field] = read(text)
        except ValueError as e:
            raise refuse(str(e)) from None
    prompt = prompt.strip()
    if not prompt:
        raise refuse("the prompt before the options is empty; write the prompt first, then the options")
    settings = dict(negative=negative, width=width, height=height, steps=steps, cfg_scale=cfg_scale, seed=seed)
    settings.update(values)
    return PromptSettings(prompt=prompt, **settings)


def check_prompt_line(line: str) -> None:
    """Raise PromptLineError when a sample.prompts line's options are unusable (for the config check,
    so a bad line is refused before training starts rather than at the first preview)."""
    parse_prompt_line(line)


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
