"""Safe image loading: every training image goes through load_rgb, so what the scan validated is
exactly what training decodes.

Pillow hands back many modes (RGBA, palette, CMYK, 16-bit grey...) and, by default, a lazily
decoded image; a truncated file only fails when the pixels are read. load_rgb decodes fully,
applies the EXIF orientation and returns plain 8-bit RGB, or raises ImageLoadError naming the file.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# EXIF orientations 5..8 rotate by 90 degrees, so width and height trade places.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)

_TRUNCATION_LOCK = threading.Lock()
_strict_sections = 0
_saved_truncation_flag = False


class ImageLoadError(Exception):
    """An image file that cannot be used; str() reads "path: reason"."""

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make Pillow raise on truncated files even if someone (another extension) allowed them.

    LOAD_TRUNCATED_IMAGES is process-global: it stays False while any thread is inside a strict
    section and the host's value comes back when the last one leaves. Decoding itself runs
    outside the lock, so scans can decode in parallel.
    """
    global _strict_sections, _saved_truncation_flag
    with _TRUNCATION_LOCK:
        if _strict_sections == 0:
            _saved_truncation_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_sections += 1
    try:
        yield
    finally:
        with _TRUNCATION_LOCK:
            _strict_sections -= 1
            if _strict_sections == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncation_flag


def _open(path: Path) -> Image.Image:
    """Open (header only) with the common failures turned into ImageLoadError."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageLoadError(path, f"cannot read the file ({e.strerror or e})") from e
    if size == 0:
        raise ImageLoadError(path, "the file is empty (0 bytes); delete it or copy the image again")
    try:
        return Image.open(path)
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            path, "not a readable image (the content is not PNG/JPEG/WebP/BMP data); "
                  "re-save it from an image editor or delete it") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(path, f"image is too large to open safely ({e}); downscale it") from e
    except OSError as e:
        raise ImageLoadError(path, f"cannot open the image ({e})") from e


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Transparent pixels become white, as the WebUI does for training images."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit grey ("I;16*", or "I" as Pillow opens 16-bit PNGs) scaled 0..65535 -> 0..255.

    Image.convert("L") would clip every value above 255 to white instead of scaling.
    """
    values = np.asarray(img).astype(np.float64)
    eight_bit = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit, mode="L").convert("RGB")


def to_rgb(img: Image.Image, path: PathLike = "<image>") -> Image.Image:
    """Convert any decoded Pillow image to 8-bit RGB (transparency on white)."""
    mode = img.mode
    has_transparency = "transparency" in img.info
    if mode == "RGB" and not has_transparency:
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (has_transparency and mode in ("P", "L", "RGB")):
        return _composite_on_white(img)
    if mode.startswith("I;16") or mode == "I":
        return _sixteen_bit_to_rgb(img)
    if mode in ("1", "L", "P", "CMYK", "YCbCr"):
        return img.convert("RGB")
    raise ImageLoadError(path, f"unsupported pixel format '{mode}'; re-save it as 8-bit RGB PNG or JPEG")


def load_rgb(path: PathLike) -> Image.Image:
    """Fully decode `path`, apply its EXIF orientation and return an 8-bit RGB image."""
    path = Path(path)
    img = _open(path)
    try:
        with img, _strict_truncation():
            try:
                img.load()
            except (OSError, SyntaxError, ValueError) as e:
                # Pillow reports truncation as OSError("image file is truncated ...") and some
                # broken headers as SyntaxError / ValueError.
                raise ImageLoadError(path, f"the image data is damaged or incomplete ({e}); "
                                           "re-export or re-download it") from e
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception as e:  # malformed EXIF blocks raise many kinds of errors
                raise ImageLoadError(path, f"unreadable EXIF orientation ({e}); re-save the image") from e
            rgb = to_rgb(oriented, path)
            # Detach from the file handle that `with img` closes.
            return rgb.copy() if rgb is img else rgb
    except ImageLoadError:
        raise
    except Exception as e:
        raise ImageLoadError(path, f"cannot decode the image ({type(e).__name__}: {e})") from e


def _exif_orientation(img: Image.Image) -> int:
    """Orientation from the EXIF already read with the header (never forces a full decode)."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:
        return 1


def probe_size(path: PathLike) -> tuple[int, int]:
    """(width, height) as load_rgb will return it, read from the header only.

    Cheap enough for bucketing thousands of files; it does not prove the pixels decode
    (a truncated file passes), which is what a scan with check_images=True is for.
    """
    path = Path(path)
    with _open(path) as img:
        width, height = img.size
        if _exif_orientation(img) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
    return width, height


# path -> ((size in bytes, mtime ns), (width, height) or the ImageLoadError): a file is decoded once
# per change, so the tab's dataset summary, the start checks and the run all see the same verdict
# without decoding a big folder three times.
_VERIFIED: dict = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 200_000


def verified_size(path: PathLike) -> tuple[int, int]:
    """(width, height) as load_rgb returns it, after a full decode (so a truncated file fails
    here, not in the middle of a run). Remembered per file until its size or mtime changes;
    raises ImageLoadError for a file that cannot be used."""
    path = Path(path)
    try:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    key = str(path.absolute())
    if stamp is not None:
        with _VERIFIED_LOCK:
            hit = _VERIFIED.get(key)
        if hit is not None and hit[0] == stamp:
            if isinstance(hit[1], ImageLoadError):
                raise hit[1]
            return hit[1]
    try:
        result = load_rgb(path).size
    except ImageLoadError as e:
        result = e
    if stamp is not None:
        with _VERIFIED_LOCK:
            if len(_VERIFIED) >= _VERIFIED_MAX:
                _VERIFIED.clear()
            _VERIFIED[key] = (stamp, result)
    if isinstance(result, ImageLoadError):
        raise result
    return result
