"""Key mapping between the LDM layout (single-file checkpoints, the WebUI's modules) and the
diffusers / transformers layout, as pure functions on dicts.

Both directions come from the same table of module prefixes, so a round trip is exact by
construction. Tensors are never copied: values are the input tensors, or views of them where the
two layouts store a weight in a different shape (VAE attention 1x1 convs vs linears, OpenCLIP's
fused q/k/v projection). The one exception is the diffusers -> LDM direction of OpenCLIP, which
has to concatenate q/k/v; that direction only serves tests, demos and benchmarks.

All functions here take component dicts whose LDM prefix ("model.diffusion_model." ...) has
already been removed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .errors import UnsupportedModelError

Tensor = torch.Tensor

# LDM prefixes of the components inside a full SD1/SD2 checkpoint
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."        # SD1: OpenAI CLIP-L (HF layout inside)
OPENCLIP_PREFIX = "cond_stage_model.model."          # SD2: OpenCLIP ViT-H text tower

# Kinds of blocks: how the part of a key after the block prefix is renamed.
_PLAIN = "plain"          # same inner names in both layouts (convs, transformers)
_UNET_RES = "unet_res"    # ldm ResBlock -> diffusers ResnetBlock2D
_VAE_RES = "vae_res"      # ldm ResnetBlock -> diffusers ResnetBlock2D
_VAE_ATTN = "vae_attn"    # ldm AttnBlock (1x1 convs) -> diffusers Attention (linears)

_RENAMES: dict[str, dict[str, str]] = {
    _PLAIN: {},
    _UNET_RES: {
        "in_layers.0": "norm1",
        "in_layers.2": "conv1",
        "emb_layers.1": "time_emb_proj",
        "out_layers.0": "norm2",
        "out_layers.3": "conv2",
        "skip_connection": "conv_shortcut",
    },
    _VAE_RES: {"nin_shortcut": "conv_shortcut"},
    _VAE_ATTN: {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
}
_INVERSE = {kind: {v: k for k, v in table.items()} for kind, table in _RENAMES.items()}

_MAX_PREFIX_PARTS = 6     # "encoder.down_blocks.0.downsamplers.0.conv." is the deepest prefix


@dataclass(frozen=True)
class UNetLayout:
    attention: tuple           # per resolution level: does it carry cross-attention transformers
    num_res_blocks: int        # ResBlocks per down level (up levels have one more)

    @property
    def levels(self) -> int:
        return len(self.attention)


@dataclass(frozen=True)
class VaeLayout:
    levels: int
    num_res_blocks: int        # per encoder level (decoder levels have one more)


# ----------------------------------------------------------------------------------------- UNet

def unet_layout_from_ldm(unet: Mapping[str, Tensor]) -> UNetLayout:
    """Levels, ResBlocks per level and attention levels, read from LDM key names."""
    ids = sorted({int(k.split(".")[1]) for k in unet if k.startswith("input_blocks.")})
    if not ids or ids != list(range(len(ids))) or "input_blocks.0.0.weight" not in unet:
        raise UnsupportedModelError(
            "UNet (model.diffusion_model.*): input_blocks are missing or not numbered 0..N; "
            "this is not an SD1/SD2 UNet."
        )
    levels: list[list[int]] = [[]]
    for i in ids[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:      # a Downsample closes a level
            levels.append([])
        else:
            levels[-1].append(i)
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts:
        raise UnsupportedModelError(
            f"UNet: levels have different numbers of ResBlocks ({[len(lv) for lv in levels]}); "
            "SD1/SD2 UNets have the same number on every level."
        )
    attention = []
    for level in levels:
        flags = {f"input_blocks.{i}.1.proj_in.weight" in unet for i in level}
        if len(flags) != 1:
            raise UnsupportedModelError("UNet: a level mixes blocks with and without attention; not SD1/SD2.")
        attention.append(flags.pop())
    return UNetLayout(attention=tuple(attention), num_res_blocks=counts.pop())


def unet_layout_from_config(config) -> UNetLayout:
    lpb = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    types = config["down_block_types"] if isinstance(config, dict) else config.down_block_types
    if not isinstance(lpb, int):
        if len(set(lpb)) != 1:
            raise UnsupportedModelError(f"UNet layers_per_block {lpb}: LDM layout needs one value")
        lpb = lpb[0]
    return UNetLayout(attention=tuple(t.startswith("CrossAttn") for t in types), num_res_blocks=int(lpb))


def unet_block_table(layout: UNetLayout) -> list[tuple[str, str, str]]:
    """(ldm prefix, diffusers prefix, kind) for every block of an SD-style UNet."""
    n, nres = layout.levels, layout.num_res_blocks
    table = [
        ("time_embed.0.", "time_embedding.linear_1.", _PLAIN),
        ("time_embed.2.", "time_embedding.linear_2.", _PLAIN),
        ("input_blocks.0.0.", "conv_in.", _PLAIN),
        ("middle_block.0.", "mid_block.resnets.0.", _UNET_RES),
        ("middle_block.1.", "mid_block.attentions.0.", _PLAIN),
        ("middle_block.2.", "mid_block.resnets.1.", _UNET_RES),
        ("out.0.", "conv_norm_out.", _PLAIN),
        ("out.2.", "conv_out.", _PLAIN),
    ]
    for level in range(n):
        first = 1 + level * (nres + 1)                     # each down level: nres ResBlocks + 1 Downsample
        for j in range(nres):
            table.append((f"input_blocks.{first + j}.0.", f"down_blocks.{level}.resnets.{j}.", _UNET_RES))
            if layout.attention[level]:
                table.append((f"input_blocks.{first + j}.1.", f"down_blocks.{level}.attentions.{j}.", _PLAIN))
        if level < n - 1:
            table.append((f"input_blocks.{first + nres}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.", _PLAIN))
    for up in range(n):                                    # up levels run deepest first
        attn = layout.attention[n - 1 - up]
        for j in range(nres + 1):
            o = up * (nres + 1) + j
            table.append((f"output_blocks.{o}.0.", f"up_blocks.{up}.resnets.{j}.", _UNET_RES))
            if attn:
                table.append((f"output_blocks.{o}.1.", f"up_blocks.{up}.attentions.{j}.", _PLAIN))
            if up < n - 1 and j == nres:                   # the Upsample sits after the attention, if any
                slot = 2 if attn else 1
                table.append((f"output_blocks.{o}.{slot}.conv.", f"up_blocks.{up}.upsamplers.0.conv.", _PLAIN))
    return table


def unet_ldm_to_diffusers(unet: Mapping[str, Tensor], layout: UNetLayout) -> dict[str, Tensor]:
    return _remap(unet, unet_block_table(layout), to_diffusers=True, what="UNet (model.diffusion_model.*)")


def unet_diffusers_to_ldm(unet: Mapping[str, Tensor], layout: UNetLayout) -> dict[str, Tensor]:
    return _remap(unet, unet_block_table(layout), to_diffusers=False, what="UNet")


# ------------------------------------------------------------------------------------------ VAE

VAE_TOP_LEVEL = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def vae_layout_from_ldm(vae: Mapping[str, Tensor]) -> VaeLayout:
    levels = {int(k.split(".")[2]) for k in vae if k.startswith("encoder.down.")}
    blocks = {int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block.")}
    if not levels or not blocks:
        raise UnsupportedModelError("VAE (first_stage_model.*): encoder.down.* blocks are missing; not a KL VAE.")
    return VaeLayout(levels=max(levels) + 1, num_res_blocks=max(blocks) + 1)


def vae_layout_from_diffusers(vae: Mapping[str, Tensor]) -> VaeLayout:
    levels = {int(k.split(".")[2]) for k in vae if k.startswith("encoder.down_blocks.")}
    blocks = {int(k.split(".")[4]) for k in vae if k.startswith("encoder.down_blocks.0.resnets.")}
    if not levels or not blocks:
        raise UnsupportedModelError("VAE: encoder.down_blocks.* are missing; not a diffusers AutoencoderKL.")
    return VaeLayout(levels=max(levels) + 1, num_res_blocks=max(blocks) + 1)


def vae_block_table(layout: VaeLayout) -> list[tuple[str, str, str]]:
    n, nres = layout.levels, layout.num_res_blocks
    table = [(p, p, _PLAIN) for p in ("encoder.conv_in.", "encoder.conv_out.", "decoder.conv_in.",
                                      "decoder.conv_out.", "quant_conv.", "post_quant_conv.")]
    for coder in ("encoder", "decoder"):
        table += [
            (f"{coder}.norm_out.", f"{coder}.conv_norm_out.", _PLAIN),
            (f"{coder}.mid.block_1.", f"{coder}.mid_block.resnets.0.", _VAE_RES),
            (f"{coder}.mid.attn_1.", f"{coder}.mid_block.attentions.0.", _VAE_ATTN),
            (f"{coder}.mid.block_2.", f"{coder}.mid_block.resnets.1.", _VAE_RES),
        ]
    for i in range(n):
        for j in range(nres):
            table.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}.", _VAE_RES))
        if i < n - 1:
            table.append((f"encoder.down.{i}.downsample.conv.", f"encoder.down_blocks.{i}.downsamplers.0.conv.", _PLAIN))
        up = n - 1 - i                                     # ldm numbers decoder levels from the bottom
        for j in range(nres + 1):
            table.append((f"decoder.up.{i}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", _VAE_RES))
        if i > 0:
            table.append((f"decoder.up.{i}.upsample.conv.", f"decoder.up_blocks.{up}.upsamplers.0.conv.", _PLAIN))
    return table


def vae_ldm_to_diffusers(vae: Mapping[str, Tensor], layout: VaeLayout) -> dict[str, Tensor]:
    return _remap(vae, vae_block_table(layout), to_diffusers=True, what="VAE (first_stage_model.*)")


def vae_diffusers_to_ldm(vae: Mapping[str, Tensor], layout: VaeLayout) -> dict[str, Tensor]:
    return _remap(vae, vae_block_table(layout), to_diffusers=False, what="VAE")


def _attn_weight_to_linear(t: Tensor) -> Tensor:
    # ldm stores the VAE attention projections as 1x1 convs; indexing gives a view, never a copy
    if t.ndim == 4:
        return t[:, :, 0, 0]
    if t.ndim == 3:
        return t[:, :, 0]
    return t


def _attn_weight_to_conv(t: Tensor) -> Tensor:
    return t[:, :, None, None] if t.ndim == 2 else t


# ------------------------------------------------------------------------------- text encoders

def clip_ldm_to_diffusers(te: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """SD1 text encoder keys (under cond_stage_model.transformer.) -> CLIPTextModel keys.
    Accepts the older layout without `text_model.`; drops `position_ids` (rebuilt by the loader,
    merged checkpoints often carry a corrupted float copy)."""
    out = {}
    for key, t in te.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[key] = t
    return out


def clip_diffusers_to_ldm(te: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in te.items() if not k.endswith("position_ids")}


_OPENCLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# Parts of OpenCLIP that a CLIPTextModel does not have (the contrastive head, a cached mask)
OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")


def openclip_num_layers(te: Mapping[str, Tensor]) -> int:
    ids = {int(k.split(".")[2]) for k in te if k.startswith("transformer.resblocks.")}
    return max(ids) + 1 if ids else 0


def openclip_ldm_to_diffusers(te: Mapping[str, Tensor], keep_layers: int) -> dict[str, Tensor]:
    """SD2 OpenCLIP keys (under cond_stage_model.model.) -> CLIPTextModel keys, keeping the first
    `keep_layers` blocks (SD2 conditions on the penultimate block, so the last one is dropped, as
    diffusers does). The fused in_proj is split into q/k/v views of the same storage."""
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, t in te.items():
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = t
            continue
        if key in OPENCLIP_UNUSED:
            continue
        if not key.startswith("transformer.resblocks."):
            unmapped.append(key)
            continue
        _, _, idx, rest = key.split(".", 3)
        if int(idx) >= keep_layers:
            continue
        dst = f"text_model.encoder.layers.{idx}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            q, k, v = t.chunk(3, dim=0)                    # views along dim 0
            kind = "weight" if rest.endswith("weight") else "bias"
            out[dst + f"self_attn.q_proj.{kind}"] = q
            out[dst + f"self_attn.k_proj.{kind}"] = k
            out[dst + f"self_attn.v_proj.{kind}"] = v
            continue
        module, _, param = rest.rpartition(".")
        if module not in _OPENCLIP_BLOCK:
            unmapped.append(key)
            continue
        out[dst + _OPENCLIP_BLOCK[module] + "." + param] = t
    if unmapped:
        raise UnsupportedModelError(
            f"Text encoder (cond_stage_model.model.*): {len(unmapped)} keys are not OpenCLIP text-tower "
            f"keys, e.g. {unmapped[:3]}; only SD2's OpenCLIP ViT-H text encoder is supported."
        )
    return out


def openclip_diffusers_to_ldm(te: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of openclip_ldm_to_diffusers for the layers present (q/k/v are concatenated)."""
    top = {v: k for k, v in _OPENCLIP_TOP.items()}
    block = {v: k for k, v in _OPENCLIP_BLOCK.items()}
    out: dict[str, Tensor] = {}
    for key, t in te.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[top[key]] = t
            continue
        _, _, _, idx, rest = key.split(".", 4)             # text_model.encoder.layers.<i>.<rest>
        dst = f"transformer.resblocks.{idx}."
        module, _, param = rest.rpartition(".")
        if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            if module == "self_attn.q_proj":
                prefix = key[: -len(rest)]
                parts = [te[f"{prefix}self_attn.{p}_proj.{param}"] for p in "qkv"]
                out[dst + f"attn.in_proj_{param}"] = torch.cat(parts, dim=0)
            continue
        out[dst + block[module] + "." + param] = t
    return out


# ----------------------------------------------------------------------------------- machinery

def _remap(sd: Mapping[str, Tensor], table, *, to_diffusers: bool, what: str) -> dict[str, Tensor]:
    src = {(row[0] if to_diffusers else row[1]): row for row in table}
    renames = _RENAMES if to_diffusers else _INVERSE
    value_fn: dict[str, Callable[[Tensor], Tensor]] = {
        _VAE_ATTN: _attn_weight_to_linear if to_diffusers else _attn_weight_to_conv,
    }
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, t in sd.items():
        parts = key.split(".")
        row = None
        for n in range(min(len(parts) - 1, _MAX_PREFIX_PARTS), 0, -1):   # longest prefix wins
            prefix = ".".join(parts[:n]) + "."
            row = src.get(prefix)
            if row is not None:
                break
        if row is None:
            unmapped.append(key)
            continue
        ldm_prefix, diffusers_prefix, kind = row
        module, _, param = key[len(prefix):].rpartition(".")
        module = renames[kind].get(module, module)
        new_key = (diffusers_prefix if to_diffusers else ldm_prefix) + (f"{module}." if module else "") + param
        if kind in value_fn and param == "weight":
            t = value_fn[kind](t)
        out[new_key] = t
    if unmapped:
        raise UnsupportedModelError(
            f"{what}: {len(unmapped)} keys do not belong to an SD1/SD2 layout, e.g. {unmapped[:3]}."
        )
    return out
