"""TrainConfig: the whole config (one attribute per section), its conversions and derived values."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .coerce import set_field
from .problems import ConfigError, ConfigProblem
from .schema import (CONFIG_VERSION, LORA_FAMILY, SECTIONS, DataConfig, EmbeddingConfig, HypernetworkConfig,
                     ModelConfig, NetworkConfig, OutputConfig, SampleConfig, TrainingConfig)
from .toml_io import dumps_toml, parse_value, read_toml
from .validate import validate


@dataclass
class TrainConfig:
    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # ---- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from nested dicts. Unknown sections/keys and uncoercible types are reported
        together as a ConfigError (so a typo in a TOML file is never silently ignored)."""
        problems: list[ConfigProblem] = []
        cfg = cls()
        for key, value in (data or {}).items():
            if key == "version":
                if value != CONFIG_VERSION:
                    problems.append(ConfigProblem("version", value, f"this version reads version {CONFIG_VERSION}"))
                continue
            if key not in SECTIONS:
                problems.append(ConfigProblem(key, value, f"unknown section; known: {', '.join(SECTIONS)}"))
                continue
            if not isinstance(value, dict):
                problems.append(ConfigProblem(key, value, "must be a table of options"))
                continue
            section = getattr(cfg, key)
            for name, v in value.items():
                set_field(section, key, name, v, problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        return cls.from_dict(read_toml(path))

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save_toml(self, path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    def set(self, dotted: str, raw: str) -> None:
        """Apply one `section.key=value` override; the value is parsed as TOML (falls back to a string)."""
        if "." not in dotted:
            raise ConfigError([ConfigProblem(dotted, raw, "use section.key, e.g. training.learning_rate")])
        section_name, name = dotted.split(".", 1)
        if section_name not in SECTIONS:
            raise ConfigError([ConfigProblem(dotted, raw, f"unknown section; known: {', '.join(SECTIONS)}")])
        problems: list[ConfigProblem] = []
        set_field(getattr(self, section_name), section_name, name, parse_value(raw), problems)
        if problems:
            raise ConfigError(problems)

    # ---- derived values ----------------------------------------------------------------------
    @property
    def is_lora_family(self) -> bool:
        return self.network.method in LORA_FAMILY

    @property
    def unet_lr(self) -> float:
        return self.training.learning_rate if self.training.unet_lr < 0 else self.training.unet_lr

    @property
    def text_encoder_lr(self) -> float:
        t = self.training
        return t.learning_rate if t.text_encoder_lr < 0 else t.text_encoder_lr

    @property
    def output_name(self) -> str:
        if self.network.method == "embedding" and self.embedding.token and self.output.name in ("", "my_lora"):
            return self.embedding.token
        return self.output.name

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> list[ConfigProblem]:
        """Every problem of the config at once (field, value, what is allowed)."""
        return validate(self)

    def check(self) -> "TrainConfig":
        problems = self.validate()
        if problems:
            raise ConfigError(problems)
        return self
