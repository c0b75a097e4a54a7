"""The diffusers view of an LDM-layout SD1/SD2 state dict, without copying a single weight.

An LDM state dict is what single-file checkpoints hold and what the WebUI keeps in memory
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*` for SD1,
`cond_stage_model.model.*` for SD2). `bundle_from_ldm` builds UNet2DConditionModel, CLIPTextModel
and AutoencoderKL on the meta device (no memory, no init) and fills them with
`load_state_dict(..., strict=True, assign=True)`: every parameter is then the caller's tensor or a
view of it. Configs come from the tensors' shapes (ldm_configs.py), keys from ldm_keys.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from . import ldm_configs as cfgs
from . import ldm_keys as keys
from .bundle import SD1, SD2, ModelBundle, make_noise_scheduler
from .errors import TokenizerError, UnsupportedModelError

Tensor = torch.Tensor

SUPPORTED = "Supported: Stable Diffusion 1.x and 2.x text-to-image checkpoints (4-channel UNet)."

# Key families of models this trainer does not handle, with the name shown to the user
_OTHER_FAMILIES = (
    ("conditioner.embedders.", "an SDXL checkpoint (conditioner.embedders.* keys)"),
    ("model.diffusion_model.joint_blocks.", "an SD3 checkpoint (model.diffusion_model.joint_blocks.* keys)"),
    ("text_encoders.", "an SD3 checkpoint (text_encoders.* keys)"),
    ("model.diffusion_model.double_blocks.", "a Flux checkpoint (double_blocks.* keys)"),
    ("double_blocks.", "a Flux checkpoint (double_blocks.* keys)"),
    ("model.diffusion_model.label_emb.", "a class-conditioned UNet (label_emb.*: SDXL / unCLIP / upscaler)"),
    ("control_model.", "a ControlNet (control_model.* keys)"),
    ("lora_unet_", "a LoRA file, not a checkpoint (lora_unet_* keys)"),
    ("lora_te_", "a LoRA file, not a checkpoint (lora_te_* keys)"),
)
_IN_CHANNELS = {9: "an inpainting UNet", 8: "an instruct-pix2pix UNet", 5: "a depth-conditioned UNet",
                7: "an upscaler UNet"}

# The WebUI wraps its SD1 text encoder; its live state dict then has these extra name parts
_WEBUI_WRAPPERS = (("cond_stage_model.wrapped.", "cond_stage_model."),
                   (".token_embedding.wrapped.", ".token_embedding."))


@dataclass
class LdmParts:
    """An LDM state dict split by component, prefixes removed, architecture hints popped."""
    unet: dict = field(default_factory=dict)
    text_encoder: dict = field(default_factory=dict)
    text_encoder_kind: str = ""          # "clip" (SD1) | "openclip" (SD2) | ""
    vae: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)    # component -> {name: [ints]}


# ------------------------------------------------------------------------------ inspection

def check_supported(sd: Mapping[str, Tensor]) -> None:
    """Raise UnsupportedModelError, naming what was found, unless `sd` is an SD1/SD2 checkpoint."""
    if not sd:
        raise UnsupportedModelError(f"The state dict is empty. {SUPPORTED}")
    for prefix, name in _OTHER_FAMILIES:
        if any(k.startswith(prefix) for k in sd):
            raise UnsupportedModelError(f"This is {name}. {SUPPORTED}")
    if not any(k.startswith(keys.UNET_PREFIX) for k in sd):
        sample = sorted(sd)[:3]
        hint = ""
        if any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in sd):
            hint = " The keys look like a diffusers model: pass the diffusers folder (with model_index.json) instead."
        raise UnsupportedModelError(
            f"No UNet found: the state dict has no model.diffusion_model.* keys (first keys: {sample}).{hint} "
            f"{SUPPORTED}"
        )
    conv_in = sd.get(keys.UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.ndim == 4 and conv_in.shape[1] != 4:
        c = int(conv_in.shape[1])
        raise UnsupportedModelError(
            f"This is {_IN_CHANNELS.get(c, 'a UNet')} with {c} input channels "
            f"(model.diffusion_model.input_blocks.0.0.weight {tuple(conv_in.shape)}). {SUPPORTED}"
        )


def detect_version(sd: Mapping[str, Tensor]) -> str:
    """"sd1" or "sd2" for an LDM state dict; UnsupportedModelError for anything else."""
    check_supported(sd)
    for k in sd:
        if k.startswith(keys.OPENCLIP_PREFIX):
            return SD2
    for k in sd:
        if k.startswith(keys.CLIP_PREFIX) or k.startswith("cond_stage_model.wrapped.transformer."):
            return SD1
    ctx = sd.get(keys.UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")
    if ctx is not None and ctx.shape[1] in (768, 1024):     # no text encoder: go by the UNet's context
        return SD1 if ctx.shape[1] == 768 else SD2
    raise UnsupportedModelError(
        "Cannot tell SD1 from SD2: no text encoder (cond_stage_model.transformer.* or "
        f"cond_stage_model.model.*) and no UNet cross-attention of width 768/1024. {SUPPORTED}"
    )


def split_ldm(sd: Mapping[str, Tensor]) -> LdmParts:
    parts = LdmParts()
    for key, t in sd.items():
        for old, new in _WEBUI_WRAPPERS:
            if old in key:
                key = key.replace(old, new)
        if key.startswith(keys.UNET_PREFIX):
            parts.unet[key[len(keys.UNET_PREFIX):]] = t
        elif key.startswith(keys.VAE_PREFIX):
            parts.vae[key[len(keys.VAE_PREFIX):]] = t
        elif key.startswith(keys.CLIP_PREFIX):
            parts.text_encoder[key[len(keys.CLIP_PREFIX):]] = t
            parts.text_encoder_kind = "clip"
        elif key.startswith(keys.OPENCLIP_PREFIX):
            parts.text_encoder[key[len(keys.OPENCLIP_PREFIX):]] = t
            parts.text_encoder_kind = "openclip"
        elif key.startswith("cond_stage_model." + cfgs.HINT):     # hints of the text encoder
            parts.text_encoder[key[len("cond_stage_model."):]] = t
    parts.hints = {
        "unet": cfgs.pop_hints(parts.unet),
        "text_encoder": cfgs.pop_hints(parts.text_encoder),
        "vae": cfgs.pop_hints(parts.vae),
    }
    return parts


def normalize_vae_state_dict(vae_sd: Mapping[str, Tensor]) -> tuple[dict, dict]:
    """A separate VAE file's dict -> (LDM-layout VAE dict without prefix, hints). Accepts keys with
    or without `first_stage_model.`, ignores training leftovers (loss.*, model_ema.*), and takes
    diffusers-layout VAE files (encoder.down_blocks.*) too."""
    out = {}
    for key, t in vae_sd.items():
        if key.startswith(keys.VAE_PREFIX):
            key = key[len(keys.VAE_PREFIX):]
        if key.startswith(keys.VAE_TOP_LEVEL) or key.startswith(cfgs.HINT):
            out[key] = t
    hints = cfgs.pop_hints(out)
    if not out:
        raise UnsupportedModelError(
            "The VAE state dict has no encoder.* / decoder.* keys; it is not an SD VAE "
            f"(first keys: {sorted(vae_sd)[:3]})."
        )
    if any(k.startswith("encoder.down_blocks.") for k in out):
        out = keys.vae_diffusers_to_ldm(out, keys.vae_layout_from_diffusers(out))
    return out, hints


# ------------------------------------------------------------------------------ module building

def _assign(module: torch.nn.Module, mapped: dict, what: str) -> torch.nn.Module:
    """Fill a meta-device module with `mapped` by reference (strict: every weight must fit)."""
    module.requires_grad_(False)           # so assign wraps tensors in frozen Parameters
    expected = module.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{what}: the checkpoint does not match the architecture read from its shapes: "
            f"{len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}). The file may be truncated or not an SD1/SD2 model. {SUPPORTED}"
        )
    bad = [(k, tuple(mapped[k].shape), tuple(v.shape)) for k, v in expected.items() if mapped[k].shape != v.shape]
    if bad:
        raise UnsupportedModelError(f"{what}: {len(bad)} weights have unexpected shapes, e.g. {bad[:3]}.")
    module.load_state_dict(mapped, strict=True, assign=True)
    return module


def _meta_tensors(module: torch.nn.Module) -> list[str]:
    return [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]


def build_unet(unet_ldm: dict, version: str, v_prediction: bool, hints: Optional[dict] = None):
    from diffusers import UNet2DConditionModel

    layout = keys.unet_layout_from_ldm(unet_ldm)
    with _missing_key("UNet", keys.UNET_PREFIX):
        config = cfgs.unet_config(unet_ldm, layout, version, v_prediction, hints)
    mapped = keys.unet_ldm_to_diffusers(unet_ldm, layout)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return _assign(unet, _detached(mapped), "UNet (model.diffusion_model.*)")


def build_vae(vae_ldm: dict, version: str, v_prediction: bool, hints: Optional[dict] = None):
    from diffusers import AutoencoderKL

    layout = keys.vae_layout_from_ldm(vae_ldm)
    with _missing_key("VAE", keys.VAE_PREFIX):
        config = cfgs.vae_config(vae_ldm, layout, version, v_prediction, hints)
    mapped = keys.vae_ldm_to_diffusers(vae_ldm, layout)
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    return _assign(vae, _detached(mapped), "VAE (first_stage_model.*)")


def build_text_encoder(te_ldm: dict, kind: str, version: str, tokenizer, hints: Optional[dict] = None):
    from transformers import CLIPTextModel

    if kind == "openclip":
        n = keys.openclip_num_layers(te_ldm)
        if n < 2:
            raise UnsupportedModelError("Text encoder (cond_stage_model.model.*): no OpenCLIP transformer blocks.")
        mapped = keys.openclip_ldm_to_diffusers(te_ldm, keep_layers=n - 1)
    else:
        mapped = keys.clip_ldm_to_diffusers(te_ldm)
    what = f"Text encoder ({keys.OPENCLIP_PREFIX if kind == 'openclip' else keys.CLIP_PREFIX}*)"
    if "text_model.embeddings.token_embedding.weight" not in mapped:
        raise UnsupportedModelError(f"{what}: the token embedding is missing.")
    with _missing_key("Text encoder (mapped to CLIPTextModel)", ""):
        config = cfgs.text_encoder_config(mapped, version, tokenizer, hints)
    _check_tokenizer(tokenizer, config.vocab_size, config.max_position_embeddings)
    with torch.device("meta"):
        te = CLIPTextModel(config)
    mapped = _detached(mapped)
    emb = te.text_model.embeddings
    device = mapped["text_model.embeddings.token_embedding.weight"].device
    positions = torch.arange(config.max_position_embeddings, device=device).expand((1, -1))
    if "text_model.embeddings.position_ids" in te.state_dict():     # persistent in transformers 4.30
        mapped["text_model.embeddings.position_ids"] = positions
    _assign(te, mapped, what)
    if emb.position_ids.is_meta:          # non-persistent (transformers >= 4.31): rebuild it
        emb.position_ids = positions
    return te


@contextmanager
def _missing_key(what: str, prefix: str):
    """Shape reading needs certain weights; name the one that is absent instead of a bare KeyError."""
    try:
        yield
    except KeyError as e:
        raise UnsupportedModelError(
            f"{what}: weight {prefix}{e.args[0]} is missing, so the architecture cannot be read. "
            f"The file may be truncated or not an SD1/SD2 model. {SUPPORTED}"
        ) from None


def _detached(mapped: dict) -> dict:
    # plain tensors, never the caller's Parameter objects: assign would otherwise flip their
    # requires_grad, and freezing the bundle would reach into the caller's modules
    return {k: v.detach() for k, v in mapped.items()}


def _check_tokenizer(tokenizer, vocab: int, max_positions: int) -> None:
    if tokenizer is None:
        raise TokenizerError("A CLIP tokenizer is required (set model.tokenizer to a tokenizer folder).")
    if len(tokenizer) > vocab:
        raise TokenizerError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder's embedding has {vocab} rows: "
            "model.tokenizer points at a tokenizer of another model. Use the CLIP tokenizer of SD1/SD2 "
            "(49408 tokens)."
        )


# ------------------------------------------------------------------------------ public API

def bundle_from_ldm(
    sd: Mapping[str, Tensor],
    tokenizer,
    *,
    v_prediction: bool = False,
    vae_state_dict: Optional[Mapping[str, Tensor]] = None,
    model_name: str = "",
    model_hash: Optional[str] = None,
) -> ModelBundle:
    """A frozen, eval-mode ModelBundle whose weights ARE the tensors of `sd` (or views of them).

    vae_state_dict: a separate VAE file's tensors (keys without `first_stage_model.`), used
    instead of the checkpoint's VAE. The caller keeps ownership of every tensor: the bundle
    never writes to them (methods add their own parameters) and never copies them."""
    check_supported(sd)
    parts = split_ldm(sd)
    if not parts.unet:
        raise UnsupportedModelError(f"No UNet (model.diffusion_model.*) in the state dict. {SUPPORTED}")
    if not parts.text_encoder_kind:
        raise UnsupportedModelError(
            "No text encoder in the state dict: expected cond_stage_model.transformer.* (SD1) or "
            f"cond_stage_model.model.* (SD2). {SUPPORTED}"
        )
    version = detect_version(sd)
    vae_hints = parts.hints["vae"]
    if vae_state_dict is not None:
        vae_ldm, vae_hints = normalize_vae_state_dict(vae_state_dict)
    else:
        vae_ldm = parts.vae
    if not vae_ldm:
        raise UnsupportedModelError(
            "No VAE in the state dict (no first_stage_model.* keys). Pass a separate VAE file "
            "(vae_path / vae_state_dict) or use a checkpoint that includes its VAE."
        )

    unet = build_unet(parts.unet, version, v_prediction, parts.hints["unet"])
    te = build_text_encoder(parts.text_encoder, parts.text_encoder_kind, version, tokenizer,
                            parts.hints["text_encoder"])
    if te.config.hidden_size != unet.config.cross_attention_dim:
        raise UnsupportedModelError(
            f"The text encoder's width {te.config.hidden_size} does not match the UNet's context width "
            f"{unet.config.cross_attention_dim}: the checkpoint mixes parts of different models."
        )
    vae = build_vae(vae_ldm, version, v_prediction, vae_hints)
    for name, m in (("UNet", unet), ("text encoder", te), ("VAE", vae)):
        left = _meta_tensors(m)
        if left:   # a bug, not bad input: every tensor must have come from the state dict
            raise RuntimeError(f"{name}: tensors left on the meta device after loading: {left[:5]}")

    bundle = ModelBundle(
        unet=unet, text_encoder=te, vae=vae, tokenizer=tokenizer,
        noise_scheduler=make_noise_scheduler(v_prediction),
        version=version, v_prediction=v_prediction, vae_scale_factor=0.18215,
        model_name=model_name, model_hash=model_hash,
    )
    bundle.freeze()
    return bundle


def ldm_from_diffusers(unet, text_encoder, vae, version: str) -> dict[str, Tensor]:
    """The LDM-layout state dict of diffusers/transformers modules (inverse of bundle_from_ldm).

    Values share storage with the modules' tensors except SD2's fused q/k/v. For SD2 one extra,
    zero-filled text-encoder block is appended, plus OpenCLIP's text_projection and logit_scale:
    real SD2 checkpoints have one block more than the CLIPTextModel that conditions the UNet.
    Non-standard head counts or GroupNorm groups (tiny models) are recorded as hint keys."""
    if version not in (SD1, SD2):
        raise ValueError(f"version must be {SD1!r} or {SD2!r}, not {version!r}")
    sd: dict[str, Tensor] = {}
    unet_sd = {k: v.detach() for k, v in unet.state_dict().items()}
    for k, v in keys.unet_diffusers_to_ldm(unet_sd, keys.unet_layout_from_config(unet.config)).items():
        sd[keys.UNET_PREFIX + k] = v
    for k, v in cfgs.unet_hints(unet, version).items():
        sd[keys.UNET_PREFIX + cfgs.HINT + k] = v

    te_sd = {k: v.detach() for k, v in text_encoder.state_dict().items()}
    if version == SD2:
        te_ldm = keys.openclip_diffusers_to_ldm(te_sd)
        last = text_encoder.config.num_hidden_layers
        for k in [k for k in te_ldm if k.startswith(f"transformer.resblocks.{last - 1}.")]:
            te_ldm[k.replace(f".{last - 1}.", f".{last}.", 1)] = torch.zeros_like(te_ldm[k])
        width = text_encoder.config.hidden_size
        te_ldm["text_projection"] = torch.zeros(width, width, dtype=te_ldm["ln_final.weight"].dtype)
        te_ldm["logit_scale"] = torch.tensor(4.6052)
        prefix = keys.OPENCLIP_PREFIX
    else:
        te_ldm = keys.clip_diffusers_to_ldm(te_sd)
        prefix = keys.CLIP_PREFIX
    for k, v in te_ldm.items():
        sd[prefix + k] = v
    for k, v in cfgs.te_hints(text_encoder).items():
        sd["cond_stage_model." + cfgs.HINT + k] = v

    vae_sd = {k: v.detach() for k, v in vae.state_dict().items()}
    layout = keys.VaeLayout(levels=len(vae.config.block_out_channels), num_res_blocks=vae.config.layers_per_block)
    for k, v in keys.vae_diffusers_to_ldm(vae_sd, layout).items():
        sd[keys.VAE_PREFIX + k] = v
    for k, v in cfgs.vae_hints(vae).items():
        sd[keys.VAE_PREFIX + cfgs.HINT + k] = v
    return sd
