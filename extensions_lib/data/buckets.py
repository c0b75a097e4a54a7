"""Aspect-ratio buckets, as sd-scripts builds them.

Every bucket holds at most resolution**2 pixels, its sides are multiples of `step` between
min_reso and max_reso. An image goes to the bucket whose aspect ratio is closest to its own, is
scaled to cover it and cropped to fit, so a batch (one bucket) has one tensor shape.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

from PIL import Image

Size = tuple[int, int]


def make_buckets(resolution: int, min_reso: int = 256, max_reso: int = 1024, step: int = 64) -> list[Size]:
    """All (width, height) buckets for a base resolution, sorted.

    For each width from min_reso to max_reso in steps, the tallest height that keeps the area
    within resolution**2 (and within the side limits), plus its transpose; the square bucket
    closest to the base resolution is always present.
    """
    if step <= 0 or min_reso <= 0 or max_reso < min_reso:
        raise ValueError(f"bucket sizes: need 0 < step and 0 < min_reso <= max_reso "
                         f"(got step={step}, min_reso={min_reso}, max_reso={max_reso})")
    max_area = resolution * resolution
    square = (resolution // step) * step
    buckets = {(square, square)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, (max_area // width) // step * step)
        if height >= min_reso:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def _log_aspect(width: float, height: float) -> float:
    # Log ratio, so that 2:1 and 1:2 are equally far from square.
    return math.log(width / height)


def nearest_bucket(width: int, height: int, buckets: Sequence[Size]) -> Size:
    """The bucket with the closest aspect ratio (ties: the first, i.e. the narrower bucket)."""
    target = _log_aspect(width, height)
    return min(buckets, key=lambda b: abs(_log_aspect(*b) - target))


def no_upscale_bucket(width: int, height: int, resolution: int, step: int = 64) -> Size:
    """The image's own size rounded down to the step, after shrinking it to the target area.

    Small images are never enlarged; large ones are scaled to at most resolution**2 pixels.
    Each side stays at least one step (a 40 px-wide image cannot become 0 px).
    """
    max_area = resolution * resolution
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    bucket_w = max(step, int(width * scale) // step * step)
    bucket_h = max(step, int(height * scale) // step * step)
    return bucket_w, bucket_h


def assign_bucket(width: int, height: int, *, resolution: int, min_reso: int = 256, max_reso: int = 1024,
                  step: int = 64, enabled: bool = True, no_upscale: bool = False,
                  buckets: Optional[Sequence[Size]] = None) -> Size:
    """The (width, height) an image of this size trains at.

    enabled=False: every image goes to (resolution, resolution). `buckets` may be passed to
    avoid rebuilding the list for every image.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not enabled:
        return resolution, resolution
    if no_upscale:
        return no_upscale_bucket(width, height, resolution, step)
    if buckets is None:
        buckets = make_buckets(resolution, min_reso, max_reso, step)
    return nearest_bucket(width, height, buckets)


def cover_size(size: Size, bucket: Size) -> Size:
    """The smallest aspect-preserving resize of `size` that covers `bucket`."""
    width, height = size
    scale = max(bucket[0] / width, bucket[1] / height)
    # Rounding may land one pixel short of the bucket; never go below it.
    return max(bucket[0], round(width * scale)), max(bucket[1], round(height * scale))


def center_crop_offset(size: Size, bucket: Size) -> tuple[int, int]:
    """(left, top) of the centred crop resize_and_crop takes, without decoding the image."""
    new_w, new_h = cover_size(size, bucket)
    return (new_w - bucket[0]) // 2, (new_h - bucket[1]) // 2


def resize_and_crop(img: Image.Image, bucket: Size, *, random_crop: bool = False,
                    rng: Optional[random.Random] = None) -> tuple[Image.Image, tuple[int, int]]:
    """Scale `img` to cover `bucket`, crop to exactly the bucket; returns (image, (left, top)).

    The crop is centred unless random_crop (then `rng` picks the offset along the long side).
    """
    bucket_w, bucket_h = bucket
    new_w, new_h = cover_size(img.size, bucket)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.LANCZOS)
    spare_w, spare_h = new_w - bucket_w, new_h - bucket_h
    if random_crop:
        rng = rng or random.Random()
        left, top = rng.randint(0, spare_w), rng.randint(0, spare_h)
    else:
        left, top = spare_w // 2, spare_h // 2
    if spare_w or spare_h:
        img = img.crop((left, top, left + bucket_w, top + bucket_h))
    return img, (left, top)
