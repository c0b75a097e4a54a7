"""Writers for the on-disk formats: atomic, never overwriting unasked, with the metadata and hashes the
WebUI and the kohya ecosystem read."""
from .atomic import OutputExistsError, atomic_write, save_safetensors, save_torch_legacy
from .hashes import (
    autov2_hash,
    file_sha256,
    legacy_hash,
    model_hash_sha256,
    safetensors_data_sha256,
    with_hashes,
)
from .metadata import embedding_metadata, lora_metadata, modelspec_metadata
from .naming import output_path, validate_output_name
from .preflight import OutputClashError, SavePlan, estimated_file_bytes, folder_problem, space_problem
from .sidecar import dataset_thumbnail, existing_previews, write_lora_sidecar, write_preview_png

__all__ = [
    "OutputExistsError",
    "OutputClashError",
    "SavePlan",
    "estimated_file_bytes",
    "folder_problem",
    "space_problem",
    "atomic_write",
    "save_safetensors",
    "save_torch_legacy",
    "autov2_hash",
    "file_sha256",
    "legacy_hash",
    "model_hash_sha256",
    "safetensors_data_sha256",
    "with_hashes",
    "embedding_metadata",
    "lora_metadata",
    "modelspec_metadata",
    "output_path",
    "validate_output_name",
    "dataset_thumbnail",
    "existing_previews",
    "write_lora_sidecar",
    "write_preview_png",
]
