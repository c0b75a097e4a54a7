"""Configs of the diffusers / transformers modules, read from an LDM state dict's shapes.

Nothing is fetched: channels, levels, ResBlocks per level, attention levels, context width,
linear vs conv projections, text-encoder depth/width and VAE channels all follow from tensor
shapes. Three things do not show in any shape: attention heads, GroupNorm groups and the
activation. For real checkpoints they are fixed by the version (SD1 UNet: 8 heads; SD2 UNet and
both text encoders: heads of 64 channels; 32 groups; SD1 quick_gelu, SD2 gelu).

Models that break those rules (the tiny test models) carry "architecture hints": small integer
tensors under a reserved key inside each component's prefix, e.g.
`model.diffusion_model.extensions_lib.num_heads`. `ldm_from_diffusers` writes them only when a
module differs from the standard; real checkpoints never have them. Without hints a non-standard
shape still loads, with the nearest valid value (the weights then load but compute differently).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch

from .bundle import SD2
from .errors import UnsupportedModelError
from .ldm_keys import UNetLayout, VaeLayout

HINT = "extensions_lib."           # reserved key segment; no LDM module is named like this
HEADS = "num_heads"                # UNet: one value per level; text encoder: one value
GROUPS = "norm_groups"             # UNet / VAE GroupNorm groups
HEAD_WIDTH = 64                    # SD2 UNet and CLIP text encoders
SD1_UNET_HEADS = 8
NORM_GROUPS = 32


def pop_hints(component: dict) -> dict[str, list[int]]:
    """Remove the hint entries from a component dict (prefix already stripped) and return them."""
    hints = {}
    for key in [k for k in component if k.startswith(HINT)]:
        t = component.pop(key)
        hints[key[len(HINT):]] = [int(x) for x in torch.as_tensor(t).reshape(-1).tolist()]
    return hints


def hint_tensor(values) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64)


# --------------------------------------------------------------------------- standard rules

def standard_unet_heads(version: str, channels) -> list[int]:
    if version == SD2:
        return [_heads(c, HEAD_WIDTH) for c in channels]
    return [SD1_UNET_HEADS if c % SD1_UNET_HEADS == 0 else _heads(c, SD1_UNET_HEADS) for c in channels]


def standard_te_heads(width: int) -> int:
    return _heads(width, HEAD_WIDTH)


def standard_groups(channels) -> int:
    g = NORM_GROUPS
    for c in channels:
        g = math.gcd(g, int(c))
    return g


def _heads(width: int, head_width: int) -> int:
    # a width that is not a multiple of the standard head width gets one head per gcd-wide slice
    return max(1, width // math.gcd(width, head_width)) if width % head_width else width // head_width


# -------------------------------------------------------------------------------- UNet

def unet_channels(unet: Mapping[str, torch.Tensor], layout: UNetLayout) -> list[int]:
    nres = layout.num_res_blocks
    return [int(unet[f"input_blocks.{1 + lv * (nres + 1)}.0.out_layers.3.weight"].shape[0])
            for lv in range(layout.levels)]


def unet_context_dim(unet: Mapping[str, torch.Tensor], layout: UNetLayout) -> int:
    key = "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    if key not in unet:
        raise UnsupportedModelError("UNet: the middle block has no cross-attention; not an SD1/SD2 UNet.")
    return int(unet[key].shape[1])


def unet_config(unet: Mapping[str, torch.Tensor], layout: UNetLayout, version: str,
                v_prediction: bool, hints: Optional[dict] = None) -> dict:
    """UNet2DConditionModel kwargs for an LDM-layout UNet dict (prefix removed, hints popped)."""
    hints = hints or {}
    nres = layout.num_res_blocks
    conv_in = unet["input_blocks.0.0.weight"]
    channels = unet_channels(unet, layout)
    depths = set()
    linear = set()
    for lv, attn in enumerate(layout.attention):
        if not attn:
            continue
        block = f"input_blocks.{1 + lv * (nres + 1)}.1."
        depths.add(len({k.split(".")[4] for k in unet if k.startswith(block + "transformer_blocks.")}))
        linear.add(unet[block + "proj_in.weight"].ndim == 2)
    depths.add(len({k.split(".")[3] for k in unet if k.startswith("middle_block.1.transformer_blocks.")}))
    linear.add(unet["middle_block.1.proj_in.weight"].ndim == 2)
    if len(depths) != 1 or len(linear) != 1:
        raise UnsupportedModelError(
            f"UNet: transformer depths {sorted(depths)} / projections differ between levels; "
            "SD1/SD2 use one transformer block with the same projection everywhere."
        )
    heads = hints.get(HEADS) or standard_unet_heads(version, channels)
    if len(heads) != layout.levels:
        raise UnsupportedModelError(f"UNet hint {HINT}{HEADS} has {len(heads)} values for {layout.levels} levels")
    groups = hints.get(GROUPS, [standard_groups(channels)])[0]
    sd2_v = version == SD2 and v_prediction
    return dict(
        sample_size=96 if sd2_v else 64,
        in_channels=int(conv_in.shape[1]),
        out_channels=int(unet["out.2.weight"].shape[0]),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(layout.attention)),
        block_out_channels=tuple(channels),
        layers_per_block=nres,
        cross_attention_dim=unet_context_dim(unet, layout),
        attention_head_dim=heads[0] if len(set(heads)) == 1 else list(heads),
        use_linear_projection=linear.pop(),
        transformer_layers_per_block=depths.pop(),
        norm_num_groups=groups,
        upcast_attention=sd2_v,          # as diffusers' SD2.x 768-v config: fp16 attention overflows otherwise
    )


def unet_hints(unet_module, version: str) -> dict[str, torch.Tensor]:
    """Hints needed to rebuild `unet_module` exactly from its LDM dict (empty for real SD shapes)."""
    cfg = unet_module.config
    channels = list(cfg.block_out_channels)
    heads = cfg.attention_head_dim
    heads = [heads] * len(channels) if isinstance(heads, int) else list(heads)
    out = {}
    if heads != standard_unet_heads(version, channels):
        out[HEADS] = hint_tensor(heads)
    if cfg.norm_num_groups != standard_groups(channels):
        out[GROUPS] = hint_tensor([cfg.norm_num_groups])
    return out


# -------------------------------------------------------------------------------- text encoder

def text_encoder_config(te: Mapping[str, torch.Tensor], version: str, tokenizer,
                        hints: Optional[dict] = None):
    """CLIPTextConfig for a CLIPTextModel-layout dict (already mapped, hints popped)."""
    from transformers import CLIPTextConfig

    hints = hints or {}
    vocab, width = te["text_model.embeddings.token_embedding.weight"].shape
    layers = len({k.split(".")[3] for k in te if k.startswith("text_model.encoder.layers.")})
    if layers == 0:
        raise UnsupportedModelError("Text encoder: no transformer layers found.")
    heads = hints.get(HEADS, [standard_te_heads(int(width))])[0]
    ids = _special_ids(tokenizer, int(vocab))
    return CLIPTextConfig(
        vocab_size=int(vocab),
        hidden_size=int(width),
        intermediate_size=int(te["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=int(heads),
        max_position_embeddings=int(te["text_model.embeddings.position_embedding.weight"].shape[0]),
        hidden_act="gelu" if version == SD2 else "quick_gelu",
        projection_dim=int(width),
        **ids,
    )


def _special_ids(tokenizer, vocab: int) -> dict:
    # CLIP's own layout: <|startoftext|> and <|endoftext|> are the last two ids
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    bos = vocab - 2 if bos is None else bos
    eos = vocab - 1 if eos is None else eos
    return dict(bos_token_id=int(bos), eos_token_id=int(eos), pad_token_id=int(eos if pad is None else pad))


def te_hints(te_module) -> dict[str, torch.Tensor]:
    cfg = te_module.config
    if cfg.num_attention_heads != standard_te_heads(cfg.hidden_size):
        return {HEADS: hint_tensor([cfg.num_attention_heads])}
    return {}


# -------------------------------------------------------------------------------------- VAE

def vae_config(vae: Mapping[str, torch.Tensor], layout: VaeLayout, version: str, v_prediction: bool,
               hints: Optional[dict] = None) -> dict:
    """AutoencoderKL kwargs for an LDM-layout VAE dict (prefix removed, hints popped)."""
    hints = hints or {}
    channels = [int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in range(layout.levels)]
    latent = int(vae["post_quant_conv.weight"].shape[0])
    if int(vae["encoder.conv_out.weight"].shape[0]) != 2 * latent:
        raise UnsupportedModelError("VAE: encoder output is not 2 x latent channels; not a KL VAE.")
    return dict(
        in_channels=int(vae["encoder.conv_in.weight"].shape[1]),
        out_channels=int(vae["decoder.conv_out.weight"].shape[0]),
        down_block_types=("DownEncoderBlock2D",) * layout.levels,
        up_block_types=("UpDecoderBlock2D",) * layout.levels,
        block_out_channels=tuple(channels),
        layers_per_block=layout.num_res_blocks,
        latent_channels=latent,
        norm_num_groups=hints.get(GROUPS, [standard_groups(channels)])[0],
        sample_size=768 if (version == SD2 and v_prediction) else 512,
        scaling_factor=0.18215,
    )


def vae_hints(vae_module) -> dict[str, torch.Tensor]:
    cfg = vae_module.config
    if cfg.norm_num_groups != standard_groups(cfg.block_out_channels):
        return {GROUPS: hint_tensor([cfg.norm_num_groups])}
    return {}
