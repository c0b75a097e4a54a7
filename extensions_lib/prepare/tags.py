"""Tag editing on a folder of images with sidecar caption files ("<image stem>.txt"), as DeepBooru and
WD14 write them: comma-separated tags on one line (a BLIP sentence is a single tag).

Matching is exact after stripping spaces but case-insensitive ("1Boy" matches "1boy"); tags that an
edit does not touch keep the file's own spelling. As in training, the caption is the first non-empty
line; other lines of the file are kept as they are. A file an edit does not change is not rewritten
(its modification time stays); a changed one is written as UTF-8 (keeping a BOM if it had one) with
", " between tags, under a temporary name and renamed. Every file is read before any is written, so a
file that is not UTF-8 refuses the whole edit before anything changes.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..data.captions import split_tags
from ..data.images import is_image_file
from .images import PrepareError, write_atomic

EXISTING_CAPTION_MODES = ("ignore", "keep", "prepend", "append")


@dataclass
class EditReport:
    changed: list[Path] = field(default_factory=list)
    unchanged: int = 0


def _key(tag: str) -> str:
    return tag.strip().casefold()


def _check_tag(field_name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PrepareError(f"prepare.{field_name} is empty; type the tag to use")
    if "," in value or "\n" in value or "\r" in value:
        raise PrepareError(f"prepare.{field_name} = {value!r}: one tag only, without commas or line breaks")
    return value.strip()


def _check_tag_list(field_name: str, tags: list[str]) -> list[str]:
    if isinstance(tags, str) or not tags:
        raise PrepareError(f"prepare.{field_name}: give a list of one or more tags")
    return [_check_tag(field_name, t) for t in tags]


def _normalize_ext(ext: str) -> str:
    ext = ext if ext.startswith(".") else "." + ext
    if len(ext) < 2 or any(c in ext for c in "/\\") or is_image_file(Path("x" + ext)):
        raise PrepareError(f"prepare.caption_extension = {ext!r}: use an extension such as .txt")
    return ext


def caption_files(folder: Path, ext: str = ".txt") -> list[Path]:
    """The caption files of the images directly in `folder` (only images that have one), sorted."""
    folder = Path(folder)
    ext = _normalize_ext(ext)
    if not folder.is_dir():
        raise PrepareError(f"caption folder {folder} does not exist or is not a folder; point it at "
                           "the folder that holds the images and their caption files")
    found = set()
    for p in folder.iterdir():
        if not p.name.startswith(".") and p.is_file() and is_image_file(p):
            caption = p.with_suffix(ext)
            if caption.is_file():
                found.add(caption)
    return sorted(found, key=lambda p: p.name)


@dataclass
class _Caption:
    path: Path
    lines: list[str]        # the file's lines with their endings
    index: Optional[int]    # the caption line (first non-empty), None for an empty file
    bom: bool

    @property
    def tags(self) -> list[str]:
        return [] if self.index is None else split_tags(self.lines[self.index])

    def text_with(self, tags: list[str]) -> bytes:
        caption = ", ".join(tags)
        lines = list(self.lines)
        if self.index is None:
            lines = [caption]
        else:
            line = lines[self.index]
            ending = line[len(line.rstrip("\r\n")):]
            lines[self.index] = caption + ending
        return (codecs.BOM_UTF8 if self.bom else b"") + "".join(lines).encode("utf-8")


def _read(path: Path) -> _Caption:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read the caption {path} ({e.strerror or e}); check its permissions") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrepareError(f"caption {path} is not UTF-8 text; re-save it as UTF-8 (nothing was "
                           "changed)") from e
    lines = text.splitlines(keepends=True)
    index = next((i for i, line in enumerate(lines) if line.strip()), None)
    return _Caption(path, lines, index, raw.startswith(codecs.BOM_UTF8))


def tag_frequency(folder: Path, ext: str = ".txt") -> list[tuple[str, int]]:
    """(tag, number of files that have it), most common first, then alphabetical. A tag is shown as
    spelled in the first file (by name) that has it."""
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for path in caption_files(folder, ext):
        keys = set()
        for tag in _read(path).tags:
            keys.add(_key(tag))
            spelling.setdefault(_key(tag), tag)
        for key in keys:  # a tag repeated in one file counts once
            counts[key] = counts.get(key, 0) + 1
    return sorted(((spelling[k], n) for k, n in counts.items()), key=lambda kv: (-kv[1], kv[0].casefold(), kv[0]))


def _dedupe(tags: list[str]) -> list[str]:
    seen, out = set(), []
    for tag in tags:
        if _key(tag) not in seen:
            seen.add(_key(tag))
            out.append(tag)
    return out


def combine_caption(existing: Optional[str], new: str, mode: str) -> str:
    """A captioner's `new` caption combined with the file's `existing` one: "ignore" (new only),
    "keep" (existing if there is one, else new), "prepend" (new, existing) or "append" (existing, new);
    repeated tags keep their first occurrence."""
    if mode not in EXISTING_CAPTION_MODES:
        raise PrepareError(f"prepare.existing_captions = {mode!r}: pick one of {', '.join(EXISTING_CAPTION_MODES)}")
    old_tags, new_tags = split_tags(existing or ""), split_tags(new or "")
    if mode == "ignore":
        tags = new_tags
    elif mode == "keep":
        tags = old_tags or new_tags
    elif mode == "prepend":
        tags = new_tags + old_tags
    else:
        tags = old_tags + new_tags
    return ", ".join(_dedupe(tags))


def _edit(folder: Path, ext: str, edit: Callable[[list[str]], Optional[list[str]]]) -> EditReport:
    """Apply `edit` (tags -> new tags, or None for "leave this file alone") to every caption file."""
    captions = [_read(p) for p in caption_files(folder, ext)]
    report = EditReport()
    for caption in captions:
        new_tags = edit(caption.tags)
        if new_tags is None or new_tags == caption.tags:
            report.unchanged += 1
            continue
        data = caption.text_with(new_tags)
        try:
            write_atomic(caption.path, lambda tmp: tmp.write_bytes(data))
        except OSError as e:
            raise PrepareError(f"cannot write the caption {caption.path} ({e.strerror or e}); check the "
                               f"folder's write permission ({len(report.changed)} file(s) were already "
                               "changed)") from e
        report.changed.append(caption.path)
    return report


def _replace_with(tags: list[str], keys: set[str], into: str) -> Optional[list[str]]:
    """`tags` with every tag in `keys` removed and `into` where the first of them stood; `into` kept
    once (its first occurrence). None when no tag matches."""
    if not any(_key(t) in keys for t in tags):
        return None
    out, placed = [], False
    for tag in tags:
        if _key(tag) not in keys:
            out.append(tag)
        elif not placed:
            out.append(into)
            placed = True
    first = next(i for i, t in enumerate(out) if _key(t) == _key(into))
    return [t for i, t in enumerate(out) if i == first or _key(t) != _key(into)]


def merge_tags(folder: Path, tags: list[str], into: str, ext: str = ".txt") -> EditReport:
    """In every file that has any of `tags`: those removed and `into` put where the first stood."""
    keys = {_key(t) for t in _check_tag_list("merge_tags", tags)}
    into = _check_tag("merge_into", into)
    return _edit(folder, ext, lambda file_tags: _replace_with(file_tags, keys, into))


def replace_tag(folder: Path, old: str, new: str, ext: str = ".txt") -> EditReport:
    """`old` becomes `new` in every file that has it."""
    key = _key(_check_tag("replace_tag", old))
    new = _check_tag("replace_with", new)
    return _edit(folder, ext, lambda file_tags: _replace_with(file_tags, {key}, new))


def remove_tags(folder: Path, tags: list[str], ext: str = ".txt") -> EditReport:
    """`tags` removed from every file that has any of them."""
    keys = {_key(t) for t in _check_tag_list("remove_tags", tags)}

    def edit(file_tags: list[str]) -> Optional[list[str]]:
        kept = [t for t in file_tags if _key(t) not in keys]
        return None if len(kept) == len(file_tags) else kept

    return _edit(folder, ext, edit)


def add_prefix(folder: Path, prefix: str, ext: str = ".txt") -> EditReport:
    """`prefix` (the trigger word) first in every caption: added, or moved to the front if it stands
    elsewhere; files where it is already first are left alone. Images without a caption file are not
    given one (training uses the folder's words for them)."""
    prefix = _check_tag("trigger_word", prefix)
    key = _key(prefix)

    def edit(file_tags: list[str]) -> Optional[list[str]]:
        if file_tags and _key(file_tags[0]) == key:
            return None
        return [prefix] + [t for t in file_tags if _key(t) != key]

    return _edit(folder, ext, edit)
