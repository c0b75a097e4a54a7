"""Errors of the model layer. Each message says what was found and what would work instead."""
from __future__ import annotations


class ModelError(ValueError):
    """Base of every model-loading problem caused by the input (not by a bug)."""


class UnsupportedModelError(ModelError):
    """The state dict is not an SD1.x / SD2.x text-to-image checkpoint we can train on."""


class CheckpointError(ModelError):
    """A checkpoint file exists but cannot be read safely."""


class TokenizerError(ModelError):
    """No usable CLIP tokenizer was given or found."""
