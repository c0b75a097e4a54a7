"""The model the AUTOMATIC1111 WebUI (1.10) holds, seen from the trainer: what is loaded, whether we
can train on it, and its live tensors as an LDM-layout state dict.

Facts this relies on (WebUI v1.10.1 source):
- `sd_models.model_data.sd_model` is the loaded model or None; `shared.sd_model` would LOAD one.
- Flags `is_sd1 is_sd2 is_sdxl is_ssd is_sd3` (sd_models.set_model_type), `parameterization`
  ("v" for 768-v SD2 configs), `lowvram` (lowvram.setup_for_low_vram: --lowvram/--medvram keep the
  big parts in RAM and move them to the GPU piece by piece with forward pre-hooks).
- FP8 storage (Settings > Optimizations > FP8 weight) casts every Linear/Conv2d outside the VAE to
  float8_e4m3fn; with "Cache FP16 weight for LoRA" each keeps a CPU float16 copy of its original
  weight/bias in `fp16_weight` / `fp16_bias`.
- The built-in Lora support leaves a LoRA merged into the weights after a generation, with the
  originals in `network_weights_backup` / `network_bias_backup` (extensions-builtin/Lora/networks.py).
- SD1's tokenizer is `cond_stage_model.wrapped.tokenizer` (transformers CLIPTokenizer); SD2 prompts
  are tokenized by open_clip's `open_clip.tokenizer._tokenizer` (same BPE vocabulary as CLIP).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ..model.errors import UnsupportedModelError
from ..model.ldm import check_supported
from .base import HostError
from ..model.tokenizer import clip_tokenizer, pad_for_version

UNET_PREFIX = "model.diffusion_model."
TE_PREFIX = "cond_stage_model."
FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)

WHAT_WORKS = ("The trainer works on Stable Diffusion 1.x and 2.x text-to-image checkpoints (4-channel UNet); "
              "select one in the checkpoint dropdown at the top of the page.")

FORGE = ("This is Stable Diffusion WebUI Forge. Trainer trains on the model the way the AUTOMATIC1111 WebUI "
         "1.10 holds it; Forge holds its models differently (its own UNet patcher and memory management), so "
         "Trainer cannot train here yet. Use the AUTOMATIC1111 WebUI 1.10, or train outside the WebUI with "
         "`python -m extensions_lib ui --checkpoint <model.safetensors>` and copy the file it writes to "
         "Forge's models/Lora folder.")


def running_on_forge() -> bool:
    """Forge ships the package modules_forge; the AUTOMATIC1111 WebUI does not."""
    import importlib.util

    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


# ------------------------------------------------------------------------------ what is loaded

def loaded_model():
    """The WebUI's model, or None; never triggers a load (unlike shared.sd_model)."""
    from modules import sd_models

    return sd_models.model_data.sd_model


def model_title(sd_model) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "title", None) or getattr(info, "filename", None) or "the loaded checkpoint"


def model_version(sd_model) -> str:
    return "sd2" if getattr(sd_model, "is_sd2", False) else "sd1"


def unet_of(sd_model) -> torch.nn.Module:
    return sd_model.model.diffusion_model


def unet_device(sd_model) -> torch.device:
    for t in unet_of(sd_model).parameters():
        return t.device
    from modules import devices

    return devices.device


def _unet_in_channels(sd_model) -> Optional[int]:
    w = dict(unet_of(sd_model).named_parameters()).get("input_blocks.0.0.weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else None


def fp8_modules(sd_model) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every Linear/Conv2d whose weight is stored in fp8."""
    return [(n, m) for n, m in sd_model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and getattr(m, "weight", None) is not None
            and m.weight.dtype in FP8_DTYPES]


def refusal(sd_model) -> Optional[str]:
    """Why training cannot use this model (one message that says the fix), or None."""
    if sd_model is None:
        return ("No checkpoint is loaded in the WebUI. " + WHAT_WORKS +
                " Wait until it has loaded, then start training.")
    title = model_title(sd_model)
    if getattr(sd_model, "is_sdxl", False) or getattr(sd_model, "is_ssd", False) or hasattr(sd_model, "conditioner"):
        return f"'{title}' is an SDXL checkpoint, which the trainer does not support yet. " + WHAT_WORKS
    if getattr(sd_model, "is_sd3", False):
        return f"'{title}' is a Stable Diffusion 3 checkpoint, which the trainer does not support. " + WHAT_WORKS
    if not hasattr(sd_model, "model") or not hasattr(sd_model.model, "diffusion_model"):
        return f"'{title}' is not a latent-diffusion UNet model the trainer knows. " + WHAT_WORKS
    channels = _unet_in_channels(sd_model)
    if channels is not None and channels != 4:
        kinds = {9: "an inpainting", 8: "an instruct-pix2pix", 5: "a depth-conditioned", 7: "an upscaler"}
        kind = kinds.get(channels, "a")
        return (f"'{title}' is {kind} model (its UNet takes {channels} input channels, not 4); the trainer "
                "does not support it. " + WHAT_WORKS)
    if getattr(sd_model, "lowvram", False):
        return ("The WebUI runs with --lowvram or --medvram: it keeps the model in system RAM and moves it to "
                "the GPU one piece at a time while generating. Training needs the whole UNet and text encoder "
                "on the GPU at once, so it cannot share the model in this mode. Restart the WebUI without "
                "--lowvram/--medvram (--medvram-sdxl is fine for SD1/SD2 checkpoints), or train outside the "
                "WebUI with `python -m extensions_lib train config.toml`.")
    device = unet_device(sd_model)
    if device.type == "meta":
        return (f"The weights of '{title}' are not in memory (the model was unloaded). Select the checkpoint "
                "again in the checkpoint dropdown, then start training.")
    from modules import devices

    wanted = torch.device(devices.device)
    if device.type == "cpu" and wanted.type != "cpu":
        return (f"'{title}' was moved to system RAM (Settings > Actions > Unload SD checkpoint to RAM). Press "
                "'Load SD checkpoint to VRAM from RAM' in Settings > Actions, then start training.")
    missing = [n for n, m in fp8_modules(sd_model) if getattr(m, "fp16_weight", None) is None]
    if missing:
        return ("The WebUI stores this model's weights in FP8 (Settings > Optimizations > FP8 weight) and did "
                "not keep the FP16 originals, so there is nothing precise enough to train on (e.g. "
                f"{missing[0]}). Turn off 'FP8 weight' in Settings > Optimizations, or enable 'Cache FP16 "
                "weight for LoRA' there, and press Apply settings (the WebUI then reloads the checkpoint).")
    sd = live_state_dict(sd_model, originals_for_fp8=False)
    try:
        check_supported(sd)
    except UnsupportedModelError as e:
        return f"'{title}': {e}"
    if not any(k.startswith(("cond_stage_model.transformer.", "cond_stage_model.model.")) for k in sd):
        return (f"'{title}' has a text encoder the trainer does not know (not CLIP / OpenCLIP, e.g. "
                "Alt-Diffusion's XLM-R). " + WHAT_WORKS)
    return None


def precision_refusal(sd_model, mixed_precision: str) -> Optional[str]:
    """The WebUI keeps its model in float16 unless started with --no-half. Those weights train only
    under autocast on a GPU: refuse the combinations that would fail at the first step."""
    dtype = _base_dtype(sd_model, UNET_PREFIX)
    if dtype not in (torch.float16, torch.bfloat16):
        return None
    name, title = str(dtype).replace("torch.", ""), model_title(sd_model)
    if unet_device(sd_model).type == "cpu":
        return (f"The WebUI holds '{title}' in {name} on the CPU, where it cannot be trained. Start the WebUI "
                "with --no-half (CPU-only setups need it anyway), then start training.")
    if mixed_precision == "no":
        return (f"The WebUI holds '{title}' in {name} (its default; --no-half would keep float32), and "
                "training on those weights needs autocast: set training.mixed_precision (Mixed precision) "
                "to fp16 or bf16 instead of 'no', or restart the WebUI with --no-half.")
    return None


# ------------------------------------------------------------------------------ merged LoRA

def _networks_module():
    """extensions-builtin/Lora/networks.py as the WebUI imported it (it stays in sys.modules), or None."""
    mod = sys.modules.get("networks")
    if mod is not None and hasattr(mod, "network_restore_weights_from_backup"):
        return mod
    return None


def _restore_one(m: torch.nn.Module) -> None:
    """Fallback when the Lora extension is not importable: the same effect as its
    network_restore_weights_from_backup + network_reset_cached_weight."""
    w, b = getattr(m, "network_weights_backup", None), getattr(m, "network_bias_backup", None)
    if w is not None:
        if isinstance(m, torch.nn.MultiheadAttention):
            m.in_proj_weight.copy_(w[0])
            m.out_proj.weight.copy_(w[1])
        else:
            m.weight.copy_(w)
    if w is not None or b is not None:
        target = m.out_proj if isinstance(m, torch.nn.MultiheadAttention) else m
        if b is None:
            target.bias = None
        else:
            target.bias.copy_(b)
    m.network_current_names = ()
    m.network_weights_backup = None
    m.network_bias_backup = None


def restore_merged_networks(sd_model) -> int:
    """Put back the original weights wherever the built-in Lora support left a LoRA merged in, and
    forget its cache so the next generation applies its LoRAs afresh. Call under queue_lock.
    Returns how many modules were restored."""
    networks = _networks_module()
    n = 0
    with torch.no_grad():      # UNet parameters require grad in the WebUI: in-place copies need no_grad
        for m in sd_model.modules():
            has_backup = (getattr(m, "network_weights_backup", None) is not None
                          or getattr(m, "network_bias_backup", None) is not None)
            if not has_backup and not getattr(m, "network_current_names", ()):
                continue
            if networks is not None:
                networks.network_restore_weights_from_backup(m)
                networks.network_reset_cached_weight(m)
            else:
                _restore_one(m)
            n += has_backup
    return n


# ------------------------------------------------------------------------------ tensors

def _base_dtype(sd_model, prefix: str) -> Optional[torch.dtype]:
    """The floating dtype the non-fp8 tensors of a component have (what its fp8 layers were)."""
    for k, t in sd_model.state_dict().items():
        if k.startswith(prefix) and t.is_floating_point() and t.dtype not in FP8_DTYPES:
            return t.dtype
    return None


# sd_hijack wraps the text encoder and its token embedding; checkpoints have neither wrapper
_HIJACK_WRAPPERS = (("cond_stage_model.wrapped.", "cond_stage_model."),
                    (".token_embedding.wrapped.", ".token_embedding."))


def checkpoint_key(live_key: str) -> str:
    for old, new in _HIJACK_WRAPPERS:
        if old in live_key:
            live_key = live_key.replace(old, new, 1)
    return live_key


def live_state_dict(sd_model, originals_for_fp8: bool = True) -> dict[str, torch.Tensor]:
    """The model's tensors, detached (the very storage the WebUI uses, no copies), under checkpoint
    key names (the WebUI's live names without sd_hijack's `.wrapped` parts, so SD1 and SD2 look
    like their checkpoints). Layers stored in fp8 are replaced by their kept FP16 originals
    (`fp16_weight`/`fp16_bias`, copied to the layer's device in the dtype of the component's other
    tensors): the only copies made, and only in FP8 mode."""
    sd = {k: v.detach() for k, v in sd_model.state_dict().items()}
    if originals_for_fp8:
        _use_fp8_originals(sd_model, sd)
    return {checkpoint_key(k): v for k, v in sd.items()}


def _use_fp8_originals(sd_model, sd: dict) -> None:
    dtypes: dict[str, Optional[torch.dtype]] = {}
    for name, m in fp8_modules(sd_model):
        prefix = UNET_PREFIX if name.startswith(UNET_PREFIX.rstrip(".")) else TE_PREFIX
        if prefix not in dtypes:
            dtypes[prefix] = _base_dtype(sd_model, prefix) or torch.float16
        dtype, device = dtypes[prefix], m.weight.device
        sd[f"{name}.weight"] = m.fp16_weight.to(device=device, dtype=dtype)
        bias = getattr(m, "fp16_bias", None)
        if bias is not None and f"{name}.bias" in sd:
            sd[f"{name}.bias"] = bias.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------ tokenizers

def sd1_tokenizer(sd_model):
    cond = sd_model.cond_stage_model
    tok = getattr(getattr(cond, "wrapped", cond), "tokenizer", None) or getattr(cond, "tokenizer", None)
    if tok is None:
        raise HostError(f"'{model_title(sd_model)}': the WebUI's text encoder has no CLIP tokenizer "
                        "(cond_stage_model.wrapped.tokenizer). Reload the checkpoint, then start training.")
    return tok


def openclip_vocab_files(simple_tokenizer, folder: Path) -> Path:
    """Write open_clip's SimpleTokenizer vocabulary as the vocab.json + merges.txt a transformers
    CLIPTokenizer reads. Same BPE and ids; only the special tokens are spelt differently."""
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(tok, tok): int(i) for tok, i in simple_tokenizer.encoder.items()}
    merges = sorted(simple_tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for (a, b), _ in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def sd2_tokenizer():
    """A transformers CLIPTokenizer equal to the open_clip tokenizer the WebUI uses for SD2 prompts:
    same BPE and ids, padding with "!" (id 0) as the WebUI does for OpenCLIP. The vocabulary files it
    is built from live in a temporary folder only while the tokenizer reads them."""
    try:
        import open_clip.tokenizer as oc_tok
        simple = oc_tok._tokenizer
        simple.encoder, simple.bpe_ranks  # noqa: B018 - the two tables we convert
    except (ImportError, AttributeError) as e:
        raise HostError(
            "This SD2 checkpoint needs open_clip's tokenizer, which could not be read from the WebUI's "
            f"environment ({e}). The WebUI installs open_clip at start-up: restart it without "
            "--skip-install once, or switch to an SD1 checkpoint.") from None
    with tempfile.TemporaryDirectory(prefix="trainer-openclip-tok-") as tmp:
        tok = clip_tokenizer(openclip_vocab_files(simple, Path(tmp)), "sd2")
    return pad_with_exclamation(tok)


def pad_with_exclamation(tok):
    """Set "!" as the pad token AFTER construction: given to the constructor, transformers >= 4.4x
    registers it as a special token that is split out of the text, so a prompt's "!" would become
    the pad id (0) instead of the word-final "!</w>" that open_clip (and the WebUI) produce."""
    pad_for_version(tok, "sd2")
    word_end = tok.convert_tokens_to_ids("!</w>")
    got = tok("!", add_special_tokens=False).input_ids
    if tok.pad_token_id != 0 or got != [word_end]:
        raise HostError(f"Cannot reproduce the WebUI's SD2 tokenization with this transformers version "
                        f"(pad id {tok.pad_token_id}, '!' -> {got}); please report this.")
    return tok


# ------------------------------------------------------------------------------ names for metadata

def checkpoint_facts(sd_model) -> dict:
    """model_name / model_hash / model_sha256 / vae_name / path for the bundle's metadata."""
    from modules import sd_vae

    info = getattr(sd_model, "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None) or ""
    legacy = getattr(info, "hash", None)
    vae_file = getattr(sd_vae, "loaded_vae_file", None)
    return {
        "model_name": os.path.basename(filename) if filename else model_title(sd_model),
        "model_hash": legacy if legacy and legacy != "NOFILE" else None,
        "model_sha256": getattr(info, "sha256", None) or _cached_sha256(info),
        "vae_name": os.path.basename(vae_file) if vae_file else None,
        "path": filename,
        "title": model_title(sd_model),
    }


def _cached_sha256(info) -> Optional[str]:
    """The checkpoint's full sha256 from the WebUI's hash cache (cache/hashes), when the loaded
    CheckpointInfo has none yet; never hashes the file here (that takes minutes for a big checkpoint)."""
    filename, name = getattr(info, "filename", None), getattr(info, "name", None)
    if not filename or not name:
        return None
    try:
        from modules import hashes

        return hashes.sha256_from_cache(filename, f"checkpoint/{name}") or None
    except Exception:  # noqa: BLE001 - a missing or unreadable cache only means "unknown"
        return None
