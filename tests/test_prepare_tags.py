"""Prepare step, tag side: frequency table, merge / replace / remove / prefix edits on sidecar caption
files, combining a captioner's output with existing captions, refusals that name the field."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from extensions_lib.prepare.images import PrepareError
from extensions_lib.prepare.tags import (
    EditReport, add_prefix, caption_files, combine_caption, merge_tags, remove_tags, replace_tag, tag_frequency,
)

BOM = b"\xef\xbb\xbf"
OLD_NS = 1_000_000_000 * 1_000_000   # a fixed old mtime, so "not rewritten" is visible


def _folder(tmp_path: Path, captions: dict[str, bytes]) -> Path:
    """An image per name (png) and its caption file with exactly these bytes (None: no caption)."""
    folder = tmp_path / "10_sks dog"
    folder.mkdir()
    for name, data in captions.items():
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
        if data is not None:
            path = folder / f"{name}.txt"
            path.write_bytes(data)
            os.utime(path, ns=(OLD_NS, OLD_NS))
    return folder


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.glob("*.txt")}


@pytest.fixture
def people(tmp_path):
    return _folder(tmp_path, {
        "a": b"1boy, facial hair, smile",
        "b": b"1girl, smile,long hair",
        "c": BOM + b"Facial Hair, beard, 1boy\r\nnotes kept\r\n",
        "d": b"outdoors",
        "e": None,
    })


def test_caption_files_are_those_of_images(people):
    (people / "orphan.txt").write_text("no image")
    (people / "f.jpg").write_bytes(b"")          # image without caption
    assert [p.name for p in caption_files(people)] == ["a.txt", "b.txt", "c.txt", "d.txt"]


def test_tag_frequency_counts_files_most_common_first(people):
    (people / "g.png").write_bytes(b"")
    (people / "g.txt").write_text("smile, smile, 1BOY")   # a repeat within one file counts once
    assert tag_frequency(people) == [
        ("1boy", 3), ("smile", 3), ("facial hair", 2),
        ("1girl", 1), ("beard", 1), ("long hair", 1), ("outdoors", 1),
    ]


def test_merge_edits_exactly_the_files_with_either_tag(people):
    before = _state(people)

    report = merge_tags(people, ["1boy", "facial hair"], "Smith")

    assert sorted(p.name for p in report.changed) == ["a.txt", "c.txt"]
    assert report.unchanged == 2
    assert (people / "a.txt").read_bytes() == b"Smith, smile"
    # BOM, the CRLF and the other lines kept; matching ignores case
    assert (people / "c.txt").read_bytes() == BOM + b"Smith, beard\r\nnotes kept\r\n"
    after = _state(people)
    for name in ("b.txt", "d.txt"):
        assert after[name] == before[name], f"{name} had neither tag and must not be rewritten"
    assert not (people / "e.txt").exists()
    assert not [p for p in people.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_merge_keeps_the_target_once(tmp_path):
    folder = _folder(tmp_path, {"a": b"smith, x, 1boy, y, Smith"})
    merge_tags(folder, ["1boy"], "Smith")
    assert (folder / "a.txt").read_text() == "smith, x, y"


def test_replace_and_remove(people):
    report = replace_tag(people, "SMILE", "grin")
    assert sorted(p.name for p in report.changed) == ["a.txt", "b.txt"]
    assert (people / "b.txt").read_text() == "1girl, grin, long hair"

    before = _state(people)
    report = remove_tags(people, ["grin", "beard"])
    assert sorted(p.name for p in report.changed) == ["a.txt", "b.txt", "c.txt"] and report.unchanged == 1
    assert (people / "a.txt").read_text() == "1boy, facial hair"
    assert _state(people)["d.txt"] == before["d.txt"]


def test_add_prefix_adds_moves_or_leaves(tmp_path):
    folder = _folder(tmp_path, {"first": b"Sks, dog", "middle": b"dog, sks, grass", "none": b"dog",
                                "empty": b""})
    before = _state(folder)

    report = add_prefix(folder, "sks")

    assert sorted(p.name for p in report.changed) == ["empty.txt", "middle.txt", "none.txt"]
    assert report.unchanged == 1
    assert _state(folder)["first.txt"] == before["first.txt"]
    assert (folder / "middle.txt").read_text() == "sks, dog, grass"
    assert (folder / "none.txt").read_text() == "sks, dog"
    assert (folder / "empty.txt").read_text() == "sks"


def test_bom_files_read_like_plain_ones(tmp_path):
    folder = _folder(tmp_path, {"bom": BOM + b"red, blue", "plain": b"red, green"})
    assert dict(tag_frequency(folder)) == {"red": 2, "blue": 1, "green": 1}
    assert isinstance(remove_tags(folder, ["blue"]), EditReport)
    assert (folder / "bom.txt").read_bytes() == BOM + b"red"


def test_a_non_utf8_file_refuses_before_anything_changes(tmp_path):
    folder = _folder(tmp_path, {"a": b"smile", "z": "café, smile".encode("latin-1")})
    before = _state(folder)
    with pytest.raises(PrepareError, match=r"z\.txt is not UTF-8"):
        remove_tags(folder, ["smile"])
    assert _state(folder) == before


@pytest.mark.parametrize("existing, new, mode, expected", [
    ("a, b", "c, a", "ignore", "c, a"),
    ("a, b", "c, a", "keep", "a, b"),
    (None, "c, a", "keep", "c, a"),
    ("  ", "c", "keep", "c"),
    ("a, b", "c, A", "prepend", "c, A, b"),
    ("a, b", "c, A", "append", "a, b, c"),
    (None, "c, c", "append", "c"),
    ("a photo of a dog", "dog, grass", "prepend", "dog, grass, a photo of a dog"),
])
def test_combine_caption(existing, new, mode, expected):
    assert combine_caption(existing, new, mode) == expected


def test_refusals_name_the_field(people):
    before = _state(people)
    cases = [
        (lambda: combine_caption("a", "b", "replace"), "prepare.existing_captions"),
        (lambda: merge_tags(people, ["1boy"], ""), "prepare.merge_into"),
        (lambda: merge_tags(people, ["1boy"], "a, b"), "prepare.merge_into"),
        (lambda: merge_tags(people, [], "x"), "prepare.merge_tags"),
        (lambda: merge_tags(people, "1boy", "x"), "prepare.merge_tags"),
        (lambda: replace_tag(people, "smile", " "), "prepare.replace_with"),
        (lambda: replace_tag(people, "", "x"), "prepare.replace_tag"),
        (lambda: remove_tags(people, ["ok", ""]), "prepare.remove_tags"),
        (lambda: add_prefix(people, "sks, dog"), "prepare.trigger_word"),
        (lambda: add_prefix(people, ""), "prepare.trigger_word"),
        (lambda: add_prefix(people, "sks", ext=".png"), "prepare.caption_extension"),
        (lambda: tag_frequency(people / "missing"), "missing"),
    ]
    for call, field in cases:
        with pytest.raises(PrepareError, match=field.replace(".", r"\.")):
            call()
    assert _state(people) == before
