"""On-disk latent cache: one .safetensors file per image and bucket, so a second run skips the VAE.

A file's name hashes the image's absolute path, bucket, modification time and byte size (an edited
image gets a new entry) plus a caller-chosen `cache_key` that should identify the encoder (e.g.
the VAE's hash), since latents from another VAE would be silently wrong.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch

PathLike = Union[str, Path]

LATENT = "latent"
LATENT_FLIPPED = "latent_flipped"


class LatentDiskCache:
    def __init__(self, directory: PathLike, cache_key: str = ""):
        self.directory = Path(directory)
        self.cache_key = cache_key

    def file_for(self, image_path: Path, bucket: tuple[int, int]) -> Path:
        stat = image_path.stat()
        identity = "|".join([str(image_path.resolve()), f"{bucket[0]}x{bucket[1]}",
                             str(stat.st_mtime_ns), str(stat.st_size), self.cache_key])
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:24]
        return self.directory / f"{image_path.stem[:40]}-{bucket[0]}x{bucket[1]}-{digest}.safetensors"

    def load(self, image_path: Path, bucket: tuple[int, int],
             need_flipped: bool) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(latent, flipped latent or None), or None on a miss or an unreadable file."""
        from safetensors.torch import load_file

        try:
            path = self.file_for(image_path, bucket)
            if not path.is_file():
                return None
            tensors = load_file(str(path))
        except Exception:
            return None  # a damaged cache file is simply encoded again
        latent = tensors.get(LATENT)
        flipped = tensors.get(LATENT_FLIPPED)
        if latent is None or (need_flipped and flipped is None):
            return None
        return latent.float(), (flipped.float() if flipped is not None else None)

    def save(self, image_path: Path, bucket: tuple[int, int], latent: torch.Tensor,
             flipped: Optional[torch.Tensor]) -> None:
        """Write atomically: a crash never leaves a half-written file that a later run would trust."""
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.file_for(image_path, bucket)
        tensors = {LATENT: latent.contiguous()}
        if flipped is not None:
            tensors[LATENT_FLIPPED] = flipped.contiguous()
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"image": str(image_path), "bucket": f"{bucket[0]}x{bucket[1]}"})
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
