"""Files the WebUI reads next to a model: the user-metadata `<name>.json` and a preview image.

Facts from the WebUI v1.10.1 source:
- extensions-builtin/Lora/ui_edit_user_metadata.py saves the keys "description", "sd version",
  "activation text", "preferred weight" (a float from a 0..2 slider; 0 = use the default
  multiplier), "negative text", "notes"; modules/ui_extra_networks_user_metadata.py writes them as
  `<model path without extension>.json`, UTF-8, json.dump(indent=4, ensure_ascii=False).
- extensions-builtin/Lora/ui_extra_networks_lora.py accepts "sd version" only if it is a member
  name of network.SdVersion: "Unknown", "SD1", "SD2", "SDXL"; it overrides the version detected
  from the metadata, which decides whether the card is hidden for the loaded model.
- modules/ui_extra_networks.py find_preview() tries, per image extension, `<path>.<ext>` before
  `<path>.preview.<ext>`, so an existing `<name>.png` hides our `<name>.preview.png`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from .atomic import atomic_write

SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")  # the WebUI's defaults (+ its samples format)
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def _stem(model_path: str | os.PathLike[str]) -> str:
    return os.path.splitext(os.fspath(model_path))[0]


def sidecar_path(model_path: str | os.PathLike[str]) -> str:
    return _stem(model_path) + ".json"


def preview_path(model_path: str | os.PathLike[str]) -> str:
    # `<name>.png` is the first name the WebUI's card looks for
    return _stem(model_path) + ".png"


def write_lora_sidecar(
    lora_path: str | os.PathLike[str],
    *,
    activation_text: str = "",
    preferred_weight: float = 0.0,
    sd_version: str = "Unknown",
    negative_text: str = "",
    notes: str = "",
    description: str = "",
    overwrite: bool,
) -> str:
    """Write the Lora user-metadata file `<name>.json` that the WebUI's card editor reads and edits.
    Returns its path."""
    if sd_version not in SD_VERSIONS:
        raise ValueError(f"sd_version {sd_version!r} is not one the WebUI knows; use one of {SD_VERSIONS}")
    weight = float(preferred_weight)
    if not math.isfinite(weight) or not 0.0 <= weight <= 2.0:
        raise ValueError(
            f"preferred_weight {preferred_weight!r} is outside the WebUI's 0..2 range (0 = use the default weight)"
        )
    data: dict[str, Any] = {
        "description": str(description),
        "sd version": sd_version,
        "activation text": str(activation_text),
        "preferred weight": weight,
        "negative text": str(negative_text),
        "notes": str(notes),
    }
    text = json.dumps(data, indent=4, ensure_ascii=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(sidecar_path(lora_path), write, overwrite=overwrite)


def existing_previews(model_path: str | os.PathLike[str]) -> list[str]:
    """Preview files the WebUI could pick for this model, in its lookup order per extension."""
    stem = _stem(model_path)
    candidates = [p for ext in PREVIEW_EXTENSIONS for p in (f"{stem}.{ext}", f"{stem}.preview.{ext}")]
    return [p for p in candidates if os.path.isfile(p)]


def write_preview_png(model_path: str | os.PathLike[str], image: Any, *, overwrite: bool, infotext: str | None = None) -> str:
    """Write `<name>.png` next to the model (PIL image). `infotext` goes into the PNG
    "parameters" text chunk, where the WebUI looks for generation parameters. Returns the path."""
    from PIL import Image, PngImagePlugin

    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    img = image if image.mode in _PNG_MODES else image.convert("RGBA" if "A" in image.mode else "RGB")
    pnginfo = None
    if infotext:
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", infotext)

    # format must be explicit: the temporary file's name does not end in .png
    return atomic_write(
        preview_path(model_path), lambda tmp: img.save(tmp, format="PNG", pnginfo=pnginfo), overwrite=overwrite
    )


THUMBNAIL_SIZE = 384


def _center_square(image: Any, side: int) -> Any:
    from PIL import Image

    w, h = image.size
    edge = min(w, h)
    left, top = (w - edge) // 2, (h - edge) // 2
    return image.crop((left, top, left + edge, top + edge)).resize((side, side), Image.LANCZOS)


def dataset_thumbnail(images: list, size: int = THUMBNAIL_SIZE) -> Any:
    """A card picture made from training images (RGB PIL images): each center-cropped square; four
    or more make a 2x2 grid, fewer show the first one. For a LoRA trained without preview prompts."""
    from PIL import Image

    if not images:
        raise ValueError("dataset_thumbnail needs at least one image")
    if len(images) < 4:
        return _center_square(images[0].convert("RGB"), size)
    half = size // 2
    grid = Image.new("RGB", (half * 2, half * 2))
    for i, image in enumerate(images[:4]):
        grid.paste(_center_square(image.convert("RGB"), half), ((i % 2) * half, (i // 2) * half))
    return grid
