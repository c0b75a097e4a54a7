"""The kohya / sd-scripts folder convention, scanned into plain dataclasses.

    <train dir>/
        10_sks dog/          repeats 10; "sks dog" is the caption of images without a caption file
            001.png
            001.txt          caption for 001.png (UTF-8, with or without BOM)
        5_style/
    <reg dir>/               optional regularization (prior preservation) images, same shape
        1_dog/

Everything that is wrong but not fatal becomes a Problem the UI can list; only "nothing usable to
train on" raises DatasetError.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Optional, Union

from .images import ImageLoadError, is_image_file, probe_size, verified_size

PathLike = Union[str, Path]

_SUBSET_NAME = re.compile(r"^(\d+)_(.*)$", re.DOTALL)


class DatasetError(Exception):
    """The dataset cannot be trained on; the message names the path and the fix."""


ORPHAN_CAPTION = "orphan caption"
SKIPPED = "skipped"


@dataclass
class Problem:
    path: Path
    reason: str
    # SKIPPED: an image (or its caption) not used; ORPHAN_CAPTION: a caption file with no image;
    # "note": anything else worth knowing (an ignored folder, an empty caption file, ...)
    kind: str = "note"

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ImageItem:
    path: Path
    caption: str
    # The owning Subset; kept out of repr/eq because the Subset lists its items (a cycle).
    subset: "Subset" = field(repr=False, compare=False)
    has_caption_file: bool
    # (width, height) after EXIF rotation, when the scan has read it.
    size: Optional[tuple[int, int]] = None


@dataclass
class Subset:
    path: Path
    name: str           # text after "<repeats>_", e.g. "sks dog"
    repeats: int
    class_words: str    # caption used for images without a caption file (sd-scripts' class tokens)
    is_reg: bool
    items: list[ImageItem] = field(default_factory=list)

    @property
    def folder_name(self) -> str:
        """The folder's own name ("10_sks dog"): the key kohya metadata uses."""
        return self.path.name


@dataclass
class DatasetScan:
    subsets: list[Subset]
    problems: list[Problem] = field(default_factory=list)

    @property
    def train_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if not s.is_reg]

    @property
    def reg_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if s.is_reg]

    @property
    def num_train_images(self) -> int:
        """Distinct usable training image files."""
        return sum(len(s.items) for s in self.train_subsets)

    @property
    def num_reg_images(self) -> int:
        """Distinct usable regularization image files."""
        return sum(len(s.items) for s in self.reg_subsets)

    @property
    def num_train_samples(self) -> int:
        """Training images x repeats: samples per epoch (kohya's ss_num_train_images)."""
        return sum(len(s.items) * s.repeats for s in self.train_subsets)

    @property
    def num_reg_samples(self) -> int:
        """Regularization images x repeats (kohya's ss_num_reg_images)."""
        return sum(len(s.items) * s.repeats for s in self.reg_subsets)

    @property
    def skipped(self) -> list[Problem]:
        """Image files (and images whose caption cannot be read) that are not trained on."""
        return [p for p in self.problems if p.kind == SKIPPED]

    @property
    def orphan_captions(self) -> list[Problem]:
        """Caption files whose image is missing: their text is not used."""
        return [p for p in self.problems if p.kind == ORPHAN_CAPTION]

    def report(self, limit: int = 20) -> list[str]:
        """What the user must know about the files, one line each: counts, then every skipped file
        and orphan caption by name with the reason, then the other notes (at most `limit` lines of
        files). The tab's summary, the job log, the CLI and the run all show these lines."""
        lines = [f"{self.num_train_images} training images ({self.num_train_samples} samples per epoch)"
                 + (f", {self.num_reg_images} regularization images" if self.reg_subsets else "")
                 + (f"; {len(self.skipped)} file(s) skipped" if self.skipped else "")
                 + (f"; {len(self.orphan_captions)} caption file(s) without an image"
                    if self.orphan_captions else "")]
        ordered = self.skipped + self.orphan_captions + [p for p in self.problems
                                                         if p.kind not in (SKIPPED, ORPHAN_CAPTION)]
        labels = {SKIPPED: "skipped", ORPHAN_CAPTION: "caption without an image"}
        lines += [f"{labels.get(p.kind, 'note')}: {p}" for p in ordered[:limit]]
        if len(ordered) > limit:
            lines.append(f"… and {len(ordered) - limit} more")
        return lines

    def summary(self) -> list[dict]:
        """One row per subfolder for the UI table."""
        rows = []
        for s in self.subsets:
            with_caption = sum(1 for it in s.items if it.has_caption_file)
            unreadable = sum(1 for p in self.problems if p.path.parent == s.path and p.kind == SKIPPED)
            orphans = sum(1 for p in self.problems if p.path.parent == s.path and p.kind == ORPHAN_CAPTION)
            rows.append({
                "folder": s.folder_name,
                "kind": "regularization" if s.is_reg else "training",
                "repeats": s.repeats,
                "images": len(s.items),
                "captions found": with_caption,
                "captions missing": len(s.items) - with_caption,
                "unreadable": unreadable,
                "captions without image": orphans,
            })
        return rows


def parse_subset_name(folder_name: str) -> Optional[tuple[int, str]]:
    """"10_sks dog" -> (10, "sks dog"); None when the name lacks the "<repeats>_" prefix."""
    m = _SUBSET_NAME.match(folder_name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2).strip()


def _caption_extensions(caption_extension: str) -> list[str]:
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    return [ext] if ext == ".caption" else [ext, ".caption"]


def read_caption(path: Path) -> str:
    """First non-empty line of a caption file, as sd-scripts uses it.

    utf-8-sig accepts files with and without a BOM; splitlines() handles CRLF. Raises
    UnicodeDecodeError for non-UTF-8 files.
    """
    text = path.read_bytes().decode("utf-8-sig")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _caption_for(image: Path, fallback: str, caption_exts: list[str],
                 problems: list[Problem]) -> Optional[tuple[str, bool]]:
    """(caption, came from a file), or None when the caption file is unreadable (image skipped)."""
    for ext in caption_exts:
        caption_path = image.with_suffix(ext)
        if not caption_path.is_file():
            continue
        try:
            text = read_caption(caption_path)
        except UnicodeDecodeError:
            problems.append(Problem(caption_path, "caption is not UTF-8 text; re-save it as UTF-8 "
                                                  "(the image is skipped until then)", SKIPPED))
            return None
        except OSError as e:
            problems.append(Problem(caption_path, f"cannot read the caption ({e}); the image is skipped", SKIPPED))
            return None
        if text:
            return text, True
        problems.append(Problem(caption_path, f"caption file is empty; the folder words '{fallback}' are used"))
        return fallback, False
    return fallback, False


def _image_size(path: Path, check_images: bool) -> Union[tuple[int, int], ImageLoadError]:
    try:
        return verified_size(path) if check_images else probe_size(path)
    except ImageLoadError as e:
        return e


def _unreadable(folder: Path, kind: str, error: PermissionError) -> DatasetError:
    return DatasetError(f"{kind} folder {folder} cannot be read ({error.strerror or error}); give your user "
                        "read and open (list) permission on it, e.g. chmod -R u+rX on Linux/macOS")


def _list_folder(folder: Path, kind: str) -> list[Path]:
    """The folder's entries by name, with each one's type already asked (a folder that can be listed
    but not entered fails here too), or DatasetError naming the folder."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
        for entry in entries:
            entry.is_dir()
    except PermissionError as e:
        raise _unreadable(folder, kind, e) from None
    return entries


def _scan_subset(subset: Subset, caption_exts: list[str], check_images: bool,
                 problems: list[Problem]) -> None:
    images, captions = [], []
    kind = "regularization" if subset.is_reg else "training"
    for entry in _list_folder(subset.path, kind):
        if entry.name.startswith("."):
            continue  # hidden files, e.g. macOS "._x.png" resource forks
        if entry.is_dir():
            problems.append(Problem(entry, "folders inside a dataset folder are not scanned; "
                                           f"move its images into {subset.path.name}"))
        elif is_image_file(entry):
            images.append(entry)
        elif entry.suffix.lower() in caption_exts:
            captions.append(entry)
        # anything else (.json, .npz, ...) is not an image: ignored

    image_stems = {p.with_suffix("") for p in images}
    for caption in captions:
        if caption.with_suffix("") not in image_stems:
            problems.append(Problem(caption, "caption file without an image of the same name "
                                             f"({caption.stem}.png/.jpg/...); its text is not used",
                                    ORPHAN_CAPTION))

    # Pillow releases the GIL while decoding, so threads make a full check of a big folder faster.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = list(pool.map(partial(_image_size, check_images=check_images), images))

    for entry, size in zip(images, sizes):
        if isinstance(size, ImageLoadError):
            problems.append(Problem(entry, f"{size.reason}; the image is skipped", SKIPPED))
            continue

        found = _caption_for(entry, subset.class_words, caption_exts, problems)
        if found is None:
            continue
        caption, has_caption_file = found
        subset.items.append(ImageItem(entry, caption, subset, has_caption_file, size))


def _scan_root(root: Path, is_reg: bool, caption_exts: list[str], check_images: bool,
               problems: list[Problem]) -> list[Subset]:
    kind = "regularization" if is_reg else "training"
    try:
        exists = root.exists()
    except PermissionError as e:  # a parent folder that cannot be entered
        raise _unreadable(root, kind, e) from None
    if not exists:
        raise DatasetError(f"{kind} folder {root} does not exist; check the path")
    if not root.is_dir():
        raise DatasetError(f"{kind} folder {root} is not a folder; point it at the folder that "
                           "holds the <repeats>_<name> subfolders")

    subsets: list[Subset] = []
    unprefixed: list[Path] = []
    loose_images: list[Path] = []
    for entry in _list_folder(root, kind):
        if entry.name.startswith("."):
            continue
        if entry.is_file():
            if is_image_file(entry):
                loose_images.append(entry)
            continue
        parsed = parse_subset_name(entry.name)
        if parsed is None:
            unprefixed.append(entry)
            continue
        repeats, name = parsed
        if repeats < 1:
            problems.append(Problem(entry, f"repeats must be at least 1; rename it to e.g. 1_{name}"))
            continue
        subset = Subset(entry, name, repeats, name, is_reg)
        _scan_subset(subset, caption_exts, check_images, problems)
        if not subset.items:
            problems.append(Problem(entry, "no usable images in this folder; it is ignored"))
        subsets.append(subset)

    example = f"10_{unprefixed[0].name}" if unprefixed else "10_mysubject"
    if not subsets:
        found = f" (found: {', '.join(p.name for p in unprefixed[:5])})" if unprefixed else ""
        where = " Images directly in it are not used;" if loose_images else ""
        raise DatasetError(
            f"{kind} folder {root} has no subfolder named <repeats>_<name>{found}.{where} "
            f"put the images in a subfolder such as '{root / example}' (10 = repeats per epoch)")
    for p in unprefixed:
        problems.append(Problem(p, f"folder name lacks the <repeats>_ prefix, so it is ignored; "
                                   f"rename it to e.g. 10_{p.name}"))
    for p in loose_images:
        problems.append(Problem(p, "images directly in the top folder are ignored; move it into a "
                                   "<repeats>_<name> subfolder", SKIPPED))
    if not any(s.items for s in subsets):
        raise DatasetError(
            f"{kind} folder {root} has no usable image (checked "
            f"{', '.join(s.path.name for s in subsets)}), so training refuses to start; "
            "add PNG/JPEG/WebP/BMP images or fix the files listed as problems")
    return subsets


def scan_dataset(train_dir: PathLike, reg_dir: Optional[PathLike] = None, caption_extension: str = ".txt",
                 check_images: bool = True) -> DatasetScan:
    """Scan the training (and optional regularization) folder.

    check_images=True fully decodes every image (slower, but a truncated file is caught here
    rather than in the middle of a run; each file is decoded once until it changes, see
    images.verified_size); False only reads headers. Everything that shows the user a count (the
    tab's summary, the start checks, the run) scans with True, so the counts agree.
    """
    problems: list[Problem] = []
    caption_exts = _caption_extensions(caption_extension)
    subsets = _scan_root(Path(train_dir), False, caption_exts, check_images, problems)
    if reg_dir is not None and str(reg_dir).strip():
        subsets += _scan_root(Path(reg_dir), True, caption_exts, check_images, problems)
    return DatasetScan(subsets, problems)


def usable_subsets(subsets: Iterable[Subset]) -> list[Subset]:
    return [s for s in subsets if s.items]
