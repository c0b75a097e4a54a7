"""TrainConfig fields <-> form values: labels, widgets and the two-way conversion.

The tab builds one widget per config field from its metadata (type, choices, limits, help), so a
new option in config/schema.py shows up in the UI with its tooltip without touching the tab's code.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..config import ConfigError, ConfigProblem, TrainConfig, iter_fields

METHOD_LABELS = (("LoRA", "lora"), ("LoCon", "locon"), ("LoHa", "loha"), ("LoKr", "lokr"),
                 ("Embedding", "embedding"), ("Hypernetwork", "hypernetwork"))

# Labels where the field name alone reads badly; everything else is derived from the name.
LABELS = {
    "model.v_prediction": "v-prediction model",
    "model.clip_skip": "Clip skip",
    "data.train_dir": "Dataset folder",
    "data.reg_dir": "Regularization folder",
    "data.enable_buckets": "Aspect-ratio buckets",
    "data.min_bucket_reso": "Min bucket side",
    "data.max_bucket_reso": "Max bucket side",
    "data.bucket_reso_steps": "Bucket step",
    "data.cache_latents_to_disk": "Cache latents to disk",
    "data.max_token_length": "Max token length",
    "data.caption_tag_dropout_rate": "Tag dropout rate",
    "network.method": "Method",
    "network.dim": "Network dim (rank)",
    "network.alpha": "Network alpha",
    "network.conv_dim": "Conv dim",
    "network.conv_alpha": "Conv alpha",
    "network.lokr_factor": "LoKr factor",
    "network.train_unet": "Train UNet",
    "network.train_text_encoder": "Train text encoder",
    "embedding.token": "Token (prompt word)",
    "embedding.init_text": "Initialization text",
    "embedding.num_vectors": "Vectors per token",
    "embedding.save_pt": "Save as .pt",
    "hypernetwork.layer_norm": "Layer norm",
    "hypernetwork.weight_init": "Weight initialization",
    "hypernetwork.sizes": "Attach to widths",
    "training.max_train_epochs": "Epochs",
    "training.max_train_steps": "Max steps",
    "training.train_batch_size": "Batch size",
    "training.gradient_accumulation_steps": "Gradient accumulation",
    "training.gradient_checkpointing": "Gradient checkpointing",
    "training.max_grad_norm": "Max grad norm",
    "training.unet_lr": "UNet LR",
    "training.text_encoder_lr": "Text encoder LR",
    "training.lr_scheduler": "LR scheduler",
    "training.lr_warmup_steps": "Warmup steps",
    "training.lr_scheduler_num_cycles": "Scheduler cycles",
    "training.lr_scheduler_power": "Scheduler power",
    "training.min_snr_gamma": "Min-SNR gamma",
    "sample.prompts": "Preview prompts (one per line)",
    "sample.every_n_epochs": "Every N epochs",
    "sample.every_n_steps": "Every N steps",
    "sample.cfg_scale": "CFG scale",
    "sample.seed": "Preview seed",
    "output.name": "Output name",
    "output.output_dir": "Output folder",
    "output.save_every_n_epochs": "Save every N epochs",
    "output.save_every_n_steps": "Save every N steps",
    "output.comment": "Comment (metadata)",
    "output.keep_best_validation": "Keep the best validation file",
}


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    key: str                 # "section.name"
    section: str
    name: str
    kind: type               # bool, int, float, str, list
    default: Any
    help: str
    choices: tuple | None
    minimum: float | None
    maximum: float | None

    @property
    def label(self) -> str:
        if self.key in LABELS:
            return LABELS[self.key]
        words = [{"lr": "LR", "reso": "resolution"}.get(x, x) for x in self.name.split("_")]
        text = " ".join(words)
        return text[:1].upper() + text[1:]

    @property
    def elem_id(self) -> str:
        return f"trainer_ext_{self.section}_{self.name}"


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def all_specs() -> dict[str, FieldSpec]:
    specs = {}
    for section, f in iter_fields():
        default = _default(f)
        meta = f.metadata
        specs[f"{section}.{f.name}"] = FieldSpec(
            key=f"{section}.{f.name}", section=section, name=f.name, kind=type(default), default=default,
            help=meta.get("help", ""), choices=tuple(meta["choices"]) if meta.get("choices") else None,
            minimum=meta.get("min"), maximum=meta.get("max"))
    return specs


SPECS = all_specs()


# -- conversions ------------------------------------------------------------------------------------
def to_ui(spec: FieldSpec, value: Any) -> Any:
    """Config value -> widget value."""
    if spec.key == "sample.prompts":
        return "\n".join(str(p) for p in value or [])
    if spec.kind is list:
        return ", ".join(str(x) for x in value or [])
    if spec.choices is not None and spec.key != "network.method":
        return str(value)
    return value


def from_ui(spec: FieldSpec, value: Any) -> Any:
    """Widget value -> what TrainConfig.from_dict accepts (it coerces and reports bad types)."""
    if spec.key == "sample.prompts":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if spec.kind is str:
        return "" if value is None else str(value)
    if spec.kind is list:
        return "" if value is None else str(value)   # "1, 2, 1" / "[1, 2, 1]" / "" -> list in from_dict
    if spec.kind is float and isinstance(value, str):
        return value.strip()
    return value


def config_to_values(cfg: TrainConfig, keys: list[str]) -> list:
    out = []
    for key in keys:
        section, name = key.split(".", 1)
        out.append(to_ui(SPECS[key], getattr(getattr(cfg, section), name)))
    return out


def values_to_config(keys: list[str], values: list, base: TrainConfig | None = None) -> TrainConfig:
    """Form values -> TrainConfig (fields without a widget keep `base`'s values).
    Raises ConfigError naming every field whose value has the wrong type; ranges and relations
    are checked later by cfg.validate()."""
    data = (base or TrainConfig()).to_dict()
    problems = []
    for key, value in zip(keys, values):
        section, name = key.split(".", 1)
        if value is None and SPECS[key].kind in (int, float):
            problems.append(ConfigProblem(key, value, "enter a number"))
            continue
        data[section][name] = from_ui(SPECS[key], value)
    if problems:
        raise ConfigError(problems)
    return TrainConfig.from_dict(data)
