"""Loading a model from disk for standalone use (outside the WebUI).

Single files (.safetensors, .ckpt/.pt/.pth) become LDM state dicts and go through
bundle_from_ldm; a diffusers folder (model_index.json) is loaded with from_pretrained, offline.
Safetensors files are memory-mapped: the bundle's weights are pages of the file, read on use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from ..export.hashes import legacy_file_hash
from .bundle import SD1, SD2, ModelBundle, make_noise_scheduler
from .errors import CheckpointError, TokenizerError, UnsupportedModelError
from .ldm import bundle_from_ldm, build_vae, detect_version, normalize_vae_state_dict

PathLike = Union[str, Path]

SAFETENSORS = (".safetensors",)
PICKLES = (".ckpt", ".pt", ".pth", ".bin")
TOKENIZER_FIELD = "model.tokenizer"


def load_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a single checkpoint file, on the CPU. .safetensors files are mmap'ed (no
    copy); pickled files are read with torch.load(weights_only=True) and never unpickle code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder. load_checkpoint reads single files ({', '.join(SAFETENSORS + PICKLES)}); "
            "use load_bundle for a diffusers folder (with model_index.json)."
        )
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS:
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - the library raises several types for a bad file
            raise CheckpointError(f"{path} is not a readable .safetensors file ({e}). Is it complete?") from e
    if suffix in PICKLES:
        return _load_pickle(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint type {suffix!r}; use {', '.join(SAFETENSORS + PICKLES)} "
        "or a diffusers folder."
    )


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):       # legacy (non-zip) files cannot be mapped: read them
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(
            f"{path} could not be loaded safely with torch.load(weights_only=True): {e}\n"
            "It may contain pickled code or objects beyond plain tensors. Convert it to .safetensors "
            "(e.g. the WebUI's Checkpoint Merger with 'safetensors' format, or a trusted converter) "
            "and point the config at the new file."
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]        # Lightning-style wrapper of SD checkpoints
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_tokenizer(folder: PathLike, version: str = SD1):
    from .tokenizer import clip_tokenizer, pad_for_version

    """A CLIP tokenizer from a folder with vocab.json + merges.txt or a saved HF tokenizer.
    Prefers the fast tokenizer (the slow one mis-tokenizes some strings without ftfy)."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(
            f"Tokenizer folder not found: {folder} ({TOKENIZER_FIELD}). Set {TOKENIZER_FIELD} to a folder "
            "containing vocab.json and merges.txt, e.g. the tokenizer/ folder of a diffusers SD model."
        )
    saved = (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists()
    if saved:
        for cls in (CLIPTokenizerFast, CLIPTokenizer):
            try:
                return pad_for_version(cls.from_pretrained(str(folder), local_files_only=True), version)
            except Exception:  # noqa: BLE001 - try the next class
                continue
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return clip_tokenizer(folder, version)
    raise TokenizerError(
        f"{folder} ({TOKENIZER_FIELD}) has no CLIP tokenizer: expected vocab.json and merges.txt, or a "
        "tokenizer saved with save_pretrained (tokenizer_config.json)."
    )


def _missing_tokenizer(path: Path) -> TokenizerError:
    return TokenizerError(
        f"No CLIP tokenizer for {path}: single-file checkpoints do not contain one. Set "
        f"`{TOKENIZER_FIELD}` in the config to a folder with vocab.json and merges.txt (for example "
        "the tokenizer/ folder of any diffusers Stable Diffusion 1.x/2.x model; SD1 and SD2 use the "
        "same CLIP vocabulary), or point the model at a diffusers folder that has tokenizer/."
    )


def load_bundle(
    path: PathLike,
    *,
    tokenizer_dir: Optional[PathLike] = None,
    vae_path: Optional[PathLike] = None,
    v_prediction: bool = False,
) -> ModelBundle:
    """A frozen ModelBundle from a checkpoint file or a diffusers folder, offline."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Model not found: {path}")
    vae_sd = None
    if vae_path is not None:
        vae_path = Path(vae_path)
        if not vae_path.exists():
            raise FileNotFoundError(f"VAE file not found: {vae_path}")
        vae_sd = load_checkpoint(vae_path)
    if path.is_dir():
        return _load_diffusers_folder(path, tokenizer_dir, vae_sd, vae_path, v_prediction)

    if tokenizer_dir is None:
        raise _missing_tokenizer(path)
    sd = load_checkpoint(path)
    version = detect_version(sd)
    tokenizer = load_tokenizer(tokenizer_dir, version)
    bundle = bundle_from_ldm(sd, tokenizer, v_prediction=v_prediction, vae_state_dict=vae_sd,
                             model_name=path.name, model_hash=legacy_file_hash(path))
    bundle.vae_name = vae_path.name if vae_path is not None else None
    bundle.extra["path"] = str(path)
    return bundle


def _load_diffusers_folder(path: Path, tokenizer_dir, vae_sd, vae_path, v_prediction: bool) -> ModelBundle:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if not (path / "model_index.json").exists():
        raise UnsupportedModelError(
            f"{path} is a folder without model_index.json: not a diffusers model. Point the model at a "
            ".safetensors/.ckpt file or a diffusers Stable Diffusion folder."
        )
    for sub in ("unet", "text_encoder") + (() if vae_sd is not None else ("vae",)):
        if not (path / sub).is_dir():
            raise UnsupportedModelError(f"{path / sub} is missing: a diffusers SD folder needs unet/, text_encoder/, vae/.")
    unet = UNet2DConditionModel.from_pretrained(str(path), subfolder="unet", local_files_only=True)
    if unet.config.in_channels != 4 or unet.config.addition_embed_type is not None:
        raise UnsupportedModelError(
            f"{path / 'unet'}: in_channels={unet.config.in_channels}, addition_embed_type="
            f"{unet.config.addition_embed_type}; only SD1.x/SD2.x text-to-image UNets are supported."
        )
    te = CLIPTextModel.from_pretrained(str(path / "text_encoder"), local_files_only=True)
    version = SD2 if te.config.hidden_act == "gelu" else SD1
    v_prediction = v_prediction or _scheduler_says_v(path)
    if vae_sd is not None:
        vae_ldm, hints = normalize_vae_state_dict(vae_sd)
        vae = build_vae(vae_ldm, version, v_prediction, hints)
    else:
        vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae", local_files_only=True)
    if tokenizer_dir is None:
        if not (path / "tokenizer").is_dir():
            raise _missing_tokenizer(path)
        tokenizer_dir = path / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir, version)
    bundle = ModelBundle(
        unet=unet, text_encoder=te, vae=vae, tokenizer=tokenizer,
        noise_scheduler=make_noise_scheduler(v_prediction), version=version, v_prediction=v_prediction,
        vae_scale_factor=float(getattr(vae.config, "scaling_factor", 0.18215)), model_name=path.name,
        vae_name=vae_path.name if vae_path is not None else None,
    )
    bundle.extra["path"] = str(path)
    bundle.freeze()
    return bundle


def _scheduler_says_v(path: Path) -> bool:
    cfg = path / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("prediction_type") == "v_prediction"
    except (OSError, ValueError):
        return False
