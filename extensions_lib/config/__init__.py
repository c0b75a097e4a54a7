"""TrainConfig: every training option, typed and documented, with TOML in/out and validation.

The same object is filled by the WebUI tab, the CLI (`train CONFIG.toml --set key=value`) and the
REST API. `validate()` returns every problem at once (field, value, what is allowed) so a user
fixes a config in one go, before any model work starts.

    schema.py        the options: section dataclasses with defaults, help text and limits
    problems.py      ConfigProblem / ConfigError
    coerce.py        user values (TOML, JSON, --set text, form fields) into each option's type
    validate.py      per-option limits and the rules between options
    toml_io.py       reading and writing TOML (tomli_w), with comments for the default config
    train_config.py  TrainConfig itself
    standalone.py    what a run outside the WebUI needs from [model]
"""
from .problems import ConfigError, ConfigProblem
from .schema import (ACTIVATIONS, CONFIG_VERSION, LORA_FAMILY, METHODS, OPTIMIZERS, PRECISIONS, PROMPT_SOURCES,
                     SAVE_PRECISIONS, SCHEDULERS, SECTIONS, WEIGHT_INITS, DataConfig, EmbeddingConfig,
                     HypernetworkConfig, ModelConfig, NetworkConfig, OutputConfig, SampleConfig, TrainingConfig,
                     iter_fields, opt)
from .standalone import standalone_model_problems
from .toml_io import TomlWriteError, commented_toml, dumps_toml, read_toml
from .train_config import TrainConfig

__all__ = [
    "ACTIVATIONS", "CONFIG_VERSION", "LORA_FAMILY", "METHODS", "OPTIMIZERS", "PRECISIONS", "PROMPT_SOURCES",
    "SAVE_PRECISIONS", "SCHEDULERS", "SECTIONS", "WEIGHT_INITS", "ConfigError", "ConfigProblem", "DataConfig",
    "EmbeddingConfig", "HypernetworkConfig", "ModelConfig", "NetworkConfig", "OutputConfig", "SampleConfig",
    "TomlWriteError", "TrainConfig", "TrainingConfig", "commented_toml", "dumps_toml", "iter_fields", "opt",
    "read_toml", "standalone_model_problems",
]
