"""Tiny SD-shaped models with random weights, built offline from configs.

Used by the demo, the tests and the benchmarks (which pass full SD1.5 sizes). The shapes follow the
real architectures (same block types, cross-attention, CLIP text encoder, KL VAE) so every code path
that runs on a real checkpoint runs here too, only smaller.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..export.atomic import atomic_write
from .bundle import SD1, SD2, ModelBundle, make_noise_scheduler


@dataclass(frozen=True)
class ModelSize:
    unet_channels: tuple = (32, 64)
    layers_per_block: int = 1
    attention_levels: tuple = (True, False)     # which UNet levels carry cross-attention
    head_dim: int = 8                            # SD2 style (num_head_channels); SD1 uses heads
    heads: int = 4                               # SD1 style (num_heads)
    context_dim: int = 32
    te_layers: int = 3
    te_heads: int = 4
    te_intermediate: int = 64
    vae_channels: tuple = (16, 32)
    vae_groups: int = 8
    max_tokens: int = 77


TINY = ModelSize()
# SD1.5's real sizes, for benchmarks (random weights, ~1.07 B params in all)
SD15 = ModelSize(
    unet_channels=(320, 640, 1280, 1280), layers_per_block=2,
    attention_levels=(True, True, True, False), heads=8, context_dim=768,
    te_layers=12, te_heads=12, te_intermediate=3072,
    vae_channels=(128, 256, 512, 512), vae_groups=32,
)


def write_char_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (with and without the
    end-of-word mark) and no merges: real CLIP tokenization rules, character-level tokens.
    CLIP's real vocabulary cannot be downloaded here; this is enough for every code path."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # written by rename: several processes (test workers, a data-parallel run) may share the folder,
    # and none may read a half-written vocabulary
    for name, text in (("vocab.json", json.dumps(vocab)), ("merges.txt", "#version: 0.2\n")):
        atomic_write(folder / name, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"),
                     overwrite=True)
    return folder


def load_tokenizer(folder: Path, version: str = SD1):
    from .tokenizer import clip_tokenizer

    return clip_tokenizer(folder, version, fast=False)


def build_unet(size: ModelSize = TINY, version: str = SD1, device="cpu"):
    from diffusers import UNet2DConditionModel

    down, up = [], []
    for with_attn in size.attention_levels:
        down.append("CrossAttnDownBlock2D" if with_attn else "DownBlock2D")
    for with_attn in reversed(size.attention_levels):
        up.append("CrossAttnUpBlock2D" if with_attn else "UpBlock2D")
    if version == SD2:
        heads = [c // size.head_dim for c in size.unet_channels]
        extra = dict(attention_head_dim=heads, use_linear_projection=True)
    else:
        extra = dict(attention_head_dim=size.heads)
    with torch.device(device):
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(size.unet_channels),
            layers_per_block=size.layers_per_block,
            cross_attention_dim=size.context_dim,
            norm_num_groups=min(32, size.unet_channels[0]),
            **extra,
        )


def build_text_encoder(size: ModelSize = TINY, version: str = SD1, vocab_size: int = 514, device="cpu"):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.context_dim,
        intermediate_size=size.te_intermediate,
        num_hidden_layers=size.te_layers,
        num_attention_heads=size.te_heads,
        max_position_embeddings=size.max_tokens,
        hidden_act="gelu" if version == SD2 else "quick_gelu",
        projection_dim=size.context_dim,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=0 if version == SD2 else vocab_size - 1,
    )
    with torch.device(device):
        return CLIPTextModel(cfg)


def build_vae(size: ModelSize = TINY, device="cpu"):
    from diffusers import AutoencoderKL

    n = len(size.vae_channels)
    with torch.device(device):
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(size.vae_channels),
            layers_per_block=1 if size is TINY else 2,
            latent_channels=4,
            norm_num_groups=size.vae_groups,
            sample_size=64,
        )


def trained_looking_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every affine LayerNorm / GroupNorm a random scale and shift (weight ~ 1 + 0.1·N(0, 1),
    bias ~ 0.1·N(0, 1), seeded), as a trained model has.

    Fresh norms (weight 1, bias 0) make outputs with mean exactly ~0: CLIP's final LayerNorm then
    gives text conditioning whose mean is ~0, and the WebUI's default "Original" emphasis, which
    rescales by the ratio of means, turns that into 0/0 = NaN. Meta tensors are left alone."""
    g = torch.Generator().manual_seed(int(seed))
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, norms):
                continue
            for name, base in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(m, name, None)
                if p is None or p.is_meta:
                    continue
                p.copy_((base + 0.1 * torch.randn(p.shape, generator=g)).to(p.dtype))
    return module


def build_tiny_bundle(
    tokenizer_dir: Path,
    size: ModelSize = TINY,
    version: str = SD1,
    v_prediction: bool = False,
    seed: int = 0,
    device="cpu",
) -> ModelBundle:
    """A bundle of freshly initialised modules (seeded, so two calls give equal weights)."""
    write_char_tokenizer(tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir, version)
    torch.manual_seed(seed)
    unet = build_unet(size, version, device)
    te = build_text_encoder(size, version, vocab_size=len(tok), device=device)
    vae = build_vae(size, device)
    for i, module in enumerate((unet, te, vae)):
        trained_looking_norms(module, seed=seed * 3 + i)
    bundle = ModelBundle(
        unet=unet, text_encoder=te, vae=vae, tokenizer=tok,
        noise_scheduler=make_noise_scheduler(v_prediction),
        version=version, v_prediction=v_prediction,
        model_name=f"tiny-{version}", vae_scale_factor=0.18215,
    )
    bundle.freeze()
    return bundle


def tiny_ldm_state_dict(tokenizer_dir: Path, size: ModelSize = TINY, version: str = SD1, seed: int = 0):
    """(LDM state dict, tokenizer) of a seeded random tiny model, laid out as a single-file
    checkpoint is, for tests and the demo. size=SD15 gives the full SD1.5 shapes."""
    from .ldm import ldm_from_diffusers

    bundle = build_tiny_bundle(Path(tokenizer_dir), size, version=version, seed=seed)
    sd = ldm_from_diffusers(bundle.unet, bundle.text_encoder, bundle.vae, version)
    return sd, bundle.tokenizer


def default_tokenizer_dir(cache: Optional[Path] = None) -> Path:
    import tempfile

    return Path(cache or tempfile.gettempdir()) / "extensions_lib-char-tokenizer"
