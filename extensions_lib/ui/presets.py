"""Starting points for common jobs. A preset sets only the options it is about; the dataset folder
and everything else the user typed stay as they are."""
from __future__ import annotations

import copy

from ..config import TrainConfig

PRESETS: dict[str, dict] = {
    "SD1.5 character LoRA (8 GB)": {
        "_about": "A person or character from 15-50 images on an 8 GB GPU: fp16 autocast, gradient "
                  "checkpointing, 8-bit AdamW, rank 16.",
        "network.method": "lora", "network.dim": 16, "network.alpha": 8.0,
        "network.train_unet": True, "network.train_text_encoder": True,
        "data.resolution": 512, "data.enable_buckets": True, "data.cache_latents": True,
        "data.shuffle_caption": False, "data.flip_aug": False,
        "training.max_train_epochs": 10, "training.max_train_steps": 0, "training.train_batch_size": 1,
        "training.gradient_accumulation_steps": 1, "training.gradient_checkpointing": True,
        "training.mixed_precision": "fp16", "training.optimizer": "adamw8bit",
        "training.learning_rate": 1e-4, "training.unet_lr": 1e-4, "training.text_encoder_lr": 5e-5,
        "training.lr_scheduler": "cosine", "training.lr_warmup_steps": 0.05,
        "training.noise_offset": 0.0, "training.min_snr_gamma": 5.0,
        "output.save_every_n_epochs": 2, "output.save_precision": "fp16", "output.preferred_weight": 0.8,
    },
    "SD1.5 style LoRA": {
        "_about": "An art style from 50+ varied images: higher rank, shuffled tags, flips, "
                  "a gentler text encoder.",
        "network.method": "lora", "network.dim": 32, "network.alpha": 16.0,
        "network.train_unet": True, "network.train_text_encoder": True,
        "data.resolution": 512, "data.enable_buckets": True, "data.shuffle_caption": True,
        "data.keep_tokens": 1, "data.flip_aug": True,
        "training.max_train_epochs": 15, "training.max_train_steps": 0, "training.train_batch_size": 2,
        "training.optimizer": "adamw", "training.learning_rate": 1e-4, "training.unet_lr": 1e-4,
        "training.text_encoder_lr": 2e-5, "training.lr_scheduler": "cosine_with_restarts",
        "training.lr_scheduler_num_cycles": 3, "training.lr_warmup_steps": 0.0,
        "training.noise_offset": 0.05, "training.min_snr_gamma": 5.0,
        "output.save_every_n_epochs": 5, "output.preferred_weight": 0.7,
    },
    "LoCon detail": {
        "_about": "LoRA plus the 3x3 convolutions (LoCon): picks up textures and fine detail.",
        "network.method": "locon", "network.dim": 16, "network.alpha": 8.0,
        "network.conv_dim": 8, "network.conv_alpha": 4.0,
        "network.train_unet": True, "network.train_text_encoder": True,
        "training.max_train_epochs": 10, "training.max_train_steps": 0, "training.train_batch_size": 1,
        "training.optimizer": "adamw", "training.learning_rate": 1e-4, "training.unet_lr": -1.0,
        "training.text_encoder_lr": 5e-5, "training.lr_scheduler": "cosine", "training.lr_warmup_steps": 0.0,
        "training.min_snr_gamma": 5.0, "output.preferred_weight": 0.8,
    },
    "Embedding (textual inversion)": {
        "_about": "A new prompt word learnt from a few images; the model itself is untouched. "
                  "Rename the token to your word.",
        "network.method": "embedding", "embedding.token": "my-embedding", "embedding.num_vectors": 4,
        "embedding.init_text": "*", "embedding.prompt_source": "captions",
        "output.name": "my-embedding",
        "training.max_train_epochs": 10, "training.max_train_steps": 1500, "training.train_batch_size": 1,
        "training.optimizer": "adamw", "training.learning_rate": 5e-3, "training.unet_lr": -1.0,
        "training.text_encoder_lr": -1.0, "training.lr_scheduler": "constant", "training.lr_warmup_steps": 0.0,
        "training.weight_decay": 0.0, "training.min_snr_gamma": 0.0,
        "data.shuffle_caption": False, "data.reg_dir": "",
    },
    "Hypernetwork": {
        "_about": "The WebUI's hypernetwork: a small MLP on the attention keys and values "
                  "(use as <hypernet:name:1>).",
        "network.method": "hypernetwork", "hypernetwork.layer_structure": [1, 2, 1],
        "hypernetwork.activation": "linear", "hypernetwork.layer_norm": False,
        "hypernetwork.use_dropout": False, "hypernetwork.weight_init": "Normal",
        "output.name": "my-hypernetwork",
        "training.max_train_epochs": 10, "training.max_train_steps": 2000, "training.train_batch_size": 1,
        "training.optimizer": "adamw", "training.learning_rate": 1e-5, "training.unet_lr": -1.0,
        "training.text_encoder_lr": -1.0, "training.lr_scheduler": "constant", "training.lr_warmup_steps": 0.0,
        "training.weight_decay": 0.0,
    },
}

DEFAULTS = "Defaults"


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_values(name: str) -> dict:
    """{"section.key": value} a preset sets (its description left out)."""
    if name == DEFAULTS:
        return {f"{s}.{k}": v for s, sec in TrainConfig().to_dict().items() if isinstance(sec, dict)
                for k, v in sec.items() if s not in ("data", "model") and (s, k) != ("output", "output_dir")}
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return {k: copy.deepcopy(v) for k, v in PRESETS[name].items() if not k.startswith("_")}


def preset_about(name: str) -> str:
    if name == DEFAULTS:
        return "Every option back to its default (the dataset folder is kept)."
    return PRESETS.get(name, {}).get("_about", "")


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    """A copy of `cfg` with the preset's options set."""
    data = cfg.to_dict()
    for key, value in preset_values(name).items():
        section, field = key.split(".", 1)
        data[section][field] = value
    return TrainConfig.from_dict(data)
