"""A fake of the model object the WebUI 1.10 holds in shared.sd_model, built from an LDM-layout
state dict without copying a tensor.

make_fake_sd_model(ldm_state_dict, tokenizer) returns a LatentDiffusion-like nn.Module:
  .model.diffusion_model      UNet: nn.Module tree whose parameter names are the checkpoint's
                              (input_blocks.0.0.weight, ...); Linear/Conv2d/GroupNorm/LayerNorm leaves
  .first_stage_model          VAE, the same kind of tree (encoder.*, decoder.*, quant_conv, ...)
  .cond_stage_model           as after sd_hijack: FrozenCLIPEmbedderWithCustomWords whose .wrapped is
                              an ldm-like FrozenCLIPEmbedder (.transformer = transformers CLIPTextModel,
                              .tokenizer); the token embedding wrapped in EmbeddingsWithFixes.
                              SD2 (cond_stage_model.model.* keys): OpenCLIP-shaped tree, wrapped alike.
  flags is_sd1 is_sd2 is_sdxl is_sd3 is_ssd, latent_channels, sd_checkpoint_info, sd_model_hash,
  sd_model_checkpoint, lowvram, parameterization, scale_factor, alphas_cumprod (+ schedule buffers)
Every tensor held by the fake modules IS the tensor of ldm_state_dict (nn.Parameter over the same
storage), so data_ptr()/bit-identity checks against the input mean something. Parameters follow
the real model: UNet parameters require grad, VAE and text encoder ones don't (ldm freezes those).
Nothing runs a forward pass except the CLIP text model.

apply_merged_lora(model, deltas) leaves modules as the WebUI's Lora support does after a generation.
apply_fp8(model, cache_fp16_weight) stores Linear/Conv2d weights in fp8 as Settings > FP8 weight does.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Mapping, Optional

import torch

import networks
from modules import sd_hijack, sd_models

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TE1 = "cond_stage_model.transformer."
TE2 = "cond_stage_model.model."
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


# --- ldm-like containers --------------------------------------------------------------------

class DiffusionWrapper(torch.nn.Module):
    def __init__(self, diffusion_model: torch.nn.Module):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"


class FrozenCLIPEmbedder(torch.nn.Module):
    """ldm.modules.encoders.modules.FrozenCLIPEmbedder: SD1's text encoder before the hijack."""

    def __init__(self, transformer, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.max_length = 77
        self.layer = "last"
        self.layer_idx = None


class FrozenOpenCLIPEmbedder(torch.nn.Module):
    """ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder: SD2's text encoder before the hijack."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.max_length = 77
        self.layer = "penultimate"
        self.layer_idx = 1


class LatentDiffusion(torch.nn.Module):
    """The attributes of ldm's LatentDiffusion (and what sd_models sets on it) that an extension reads."""

    def __init__(self, unet, vae, cond_stage_model, parameterization="eps"):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = vae
        self.cond_stage_model = cond_stage_model
        self.parameterization = parameterization
        self.scale_factor = 0.18215
        self.num_timesteps = 1000
        self.linear_start = 0.00085
        self.linear_end = 0.012
        self.cond_stage_key = "txt"
        self.cond_stage_trainable = False
        self.lowvram = False
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_ssd = self.is_sd3 = False
        self.latent_channels = 4
        self.sd_model_hash = None
        self.sd_model_checkpoint = None
        self.sd_checkpoint_info = None

    def forward(self, *args, **kwargs):
        raise NotImplementedError("fake WebUI model: no sampling")


# --- building modules over existing tensors ---------------------------------------------------

def _param(t: torch.Tensor, requires_grad: bool) -> torch.nn.Parameter:
    return torch.nn.Parameter(t, requires_grad=requires_grad and t.is_floating_point())


def _is_layer_norm(path: str, leaf: str) -> bool:
    return ("transformer_blocks" in path or leaf.startswith("ln_") or "layer_norm" in leaf)


def _typed_leaf(path: str, params: dict, requires_grad: bool) -> Optional[torch.nn.Module]:
    """A torch layer of the type the real model has here, inferred from shapes, or None."""
    w, b = params.get("weight"), params.get("bias")
    if w is None or set(params) - {"weight", "bias"}:
        return None
    leaf = path.rsplit(".", 1)[-1]
    has_bias = b is not None
    with torch.device("meta"):
        if w.ndim == 4:
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=has_bias)
        elif w.ndim == 2 and leaf.endswith("embedding") and not has_bias:
            m = torch.nn.Embedding(w.shape[0], w.shape[1])
        elif w.ndim == 2:
            m = torch.nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
        elif w.ndim == 1 and _is_layer_norm(path, leaf):
            m = torch.nn.LayerNorm(w.shape[0], elementwise_affine=True)
            if not has_bias:
                m.bias = None
        elif w.ndim == 1 and has_bias:
            m = torch.nn.GroupNorm(math.gcd(32, w.shape[0]), w.shape[0])
        else:
            return None
    m.weight = _param(w, requires_grad)
    if has_bias:
        m.bias = _param(b, requires_grad)
    return m


def _mha(node: dict, requires_grad: bool) -> Optional[torch.nn.Module]:
    p, kids = node["params"], node["children"]
    if set(p) != {"in_proj_weight", "in_proj_bias"} or set(kids) != {"out_proj"}:
        return None
    out = kids["out_proj"]
    if out["children"] or set(out["params"]) != {"weight", "bias"}:
        return None
    dim = p["in_proj_weight"].shape[1]
    with torch.device("meta"):
        m = torch.nn.MultiheadAttention(dim, 1, batch_first=False)
    m.in_proj_weight = _param(p["in_proj_weight"], requires_grad)
    m.in_proj_bias = _param(p["in_proj_bias"], requires_grad)
    m.out_proj.weight = _param(out["params"]["weight"], requires_grad)
    m.out_proj.bias = _param(out["params"]["bias"], requires_grad)
    return m


def _tree(state_dict: Mapping[str, torch.Tensor]) -> dict:
    root = {"params": {}, "children": {}}
    for key, tensor in state_dict.items():
        *path, name = key.split(".")
        node = root
        for part in path:
            node = node["children"].setdefault(part, {"params": {}, "children": {}})
        node["params"][name] = tensor
    return root


def build_param_tree(state_dict: Mapping[str, torch.Tensor], requires_grad: bool = False, path: str = "") -> torch.nn.Module:
    """nn.Module tree whose named_parameters() are exactly state_dict's keys, over the same tensors."""
    return _build(_tree(state_dict), path, requires_grad)


def _build(node: dict, path: str, requires_grad: bool) -> torch.nn.Module:
    if not node["children"]:
        leaf = _typed_leaf(path, node["params"], requires_grad)
        if leaf is not None:
            return leaf
    mha = _mha(node, requires_grad)
    if mha is not None:
        return mha
    kids = node["children"]
    if kids and not node["params"] and all(k.isdigit() for k in kids):
        # ldm's ModuleList / Sequential (input_blocks, time_embed, out, to_out): indexable; slots
        # without parameters (SiLU, Dropout) become Identity
        return torch.nn.ModuleList([
            _build(kids[str(i)], f"{path}.{i}", requires_grad) if str(i) in kids else torch.nn.Identity()
            for i in range(max(int(k) for k in kids) + 1)])
    m = torch.nn.Module()
    for name, child in node["children"].items():
        m.add_module(name, _build(child, f"{path}.{name}" if path else name, requires_grad))
    for name, tensor in node["params"].items():
        if tensor.is_floating_point():
            m.register_parameter(name, _param(tensor, requires_grad))
        else:  # integer entries (e.g. extensions_lib's architecture hints) are not weights
            m.register_buffer(name, tensor)
    return m


def _split(sd: Mapping[str, torch.Tensor], prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _attach_buffers(root: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
        owner, _, name = key.rpartition(".")
        holder = root
        for part in owner.split(".") if owner else ():
            if not hasattr(holder, part):
                holder.add_module(part, torch.nn.Module())
            holder = getattr(holder, part)
        holder.register_buffer(name, tensor)


# --- text encoders ------------------------------------------------------------------------------

def _fix_old_clip_keys(te: dict) -> dict:
    # Old checkpoints lack "text_model."; the WebUI renames them on load (sd_models.py,
    # checkpoint_dict_replacements_sd1) before they reach the model.
    out = {}
    for k, v in te.items():
        if not k.startswith("text_model.") and re.match(r"(embeddings|encoder|final_layer_norm)\.", k):
            k = "text_model." + k
        out[k] = v
    return out


def make_clip_text_model(te_state: Mapping[str, torch.Tensor], num_attention_heads: Optional[int] = None):
    """transformers CLIPTextModel holding te_state's tensors (HF key layout, text_model.*)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    te_state = _fix_old_clip_keys(dict(te_state))
    # keys outside CLIPTextModel (extensions_lib's architecture hints of tiny test models) are kept
    # as buffers of an extra child, so the model's state dict still carries them
    extra = {k: v for k, v in te_state.items() if not k.startswith("text_model.")}
    te_state = {k: v for k, v in te_state.items() if k.startswith("text_model.")}
    heads_hint = next((v for k, v in extra.items() if k.endswith("num_heads")), None)
    if num_attention_heads is None and heads_hint is not None:
        num_attention_heads = int(torch.as_tensor(heads_hint).reshape(-1)[0])
    tok = te_state["text_model.embeddings.token_embedding.weight"]
    pos = te_state["text_model.embeddings.position_embedding.weight"]
    layers = {int(m.group(1)) for k in te_state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    hidden = tok.shape[1]
    if num_attention_heads is None:
        num_attention_heads = hidden // 64 if hidden % 64 == 0 else 1
    config = CLIPTextConfig(
        vocab_size=tok.shape[0], hidden_size=hidden, max_position_embeddings=pos.shape[0],
        intermediate_size=te_state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers), num_attention_heads=num_attention_heads,
        hidden_act="quick_gelu", layer_norm_eps=1e-5)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    emb = model.text_model.embeddings
    persistent = "position_ids" not in emb._non_persistent_buffers_set
    result = model.load_state_dict(te_state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"text encoder state dict does not fit CLIPTextModel: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if emb.position_ids.is_meta:
        # transformers >= 4.31 keeps position_ids out of the state dict: fill it as its __init__ does
        emb.register_buffer("position_ids", torch.arange(pos.shape[0]).expand((1, -1)), persistent=persistent)
    _attach_buffers(model, extra)
    model.requires_grad_(False)
    model.eval()
    return model


# --- the model ----------------------------------------------------------------------------------

def _schedule(linear_start=0.00085, linear_end=0.012, n=1000) -> dict:
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    f32 = lambda t: t.to(torch.float32)  # noqa: E731  ldm registers them as float32
    return {"betas": f32(betas), "alphas_cumprod": f32(alphas_cumprod), "alphas_cumprod_prev": f32(prev),
            "sqrt_alphas_cumprod": f32(alphas_cumprod.sqrt()),
            "sqrt_one_minus_alphas_cumprod": f32((1 - alphas_cumprod).sqrt())}


def make_fake_sd_model(ldm_state_dict: Mapping[str, torch.Tensor], tokenizer=None, *,
                       checkpoint_filename: str = "fake-sd15.safetensors", sha256: Optional[str] = "auto",
                       parameterization: str = "eps", num_attention_heads: Optional[int] = None,
                       hijack: bool = True) -> LatentDiffusion:
    """Build the object shared.sd_model holds, from a checkpoint-layout state dict (no copies).

    checkpoint_filename/sha256 fill sd_checkpoint_info; the file need not exist. sha256="auto": the
    file's hash if it exists, else a made-up one from the name; None: as under --no-hashing
    (sha256, shorthash and sd_model_hash are None). hijack=False gives the model as ldm builds it,
    before sd_hijack wraps the text encoder.
    """
    unet_sd, vae_sd = _split(ldm_state_dict, UNET), _split(ldm_state_dict, VAE)
    if not unet_sd or not vae_sd:
        raise ValueError("ldm_state_dict needs model.diffusion_model.* and first_stage_model.* keys (checkpoint layout)")
    if any(k.startswith(TE1) for k in ldm_state_dict):
        # other cond_stage_model.* entries (extensions_lib's architecture hints of tiny test models)
        # stay buffers of the embedder, so sd_model.state_dict() still carries them
        extra = {k: v for k, v in _split(ldm_state_dict, "cond_stage_model.").items() if not k.startswith("transformer.")}
        heads_hint = next((v for k, v in extra.items() if k.endswith("num_heads")), None)
        if num_attention_heads is None and heads_hint is not None:
            num_attention_heads = int(torch.as_tensor(heads_hint).reshape(-1)[0])
        cond = FrozenCLIPEmbedder(make_clip_text_model(_split(ldm_state_dict, TE1), num_attention_heads), tokenizer)
        _attach_buffers(cond, extra)
        version = "sd1"
    elif any(k.startswith(TE2) for k in ldm_state_dict):
        cond = FrozenOpenCLIPEmbedder(build_param_tree(_split(ldm_state_dict, TE2)))
        # as for SD1: architecture hints of tiny test models stay buffers of the embedder
        _attach_buffers(cond, {k: v for k, v in _split(ldm_state_dict, "cond_stage_model.").items()
                               if not k.startswith("model.")})
        version = "sd2"
    else:
        raise ValueError("ldm_state_dict has no text encoder: expected cond_stage_model.transformer.* (SD1) "
                         "or cond_stage_model.model.* (SD2); SDXL (conditioner.*) is not faked")

    model = LatentDiffusion(build_param_tree(unet_sd, requires_grad=True),
                            build_param_tree(vae_sd, requires_grad=False), cond, parameterization)
    model.first_stage_model.eval()
    schedule = _schedule()
    for name in SCHEDULE_BUFFERS:
        if name in ldm_state_dict:
            model.register_buffer(name, ldm_state_dict[name])
        elif name in schedule:
            model.register_buffer(name, schedule[name])
    model.alphas_cumprod_original = model.alphas_cumprod

    model.is_sd1 = version == "sd1"
    model.is_sd2 = version == "sd2"
    if sha256 == "auto":
        sha256 = None if os.path.isfile(checkpoint_filename) else hashlib.sha256(checkpoint_filename.encode()).hexdigest()
        info = sd_models.CheckpointInfo(checkpoint_filename, sha256=sha256)
    else:
        info = sd_models.CheckpointInfo(checkpoint_filename, sha256=sha256 or "")
        info.sha256 = sha256
    model.sd_checkpoint_info = info
    model.sd_model_checkpoint = info.filename
    model.sd_model_hash = info.shorthash
    if hijack:
        sd_hijack.model_hijack.hijack(model)
    return model


# --- what a generation with a LoRA leaves behind ------------------------------------------------

def webui_param_name(name: str) -> str:
    """Checkpoint key -> the name in the hijacked model's named_parameters()."""
    for prefix in (TE1, TE2):
        if name.startswith(prefix):
            name = "cond_stage_model.wrapped." + name[len("cond_stage_model."):]
            name = name.replace("token_embedding.weight", "token_embedding.wrapped.weight")
            if prefix == TE1:
                name = re.sub(r"^cond_stage_model\.wrapped\.transformer\.(?!text_model\.)", "cond_stage_model.wrapped.transformer.text_model.", name)
    return name


def apply_merged_lora(model: torch.nn.Module, delta_by_param_name: Mapping[str, torch.Tensor],
                      network_name: str = "fake_lora", multiplier: float = 1.0) -> list:
    """Add deltas into weights IN PLACE and keep CPU backups of the originals, as
    extensions-builtin/Lora/networks.network_apply_weights leaves a module after a generation.

    Keys are parameter names of `model` (checkpoint keys are translated with webui_param_name).
    A module that already carries these exact names is left alone (the real one skips it too); one
    carrying other names is first restored from its backup. Returns the modules touched.
    """
    named = dict(model.named_parameters())
    modules = dict(model.named_modules())
    grouped: dict = {}
    for key, delta in delta_by_param_name.items():
        name = key if key in named else webui_param_name(key)
        if name not in named:
            raise KeyError(f"apply_merged_lora: {key!r} is not a parameter of the model (nor is {name!r})")
        owner, _, pname = name.rpartition(".")
        parent, _, last = owner.rpartition(".")
        if last == "out_proj" and isinstance(modules.get(parent), torch.nn.MultiheadAttention):
            owner, pname = parent, "out_proj." + pname
        grouped.setdefault(owner, []).append((pname, delta))

    wanted = ((network_name, multiplier, multiplier, None),)
    touched = []
    with torch.no_grad():  # the real one runs inside the WebUI's no_grad generation
        for owner, items in grouped.items():
            module = modules[owner]
            if getattr(module, "network_layer_name", None) is None:
                module.network_layer_name = owner.replace(".", "_")
            if getattr(module, "network_current_names", ()) == wanted:
                continue
            if getattr(module, "network_weights_backup", None) is None:
                if isinstance(module, torch.nn.MultiheadAttention):
                    module.network_weights_backup = (networks.store_weights_backup(module.in_proj_weight),
                                                     networks.store_weights_backup(module.out_proj.weight))
                else:
                    module.network_weights_backup = networks.store_weights_backup(module.weight)
            if getattr(module, "network_bias_backup", None) is None:
                bias = module.out_proj.bias if isinstance(module, torch.nn.MultiheadAttention) else getattr(module, "bias", None)
                module.network_bias_backup = networks.store_weights_backup(bias)
            networks.network_restore_weights_from_backup(module)
            for pname, delta in items:
                target = module.get_parameter(pname)
                target.copy_((target.to(delta.dtype) + delta * multiplier).to(target.dtype))
            module.network_current_names = wanted
            touched.append(module)
    return touched


def restore_all(model: torch.nn.Module) -> int:
    """What an extension is expected to do under call_queue.queue_lock before reading weights:
    restore then reset every module. Returns how many modules had backups."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "network_weights_backup", None) is not None or getattr(m, "network_bias_backup", None) is not None:
                n += 1
            networks.network_restore_weights_from_backup(m)
            networks.network_reset_cached_weight(m)
    return n


def apply_fp8(model: torch.nn.Module, cache_fp16_weight: bool = False) -> int:
    """What sd_models.load_model_weights does with Settings > Optimizations > FP8 weight enabled:
    every Linear/Conv2d outside the VAE is cast to float8_e4m3fn in place (the real one has already
    run model.half()); with cache_fp16_weight (Settings: "Cache FP16 weight for LoRA") each keeps a
    CPU float16 copy of its original weight/bias in `fp16_weight` / `fp16_bias`. Sets devices.fp8.
    Returns how many modules were cast."""
    from modules import devices

    n = 0
    vae = model.first_stage_model
    model.first_stage_model = None      # the real one keeps the VAE out of fp8 the same way
    try:
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                if cache_fp16_weight:
                    module.fp16_weight = module.weight.data.clone().cpu().half()
                    if module.bias is not None:
                        module.fp16_bias = module.bias.data.clone().cpu().half()
                module.to(torch.float8_e4m3fn)
                n += 1
    finally:
        model.first_stage_model = vae
    devices.fp8 = True
    return n


def tiny_sd1_state_dict(seed: int = 0, hidden: int = 32, vocab: int = 64, dtype=torch.float32) -> dict:
    """A hand-made LDM-layout SD1 state dict with a few tensors per part (not a working UNet/VAE)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    sd = {
        f"{UNET}input_blocks.0.0.weight": r(32, 4, 3, 3), f"{UNET}input_blocks.0.0.bias": r(32),
        f"{UNET}time_embed.0.weight": r(128, 32), f"{UNET}time_embed.0.bias": r(128),
        f"{UNET}input_blocks.1.1.norm.weight": r(32), f"{UNET}input_blocks.1.1.norm.bias": r(32),
        f"{UNET}input_blocks.1.1.proj_in.weight": r(32, 32, 1, 1), f"{UNET}input_blocks.1.1.proj_in.bias": r(32),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": r(32, 32),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": r(32, hidden),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight": r(32, 32),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias": r(32),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.norm1.weight": r(32),
        f"{UNET}input_blocks.1.1.transformer_blocks.0.norm1.bias": r(32),
        f"{UNET}out.0.weight": r(32), f"{UNET}out.0.bias": r(32),
        f"{UNET}out.2.weight": r(4, 32, 3, 3), f"{UNET}out.2.bias": r(4),
        f"{VAE}encoder.conv_in.weight": r(32, 3, 3, 3), f"{VAE}encoder.conv_in.bias": r(32),
        f"{VAE}decoder.norm_out.weight": r(32), f"{VAE}decoder.norm_out.bias": r(32),
        f"{VAE}quant_conv.weight": r(8, 8, 1, 1), f"{VAE}quant_conv.bias": r(8),
        f"{VAE}post_quant_conv.weight": r(4, 4, 1, 1), f"{VAE}post_quant_conv.bias": r(4),
    }
    te = "cond_stage_model.transformer.text_model."
    sd[f"{te}embeddings.token_embedding.weight"] = r(vocab, hidden)
    sd[f"{te}embeddings.position_embedding.weight"] = r(77, hidden)
    sd[f"{te}embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    for i in range(2):
        p = f"{te}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}self_attn.{proj}.weight"] = r(hidden, hidden)
            sd[f"{p}self_attn.{proj}.bias"] = r(hidden)
        for ln in ("layer_norm1", "layer_norm2"):
            sd[f"{p}{ln}.weight"] = r(hidden)
            sd[f"{p}{ln}.bias"] = r(hidden)
        sd[f"{p}mlp.fc1.weight"] = r(4 * hidden, hidden)
        sd[f"{p}mlp.fc1.bias"] = r(4 * hidden)
        sd[f"{p}mlp.fc2.weight"] = r(hidden, 4 * hidden)
        sd[f"{p}mlp.fc2.bias"] = r(hidden)
    sd[f"{te}final_layer_norm.weight"] = r(hidden)
    sd[f"{te}final_layer_norm.bias"] = r(hidden)
    return sd
