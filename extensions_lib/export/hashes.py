"""Hashes the WebUI and kohya tools use to identify a model file.

Definitions (sd-scripts library/train_util.py: precalculate_safetensors_hashes, addnet_hash_safetensors,
addnet_hash_legacy; the WebUI's modules/hashes.py addnet_hash_safetensors is the same):
- sshs_model_hash: sha256 hex of the safetensors data section, i.e. every byte after the
  8-byte length + JSON header. The WebUI's Lora list takes it as the LoRA's hash (short hash =
  first 12 hex) and only hashes the file itself when the key is missing.
- sshs_legacy_hash: first 8 hex of sha256 over bytes [0x100000, 0x110000) of the file *as it
  would be serialized with only the ss_* metadata keys* (the whole file, header included, so it
  depends on the ss_* metadata; a file shorter than 1 MiB hashes the empty string).
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping

import torch

from .checks import check_str_metadata, check_tensor_dict

_CHUNK = 1024 * 1024
_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000


def _serialize_training_only(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> bytes:
    import safetensors.torch

    check_tensor_dict(tensors)
    check_str_metadata(metadata)
    # only the immutable training keys, as sd-scripts and additional-networks do, so that user edits of
    # other metadata (titles, descriptions, the sshs_* keys themselves) leave the hashes valid
    training = {k: v for k, v in (metadata or {}).items() if k.startswith("ss_")}
    return safetensors.torch.save(dict(tensors), training)


def _data_section(file_bytes: bytes) -> bytes:
    header_len = int.from_bytes(file_bytes[:8], "little")
    return file_bytes[8 + header_len:]


def _legacy_digest(window: bytes) -> str:
    return hashlib.sha256(window).hexdigest()[:8]


def _legacy_of_bytes(file_bytes: bytes) -> str:
    return _legacy_digest(file_bytes[_LEGACY_OFFSET:_LEGACY_OFFSET + _LEGACY_LENGTH])


def legacy_file_hash(path: str | os.PathLike[str]) -> str:
    """The same 64 KiB-at-1 MiB rule over a file on disk: the WebUI's old checkpoint hash."""
    with open(path, "rb") as f:
        f.seek(_LEGACY_OFFSET)
        return _legacy_digest(f.read(_LEGACY_LENGTH))


def model_hash_sha256(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """sshs_model_hash: sha256 of the data section. Metadata does not change it (the data offsets do not
    depend on the header), it is accepted only to mirror sd-scripts' signature."""
    return hashlib.sha256(_data_section(_serialize_training_only(tensors, metadata))).hexdigest()


def legacy_hash(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """sshs_legacy_hash, see the module docstring."""
    return _legacy_of_bytes(_serialize_training_only(tensors, metadata))


def with_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Return a copy of `metadata` with sshs_model_hash and sshs_legacy_hash added (one serialization).

    Call it with the final ss_* metadata: the legacy hash depends on it.
    """
    file_bytes = _serialize_training_only(tensors, metadata)
    out = dict(metadata or {})
    out["sshs_model_hash"] = hashlib.sha256(_data_section(file_bytes)).hexdigest()
    out["sshs_legacy_hash"] = _legacy_of_bytes(file_bytes)
    return out


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a whole file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def safetensors_data_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a .safetensors file's data section, streamed: what the WebUI computes for a LoRA
    file without sshs_model_hash (modules/hashes.py, use_addnet_hash=True)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_len)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def autov2_hash(path: str | os.PathLike[str]) -> str:
    """First 10 hex of the file's sha256: the short hash the WebUI shows for checkpoints
    (sd_models.CheckpointInfo.shorthash) and Civitai calls AutoV2."""
    return file_sha256(path)[:10]
