"""Safetensors metadata (all values str) in the layout sd-scripts writes, which the WebUI, ComfyUI,
Civitai and the kohya tools read: ss_* training keys plus modelspec.* (Stability AI's ModelSpec).

Value conventions follow sd-scripts (train_network.py converts everything with str()): bools ->
"True"/"False", dicts -> JSON, resolution -> "(w, h)". One deliberate difference: sd-scripts writes
"None" for what it does not know; we leave such keys out (an unknown value, an empty comment), so a
reader never mistakes a placeholder for a fact. The WebUI compares ss_v2 to "True", reads
ss_base_model_version's "sdxl_" prefix and float(ss_training_started_at), all with .get().
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Mapping

# modelspec.implementation as sd-scripts' sai_model_spec.py chooses it: LoRA on SD1/SD2 uses diffusers
# module names -> "diffusers"; SDXL LoRA and textual inversion -> the Stability AI reference code.
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"
MODELSPEC_VERSION = "1.0.0"

ADAPTER_LORA = "lora"
ADAPTER_TEXTUAL_INVERSION = "textual-inversion"

# ss_base_model_version -> modelspec architecture (sd-scripts model_util / sai_model_spec)
ARCHITECTURE_BY_BASE_VERSION = {
    "sd_v1": "stable-diffusion-v1",
    "sd_v1_v": "stable-diffusion-v1",
    "sd_v2": "stable-diffusion-v2-512",
    "sd_v2_v": "stable-diffusion-v2-768-v",
    "sdxl_base_v1-0": "stable-diffusion-xl-v1-base",
}
PREDICTION_TYPES = ("epsilon", "v")

# the ss_* keys lora_metadata writes (each only when its value is known)
_LORA_SS_KEYS = (
    "ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
    "ss_base_model_version", "ss_v2", "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash",
    "ss_vae_name", "ss_resolution", "ss_num_train_images", "ss_num_reg_images", "ss_num_epochs", "ss_epoch",
    "ss_steps", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler",
    "ss_lr_warmup_steps", "ss_clip_skip", "ss_max_token_length", "ss_mixed_precision", "ss_noise_offset",
    "ss_min_snr_gamma", "ss_seed", "ss_tag_frequency", "ss_dataset_dirs", "ss_training_started_at",
    "ss_training_finished_at", "ss_training_comment", "ss_validation_loss",
)


def _s(value: Any) -> str:
    """str() as sd-scripts applies it to every ss_* value (True -> "True")."""
    return str(value)


def _unknown(value: Any) -> bool:
    """None, "", "None": a placeholder, not a value; its key is left out."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def _known(pairs: Mapping[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else _s(v) for k, v in pairs.items() if not _unknown(v)}


def _json(value: Mapping[str, Any], field: str) -> str:
    if not isinstance(value, Mapping):
        raise TypeError(f"{field} must be a dict, got {type(value).__name__}")
    return json.dumps(value)


def _resolution(resolution: Any) -> tuple[int, int]:
    try:
        w, h = resolution
        w, h = int(w), int(h)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be (width, height), got {resolution!r}") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return w, h


def _prediction_type(v_prediction: bool, prediction_type: str | None) -> str:
    derived = "v" if v_prediction else "epsilon"
    if prediction_type is None:
        return derived
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if prediction_type != derived:
        raise ValueError(f"prediction_type {prediction_type!r} contradicts v_prediction={v_prediction}")
    return prediction_type


def iso_date(timestamp: float) -> str:
    """ISO-8601 local time with UTC offset, whole seconds (modelspec.date)."""
    return datetime.datetime.fromtimestamp(int(timestamp)).astimezone().isoformat()


def default_implementation(architecture: str, adapter: str) -> str:
    if adapter == ADAPTER_TEXTUAL_INVERSION or architecture.startswith("stable-diffusion-xl"):
        return IMPL_STABILITY_AI
    return IMPL_DIFFUSERS


def modelspec_metadata(
    *,
    architecture: str,
    adapter: str,
    title: str,
    resolution: tuple[int, int],
    timestamp: float,
    prediction_type: str,
    implementation: str | None = None,
    encoder_layer: int | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """The modelspec.* keys shared by every adapter we write. Optional keys are left out when None,
    as sd-scripts does."""
    if not architecture or "/" in architecture:
        raise ValueError(f"architecture must be a base model id like 'stable-diffusion-v1', got {architecture!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    w, h = _resolution(resolution)
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{architecture}/{adapter}",
        "modelspec.implementation": implementation or default_implementation(architecture, adapter),
        "modelspec.title": str(title),
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": iso_date(timestamp),
        "modelspec.prediction_type": prediction_type,
    }
    if encoder_layer is not None:
        meta["modelspec.encoder_layer"] = str(int(encoder_layer))
    if description is not None:
        meta["modelspec.description"] = str(description)
    return meta


def _check_base_version(base_model_version: str, v2: bool, v_prediction: bool) -> None:
    if base_model_version not in ARCHITECTURE_BY_BASE_VERSION:
        raise ValueError(
            f"base_model_version {base_model_version!r} is unknown; use one of {sorted(ARCHITECTURE_BY_BASE_VERSION)}"
        )
    if base_model_version.startswith("sd_"):
        if base_model_version.startswith("sd_v2") != bool(v2):
            raise ValueError(f"base_model_version {base_model_version!r} contradicts v2={v2}")
        if base_model_version.endswith("_v") != bool(v_prediction):
            raise ValueError(f"base_model_version {base_model_version!r} contradicts v_prediction={v_prediction}")
    elif v2:
        raise ValueError(f"base_model_version {base_model_version!r} contradicts v2=True")


def lora_metadata(
    *,
    output_name: str,
    network_module: str,
    dim: int | None,
    alpha: float | None,
    network_args: Mapping[str, Any],
    base_model_version: str,
    v2: bool,
    v_prediction: bool,
    sd_model_name: str | None,
    sd_model_hash: str | None,
    sd_new_model_hash: str | None,
    vae_name: str | None,
    resolution: tuple[int, int],
    num_train_images: int,
    num_reg_images: int,
    num_epochs: int,
    epoch: int,
    steps: int,
    learning_rate: float | None,
    unet_lr: float | None,
    text_encoder_lr: float | None,
    optimizer: str,
    lr_scheduler: str,
    lr_warmup_steps: int,
    clip_skip: int | None,
    max_token_length: int | None,
    mixed_precision: str,
    noise_offset: float | None,
    min_snr_gamma: float | None,
    seed: int | None,
    tag_frequency: Mapping[str, Mapping[str, int]],
    dataset_dirs: Mapping[str, Mapping[str, int]],
    training_started_at: float,
    training_finished_at: float | None,
    comment: str | None,
    architecture: str | None = None,
    implementation: str | None = None,
    title: str | None = None,
    prediction_type: str | None = None,
    description: str | None = None,
    extra: Mapping[str, Any] | None = None,
    validation_loss: float | None = None,
) -> dict[str, str]:
    """ss_* + modelspec.* metadata of a kohya-format LoRA / LyCORIS file; every value is a str.
    validation_loss (ss_validation_loss, our own key; sd-scripts has none): the latest validation loss
    when the file was saved (data.validation_split / data.validation_dir), left out without one.
    A value that is None (unknown: model hash, VAE, seed, finish time, ...) or an empty string leaves
    its key out. num_epochs is the number of epochs the run trains (fewer than configured when
    max steps end it early), not the configured epoch count.

    architecture defaults from base_model_version, implementation as sd-scripts picks it, title to
    output_name, prediction_type from v_prediction. `extra` adds more ss_* keys (str()-converted).
    modelspec.date is the save time: training_finished_at, else training_started_at.
    Add the sshs_* hashes afterwards with hashes.with_hashes().
    """
    _check_base_version(base_model_version, v2, v_prediction)
    w, h = _resolution(resolution)
    meta = _known({
        "ss_output_name": _s(output_name),
        "ss_network_module": _s(network_module),
        "ss_network_dim": _s(dim),
        "ss_network_alpha": _s(alpha),
        "ss_network_args": _json(network_args, "network_args"),
        "ss_base_model_version": base_model_version,
        "ss_v2": _s(bool(v2)),
        "ss_sd_model_name": _s(sd_model_name),
        "ss_sd_model_hash": _s(sd_model_hash),
        "ss_new_sd_model_hash": _s(sd_new_model_hash),
        "ss_vae_name": _s(vae_name),
        "ss_resolution": _s((w, h)),
        "ss_num_train_images": _s(num_train_images),
        "ss_num_reg_images": _s(num_reg_images),
        "ss_num_epochs": _s(num_epochs),
        "ss_epoch": _s(epoch),
        "ss_steps": _s(steps),
        "ss_learning_rate": _s(learning_rate),
        "ss_unet_lr": _s(unet_lr),
        "ss_text_encoder_lr": _s(text_encoder_lr),
        "ss_optimizer": _s(optimizer),
        "ss_lr_scheduler": _s(lr_scheduler),
        "ss_lr_warmup_steps": _s(lr_warmup_steps),
        "ss_clip_skip": _s(clip_skip),
        "ss_max_token_length": _s(max_token_length),
        "ss_mixed_precision": _s(mixed_precision),
        "ss_noise_offset": _s(noise_offset),
        "ss_min_snr_gamma": _s(min_snr_gamma),
        "ss_seed": _s(seed),
        "ss_tag_frequency": _json(tag_frequency, "tag_frequency"),
        "ss_dataset_dirs": _json(dataset_dirs, "dataset_dirs"),
        "ss_training_started_at": _s(float(training_started_at)),
        "ss_training_finished_at": None if training_finished_at is None else float(training_finished_at),
        "ss_training_comment": comment,
        "ss_validation_loss": None if validation_loss is None else _s(float(validation_loss)),
    })
    standard = set(_LORA_SS_KEYS)
    for key, value in (extra or {}).items():
        if not key.startswith("ss_") or key in standard:
            raise ValueError(f"extra metadata key {key!r} must start with 'ss_' and not replace a standard key")
    meta.update(_known(extra or {}))

    arch = architecture or ARCHITECTURE_BY_BASE_VERSION[base_model_version]
    meta.update(
        modelspec_metadata(
            architecture=arch,
            adapter=ADAPTER_LORA,
            title=output_name if title is None else title,
            resolution=(w, h),
            timestamp=training_started_at if training_finished_at is None else training_finished_at,
            prediction_type=_prediction_type(v_prediction, prediction_type),
            implementation=implementation,
            encoder_layer=clip_skip,
            description=description,
        )
    )
    return meta


def embedding_metadata(
    *,
    name: str,
    step: int,
    sd_checkpoint: str | None,
    sd_checkpoint_name: str | None,
    num_vectors_per_token: int,
    init_text: str,
    architecture: str,
    resolution: tuple[int, int],
    saved_at: float,
    v_prediction: bool = False,
    clip_skip: int | None = None,
    implementation: str | None = None,
    title: str | None = None,
    prediction_type: str | None = None,
    description: str | None = None,
) -> dict[str, str]:
    """Metadata of a textual-inversion .safetensors: the WebUI .pt fields (name, step, sd_checkpoint =
    checkpoint short hash, sd_checkpoint_name) plus vectors / init text and modelspec.*; all str;
    unknown values (None) leave their key out.
    The WebUI itself ignores safetensors metadata of embeddings (the name comes from the file name)."""
    meta = _known({
        "name": str(name),
        "step": _s(int(step)),
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
        "num_vectors_per_token": _s(int(num_vectors_per_token)),
        "init_text": str(init_text),
    })
    meta.update(
        modelspec_metadata(
            architecture=architecture,
            adapter=ADAPTER_TEXTUAL_INVERSION,
            title=name if title is None else title,
            resolution=resolution,
            timestamp=saved_at,
            prediction_type=_prediction_type(v_prediction, prediction_type),
            implementation=implementation,
            encoder_layer=clip_skip,
            description=description,
        )
    )
    return meta
