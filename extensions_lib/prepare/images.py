"""Turn a folder of raw pictures into training images: crop (centre, focal point or auto-sized),
keep-aspect downscale, split of oversized images into overlapping tiles and mirrored copies.

Pure Pillow: the WebUI's focal-point crop is passed in by the caller as a function, so nothing here
imports the WebUI. Originals are only read; every output is a new PNG in a new (or empty) folder,
written under a hidden temporary name and renamed, so a folder never holds half-written images.
"""
from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from PIL import Image, ImageOps

from ..data.buckets import resize_and_crop
from ..data.images import ImageLoadError, is_image_file, load_rgb

MODES = ("center", "focal", "auto_size", "keep")
CAPTION_EXTENSION = ".txt"

# Auto-sized crop: sides are multiples of 64 up to this, as the WebUI's "Auto-sized crop" picks them.
_AUTO_STEP = 64
_AUTO_MAX_SIDE = 4096

FocalCrop = Callable[[Image.Image, int, int], Image.Image]


class PrepareError(ValueError):
    """A preparation setting or folder that cannot be used; the message names the field or path and the fix."""


@dataclass
class ImageOptions:
    width: int = 512
    height: int = 512
    # "center": scale to cover width x height, crop the middle | "focal": the caller's focal-point crop
    # | "auto_size": the largest multiple-of-64 size within [min_area, max_area] whose aspect is within
    #   auto_size_max_error of the image's, centre-cropped to it | "keep": keep the aspect, only shrink
    #   so the long side is at most max(width, height) (aspect buckets handle the rest when training)
    mode: str = "center"
    # A picture much longer than the target aspect is cut into overlapping width x height tiles when
    # (short/long aspect ratio relative to the target) <= split_threshold.
    split_oversized: bool = False
    split_threshold: float = 0.5
    split_overlap: float = 0.2
    flip: bool = False              # also write a mirrored copy of every output ("<name>-flipped.png")
    min_area: int = 256 * 256
    max_area: int = 512 * 512
    auto_size_max_error: float = 0.1   # 1 - (smaller/larger of the two aspect ratios)

    def validate(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not _is_int(value) or value % 8 or not 64 <= value <= 4096:
                raise PrepareError(f"prepare.{name} = {value!r}: pick a multiple of 8 between 64 and 4096")
        if self.mode not in MODES:
            raise PrepareError(f"prepare.mode = {self.mode!r}: pick one of {', '.join(MODES)}")
        for name in ("split_oversized", "flip"):
            if not isinstance(getattr(self, name), bool):
                raise PrepareError(f"prepare.{name} = {getattr(self, name)!r}: use true or false")
        _check_range("split_threshold", self.split_threshold, 0.0, 1.0, low_open=True)
        _check_range("split_overlap", self.split_overlap, 0.0, 0.9)
        _check_range("auto_size_max_error", self.auto_size_max_error, 0.0, 1.0, high_open=True)
        for name in ("min_area", "max_area"):
            value = getattr(self, name)
            if not _is_int(value) or not 64 * 64 <= value <= 4096 * 4096:
                raise PrepareError(f"prepare.{name} = {value!r}: pick a pixel count between "
                                   f"{64 * 64} (64x64) and {4096 * 4096} (4096x4096)")
        if self.min_area > self.max_area:
            raise PrepareError(f"prepare.min_area = {self.min_area} is larger than prepare.max_area = "
                               f"{self.max_area}; lower min_area or raise max_area")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(name: str, value, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        span = f"{'above' if low_open else 'from'} {low} {'and below' if high_open else 'up to'} {high}"
        raise PrepareError(f"prepare.{name} = {value!r}: pick a number {span}")


@dataclass
class PreparedImage:
    source: Path
    path: Path
    kind: str   # "crop", "tile", "flip" or "keep"


@dataclass
class PreparedImages:
    outputs: list[PreparedImage] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stopped: bool = False

    def preview_grid(self, thumb: int = 128, max_images: int = 64) -> Image.Image:
        return preview_grid(self, thumb=thumb, max_images=max_images)


# --------------------------------------------------------------------------------------------
# Geometry: each returns the finished images for one source, in memory
# --------------------------------------------------------------------------------------------

def _aspect_error(image_size: tuple[int, int], size: tuple[int, int]) -> float:
    ratio = (image_size[0] / image_size[1]) / (size[0] / size[1])
    return 1.0 - min(ratio, 1.0 / ratio)


def auto_size(image_size: tuple[int, int], opts: ImageOptions) -> Optional[tuple[int, int]]:
    """The largest multiple-of-64 size with area in [min_area, max_area] and aspect error within
    auto_size_max_error (ties: the smaller error); None when no size qualifies."""
    best, best_key = None, None
    for w in range(_AUTO_STEP, _AUTO_MAX_SIDE + 1, _AUTO_STEP):
        for h in range(_AUTO_STEP, _AUTO_MAX_SIDE + 1, _AUTO_STEP):
            if not opts.min_area <= w * h <= opts.max_area:
                continue
            error = _aspect_error(image_size, (w, h))
            if error > opts.auto_size_max_error:
                continue
            key = (w * h, -error)
            if best_key is None or key > best_key:
                best, best_key = (w, h), key
    return best


def shrink_to_fit(img: Image.Image, long_side: int) -> Image.Image:
    """Keep the aspect; scale down so the longer side is at most `long_side` (never enlarge)."""
    scale = long_side / max(img.size)
    if scale >= 1:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.LANCZOS)


def tile_offsets(length: int, tile: int, overlap: float) -> list[int]:
    """Start positions of tiles of `tile` px along `length` px, overlapping by about `overlap`,
    the first at 0 and the last ending exactly at `length`."""
    if length <= tile:
        return [0]
    count = max(2, math.ceil((length - tile * overlap) / (tile * (1.0 - overlap))))
    step = (length - tile) / (count - 1)
    return [round(step * i) for i in range(count)]


def split_tiles(img: Image.Image, width: int, height: int, opts: ImageOptions) -> Optional[list[Image.Image]]:
    """width x height tiles covering the whole picture when it is much longer than the target aspect
    (ratio of the two aspects <= split_threshold); None when it should not be split."""
    image_aspect, target_aspect = img.width / img.height, width / height
    along_x = image_aspect > target_aspect
    ratio = target_aspect / image_aspect if along_x else image_aspect / target_aspect
    if ratio >= 1.0 or ratio > opts.split_threshold:
        return None
    if along_x:   # scale to the target height, cut along the width
        scaled = img.resize((max(width, round(img.width * height / img.height)), height), Image.LANCZOS)
        return [scaled.crop((x, 0, x + width, height))
                for x in tile_offsets(scaled.width, width, opts.split_overlap)]
    scaled = img.resize((width, max(height, round(img.height * width / img.width))), Image.LANCZOS)
    return [scaled.crop((0, y, width, y + height)) for y in tile_offsets(scaled.height, height, opts.split_overlap)]


def _exact(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else resize_and_crop(img, size)[0]


def _transform(img: Image.Image, opts: ImageOptions,
               focal_crop: Optional[FocalCrop]) -> list[tuple[str, Image.Image, str]]:
    """(name suffix, image, kind) for one source, flipped copies included. Raises _SkipImage."""
    w, h = opts.width, opts.height
    tiles = split_tiles(img, w, h, opts) if opts.split_oversized else None
    if tiles is not None:
        made = [(f"-{i}", tile, "tile") for i, tile in enumerate(tiles, start=1)]
    elif opts.mode == "center":
        made = [("", resize_and_crop(img, (w, h))[0], "crop")]
    elif opts.mode == "focal":
        try:
            cropped = focal_crop(img, w, h)
        except Exception as e:  # the caller's crop (face/feature detection) can fail on odd images
            raise _SkipImage(f"the focal-point crop failed ({type(e).__name__}: {e}); "
                             "prepare this image with mode center") from e
        made = [("", _exact(cropped.convert("RGB"), (w, h)), "crop")]
    elif opts.mode == "auto_size":
        size = auto_size(img.size, opts)
        if size is None:
            raise _SkipImage(f"no size with area between prepare.min_area and prepare.max_area has an aspect "
                             f"within prepare.auto_size_max_error = {opts.auto_size_max_error} of "
                             f"{img.width}x{img.height}; raise the error limit or use mode center")
        made = [("", resize_and_crop(img, size)[0], "crop")]
    else:  # keep
        made = [("", shrink_to_fit(img, max(w, h)), "keep")]
    if opts.flip:
        made += [(suffix + "-flipped", ImageOps.mirror(out), "flip") for suffix, out, _ in made]
    return made


class _SkipImage(Exception):
    """This one source cannot be prepared; the message is the reason listed to the user."""


# --------------------------------------------------------------------------------------------
# Folders and files
# --------------------------------------------------------------------------------------------

def _check_folders(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise PrepareError(f"source folder {src} does not exist or is not a folder; point it at the "
                           "folder that holds the raw pictures")
    src_real, dst_real = src.resolve(), dst.resolve()
    if dst_real == src_real or src_real in dst_real.parents:
        raise PrepareError(f"output folder {dst} is inside the source folder {src}; pick an output "
                           "folder outside it (originals are never overwritten)")
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir():
            raise PrepareError(f"output folder {dst} exists and is not a folder; pick another name")
        if any(dst.iterdir()):
            raise PrepareError(f"output folder {dst} already exists and is not empty; pick another "
                               "name or empty it (prepared images never overwrite files)")


def _list_sources(src: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, skipped entries with the reason), by name. Captions of images are not skipped."""
    try:
        entries = sorted((p for p in src.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    except OSError as e:
        raise PrepareError(f"source folder {src} cannot be read ({e.strerror or e}); give your user "
                           "read permission on it") from e
    images = [p for p in entries if p.is_file() and is_image_file(p)]
    image_stems = {p.stem for p in images}
    skipped = []
    for p in entries:
        if p.is_dir():
            skipped.append((p, "folders are not prepared (only the pictures directly in the source "
                               "folder are); prepare it on its own"))
        elif p.suffix.lower() == CAPTION_EXTENSION and p.stem in image_stems:
            continue
        elif p.suffix.lower() == CAPTION_EXTENSION:
            skipped.append((p, "caption file without an image of the same name; it is not copied"))
        elif not is_image_file(p):
            skipped.append((p, f"not an image ({p.suffix or 'no extension'}); only PNG, JPEG, WebP "
                               "and BMP files are prepared"))
    return images, skipped


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) to a hidden temporary name beside `path`, then rename it to `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _free_stem(stem: str, suffixes: Iterable[str], used: set[str]) -> str:
    """`stem`, or stem_2, stem_3... so that no output name (case-insensitive, for Windows and macOS)
    repeats an earlier one: a.jpg and a.png both become a.png and a_2.png."""
    suffixes = list(suffixes)
    candidate, n = stem, 1
    while any((candidate + s).casefold() in used for s in suffixes):
        n += 1
        candidate = f"{stem}_{n}"
    used.update((candidate + s).casefold() for s in suffixes)
    return candidate


def prepare_images(src: Path, dst: Path, opts: ImageOptions, *, focal_crop: Optional[FocalCrop] = None,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_progress: Optional[Callable[[int, int, str], None]] = None,
                   copy_captions: bool = True) -> PreparedImages:
    """Prepare every picture directly in `src` into the new or empty folder `dst` as PNG files.

    A file that is not an image or cannot be decoded is listed in `skipped` with the reason and the
    rest go on. With copy_captions, "<stem>.txt" beside a source is copied beside each of its outputs.
    should_stop() is asked before each picture; on True the finished files stay and stopped is set.
    on_progress(done, total, name) is called after each picture.
    """
    src, dst = Path(src), Path(dst)
    opts.validate()
    if opts.mode == "focal" and focal_crop is None:
        raise PrepareError("prepare.mode = focal needs the WebUI's auto focal-point crop "
                           "(modules.textual_inversion.autocrop), which this host does not offer; "
                           "use center, auto_size or keep")
    _check_folders(src, dst)
    images, skipped = _list_sources(src)
    dst.mkdir(parents=True, exist_ok=True)
    result = PreparedImages(skipped=skipped)
    used: set[str] = set()
    for done, source in enumerate(images):
        if should_stop():
            result.stopped = True
            break
        try:
            _prepare_one(source, dst, opts, focal_crop, copy_captions, used, result)
        except (ImageLoadError, _SkipImage) as e:
            reason = e.reason if isinstance(e, ImageLoadError) else str(e)
            result.skipped.append((source, f"{reason}; skipped"))
        if on_progress is not None:
            on_progress(done + 1, len(images), source.name)
    return result


def _prepare_one(source: Path, dst: Path, opts: ImageOptions, focal_crop: Optional[FocalCrop],
                 copy_captions: bool, used: set[str], result: PreparedImages) -> None:
    caption_path = source.with_suffix(CAPTION_EXTENSION)
    caption = None
    if copy_captions and caption_path.is_file():
        try:
            caption = caption_path.read_bytes()  # copied byte for byte (BOM and line ends kept)
        except OSError as e:
            raise _SkipImage(f"cannot read its caption {caption_path.name} ({e.strerror or e})") from e
    made = _transform(load_rgb(source), opts, focal_crop)
    stem = _free_stem(source.stem, [suffix for suffix, _, _ in made], used)
    for suffix, image, kind in made:
        out = dst / f"{stem}{suffix}.png"
        try:
            write_atomic(out, lambda tmp: image.save(tmp, format="PNG"))
            if caption is not None:
                write_atomic(out.with_suffix(CAPTION_EXTENSION), lambda tmp: tmp.write_bytes(caption))
        except OSError as e:
            raise PrepareError(f"cannot write {out} ({e.strerror or e}); check the free space and "
                               f"write permission of {dst}") from e
        result.outputs.append(PreparedImage(source, out, kind))


# --------------------------------------------------------------------------------------------
# Preview: each source followed by what it became, one row per source
# --------------------------------------------------------------------------------------------

_PAD = 4
_BACKGROUND = (40, 40, 40)
_SOURCE_CELL = (90, 90, 90)   # lighter cell behind the original, so rows read "before -> after"


def _thumbnail(path: Path, thumb: int) -> Optional[Image.Image]:
    try:
        img = load_rgb(path)
    except ImageLoadError:
        return None
    img.thumbnail((thumb, thumb), Image.LANCZOS)
    return img


def preview_grid(result: PreparedImages, thumb: int = 128, max_images: int = 64) -> Image.Image:
    """A grid: per source, its thumbnail then the thumbnails of its outputs (at most max_images cells,
    each thumb x thumb with the picture letterboxed), so cut-off heads show before training."""
    rows: list[list[tuple[Path, bool]]] = []
    by_source: dict[Path, list[Path]] = {}
    for out in result.outputs:
        by_source.setdefault(out.source, []).append(out.path)
    budget = max(1, max_images)
    for source, outputs in by_source.items():
        if budget <= 0:
            break
        row = ([(source, True)] + [(p, False) for p in outputs])[:budget]
        budget -= len(row)
        rows.append(row)
    cols = max((len(r) for r in rows), default=1)
    n_rows = max(1, len(rows))
    grid = Image.new("RGB", (cols * thumb + (cols + 1) * _PAD, n_rows * thumb + (n_rows + 1) * _PAD), _BACKGROUND)
    for r, row in enumerate(rows):
        for c, (path, is_source) in enumerate(row):
            left, top = _PAD + c * (thumb + _PAD), _PAD + r * (thumb + _PAD)
            if is_source:
                grid.paste(_SOURCE_CELL, (left, top, left + thumb, top + thumb))
            img = _thumbnail(path, thumb)
            if img is not None:
                grid.paste(img, (left + (thumb - img.width) // 2, top + (thumb - img.height) // 2))
    return grid


# --------------------------------------------------------------------------------------------
# Kohya folder name for the prepared images
# --------------------------------------------------------------------------------------------

_WINDOWS_REFUSED = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def _check_name_part(field_name: str, value: str, *, required: bool) -> str:
    if not isinstance(value, str):
        raise PrepareError(f"prepare.{field_name} = {value!r}: type a word")
    value = value.strip()
    if required and not value:
        raise PrepareError(f"prepare.{field_name} is empty; type the word that names the subject, e.g. sks")
    bad = _WINDOWS_REFUSED.search(value)
    if bad:
        raise PrepareError(f"prepare.{field_name} = {value!r}: folder names cannot hold {bad.group()!r} "
                           "(nor any of < > : \" / \\ | ? *); remove it")
    return value


def subset_folder_name(repeats: int, token: str, class_word: str) -> str:
    """The kohya training subfolder name: (10, "sks", "dog") -> "10_sks dog"."""
    if not _is_int(repeats) or not 1 <= repeats <= 10000:
        raise PrepareError(f"prepare.repeats = {repeats!r}: pick a whole number from 1 to 10000 "
                           "(how often each image is seen per epoch)")
    token = _check_name_part("token", token, required=True)
    class_word = _check_name_part("class_word", class_word, required=False)
    words = f"{token} {class_word}".strip()
    if words.endswith("."):
        raise PrepareError(f"prepare.{'class_word' if class_word else 'token'} = "
                           f"{(class_word or token)!r}: Windows folder names cannot end with '.'; remove it")
    return f"{repeats}_{words}"
