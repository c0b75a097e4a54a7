"""Prepare step, image side: crops, keep-aspect, split, flip, captions, bad files, folder safety, stop,
preview grid. Every picture is generated here with Pillow."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extensions_lib.data.folders import parse_subset_name, scan_dataset
from extensions_lib.prepare.images import (
    ImageOptions, PrepareError, auto_size, prepare_images, subset_folder_name, tile_offsets,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _solid(path: Path, size=(96, 64), color=BLUE) -> Path:
    return _save(path, Image.new("RGB", size, color))


def _x_gradient(size) -> Image.Image:
    """Red channel = x position scaled to 0..255, green = y: every column is recognisable."""
    w, h = size
    xs = np.linspace(0, 255, w).round().astype(np.uint8)
    ys = np.linspace(0, 255, h).round().astype(np.uint8)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :, 0] = xs[None, :]
    arr[:, :, 1] = ys[:, None]
    return Image.fromarray(arr)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def _close(pixel, expected, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _sizes(result) -> dict[str, tuple[int, int]]:
    out = {}
    for o in result.outputs:
        with Image.open(o.path) as img:
            out[o.path.name] = img.size
    return out


# --------------------------------------------------------------------------------------------
# Sizes per mode
# --------------------------------------------------------------------------------------------

def test_center_crop_is_exact_and_keeps_the_middle(tmp_path):
    wide = Image.new("RGB", (300, 100), BLUE)
    wide.paste(RED, (140, 0, 160, 100))        # a red band in the middle
    _save(tmp_path / "src" / "wide.png", wide)
    _solid(tmp_path / "src" / "tall.jpg", (50, 200), GREEN)

    result = prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(width=64, height=64))

    assert _sizes(result) == {"wide.png": (64, 64), "tall.png": (64, 64)}
    assert {o.kind for o in result.outputs} == {"crop"}
    px = _pixels(tmp_path / "out" / "wide.png")
    assert _close(px[32, 32], RED), "the centre band must survive a centre crop"
    assert _close(px[32, 2], BLUE) and _close(px[32, 61], BLUE)


def test_auto_size_picks_the_largest_fitting_multiple_of_64(tmp_path):
    _save(tmp_path / "src" / "a.png", _x_gradient((600, 400)))
    _solid(tmp_path / "src" / "strip.png", (1000, 10))
    opts = ImageOptions(mode="auto_size", min_area=64 * 64, max_area=384 * 256, auto_size_max_error=0.0)

    result = prepare_images(tmp_path / "src", tmp_path / "out", opts)

    assert _sizes(result) == {"a.png": (384, 256)}
    assert auto_size((600, 400), opts) == (384, 256)
    [(path, reason)] = result.skipped
    assert path.name == "strip.png" and "prepare.auto_size_max_error" in reason
    # with a looser limit the size stays within the area bounds and in steps of 64
    loose = ImageOptions(mode="auto_size", min_area=64 * 64, max_area=512 * 512, auto_size_max_error=0.2)
    w, h = auto_size((1000, 10 * 70), loose)
    assert w % 64 == 0 and h % 64 == 0 and 64 * 64 <= w * h <= 512 * 512


def test_focal_mode_uses_the_callers_crop_and_forces_the_size(tmp_path):
    _solid(tmp_path / "src" / "a.png", (200, 100))
    _solid(tmp_path / "src" / "b.png", (100, 200))
    calls = []

    def fake_focal(img, w, h):
        calls.append((img.size, w, h))
        return img if img.width > img.height else img.resize((w, h))   # "a": wrong size, fixed by us

    result = prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(width=96, height=64, mode="focal"),
                            focal_crop=fake_focal)

    assert calls == [((200, 100), 96, 64), ((100, 200), 96, 64)]
    assert _sizes(result) == {"a.png": (96, 64), "b.png": (96, 64)}


def test_focal_mode_without_the_webui_is_refused(tmp_path):
    _solid(tmp_path / "src" / "a.png")
    with pytest.raises(PrepareError, match="prepare.mode = focal.*autocrop.*center"):
        prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(mode="focal"))
    assert not (tmp_path / "out").exists()


def test_keep_mode_keeps_aspect_and_only_shrinks(tmp_path):
    _solid(tmp_path / "src" / "big.png", (800, 400))
    _solid(tmp_path / "src" / "small.png", (100, 50))

    result = prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(width=256, height=192, mode="keep"))

    assert _sizes(result) == {"big.png": (256, 128), "small.png": (100, 50)}
    assert {o.kind for o in result.outputs} == {"keep"}


# --------------------------------------------------------------------------------------------
# Split and flip
# --------------------------------------------------------------------------------------------

def test_split_of_a_3_to_1_image_covers_it_with_overlapping_tiles(tmp_path):
    source = _x_gradient((384, 128))
    _save(tmp_path / "src" / "pano.png", source)
    _save(tmp_path / "src" / "tall.png", _x_gradient((128, 384)))
    _solid(tmp_path / "src" / "mild.png", (160, 128))      # 1.25:1, above the threshold: not split
    opts = ImageOptions(width=128, height=128, split_oversized=True)

    result = prepare_images(tmp_path / "src", tmp_path / "out", opts)

    offsets = tile_offsets(384, 128, 0.2)
    assert len(offsets) == 4 and offsets[0] == 0 and offsets[-1] == 384 - 128
    assert all(b - a < 128 for a, b in zip(offsets, offsets[1:])), "tiles must overlap, leaving no gap"
    tiles = [o for o in result.outputs if o.source.name == "pano.png"]
    assert [t.path.name for t in tiles] == [f"pano-{i}.png" for i in range(1, 5)]
    assert {t.kind for t in tiles} == {"tile"}
    src_px = np.asarray(source).astype(int)
    for tile, x in zip(tiles, offsets):
        assert np.array_equal(_pixels(tile.path), src_px[:, x:x + 128])
    assert len([o for o in result.outputs if o.source.name == "tall.png"]) == 4   # split along the height
    [mild] = [o for o in result.outputs if o.source.name == "mild.png"]
    assert mild.kind == "crop" and mild.path.name == "mild.png"


def test_flipped_copies_are_mirror_images(tmp_path):
    _save(tmp_path / "src" / "a.png", _x_gradient((64, 64)))
    _save(tmp_path / "src" / "pano.png", _x_gradient((192, 64)))
    opts = ImageOptions(width=64, height=64, flip=True, split_oversized=True)

    result = prepare_images(tmp_path / "src", tmp_path / "out", opts)

    names = {o.path.name: o for o in result.outputs}
    assert names["a-flipped.png"].kind == "flip"
    assert np.array_equal(_pixels(tmp_path / "out" / "a-flipped.png"), _pixels(tmp_path / "out" / "a.png")[:, ::-1])
    pano_tiles = [n for n, o in names.items() if o.source.name == "pano.png" and o.kind == "tile"]
    assert pano_tiles and all(f"{Path(n).stem}-flipped.png" in names for n in pano_tiles)
    assert not np.array_equal(_pixels(tmp_path / "out" / "a.png"), _pixels(tmp_path / "out" / "a-flipped.png"))


# --------------------------------------------------------------------------------------------
# Captions, names, bad files
# --------------------------------------------------------------------------------------------

def test_captions_are_copied_beside_every_output(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png", _x_gradient((192, 64)))
    caption = b"\xef\xbb\xbfsks dog, red collar\r\n"
    (src / "a.txt").write_bytes(caption)
    _solid(src / "b.png")
    opts = ImageOptions(width=64, height=64, flip=True, split_oversized=True)

    result = prepare_images(src, tmp_path / "out", opts)

    from_a = [o for o in result.outputs if o.source.name == "a.png"]
    assert len(from_a) > 2
    for out in from_a:
        assert out.path.with_suffix(".txt").read_bytes() == caption
    assert not any(o.path.with_suffix(".txt").exists() for o in result.outputs if o.source.name == "b.png")

    plain = prepare_images(src, tmp_path / "plain", opts, copy_captions=False)
    assert plain.outputs and not list((tmp_path / "plain").glob("*.txt"))


def test_sources_with_the_same_stem_get_distinct_names(tmp_path):
    _solid(tmp_path / "src" / "a.jpg", color=RED)
    _solid(tmp_path / "src" / "a.png", color=BLUE)
    _solid(tmp_path / "src" / "A.webp", color=GREEN)

    result = prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(width=64, height=64))

    names = [o.path.name.casefold() for o in result.outputs]
    assert len(names) == 3 and len(set(names)) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(o.path.name for o in result.outputs)


def test_bad_files_are_listed_and_the_rest_is_done(tmp_path):
    src = tmp_path / "src"
    _solid(src / "good.png")
    (src / "broken.png").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (src / "empty.jpg").write_bytes(b"")
    (src / "lonely.txt").write_text("no image here")
    (src / "notes.json").write_text("{}")
    (src / "nested").mkdir()
    progress = []

    result = prepare_images(src, tmp_path / "out", ImageOptions(width=64, height=64),
                            on_progress=lambda done, total, name: progress.append((done, total, name)))

    assert [o.path.name for o in result.outputs] == ["good.png"]
    reasons = {p.name: r for p, r in result.skipped}
    assert set(reasons) == {"broken.png", "empty.jpg", "lonely.txt", "notes.json", "nested"}
    assert "not a readable image" in reasons["broken.png"] and "empty" in reasons["empty.jpg"]
    assert "without an image" in reasons["lonely.txt"]
    assert progress == [(1, 3, "broken.png"), (2, 3, "empty.jpg"), (3, 3, "good.png")]


# --------------------------------------------------------------------------------------------
# Folder safety, originals, stop
# --------------------------------------------------------------------------------------------

def test_output_folder_must_be_new_or_empty_and_outside_the_source(tmp_path):
    src = tmp_path / "src"
    _solid(src / "a.png")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep me")
    before = _digest(dst)

    with pytest.raises(PrepareError, match=r"out already exists and is not empty; pick another name or empty it"):
        prepare_images(src, dst, ImageOptions())
    assert _digest(dst) == before
    with pytest.raises(PrepareError, match="inside the source folder"):
        prepare_images(src, src / "prepared", ImageOptions())
    with pytest.raises(PrepareError, match="inside the source folder"):
        prepare_images(src, src, ImageOptions())
    assert not (src / "prepared").exists()

    nested = tmp_path / "new" / "deeper" / "out"
    assert prepare_images(src, nested, ImageOptions(width=64, height=64)).outputs
    (tmp_path / "empty").mkdir()
    assert prepare_images(src, tmp_path / "empty", ImageOptions(width=64, height=64)).outputs


def test_originals_stay_byte_identical(tmp_path):
    src = tmp_path / "src"
    _save(src / "a.png", _x_gradient((300, 100)))
    _save(src / "b.jpg", _x_gradient((100, 300)))
    (src / "a.txt").write_text("a, b")
    before = _digest(src)

    prepare_images(src, tmp_path / "out", ImageOptions(width=64, height=64, flip=True, split_oversized=True))

    assert _digest(src) == before


def test_stop_after_two_images_keeps_exactly_their_outputs(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        _solid(src / f"{i}.png")
    progress = []

    result = prepare_images(src, tmp_path / "out", ImageOptions(width=64, height=64, flip=True),
                            should_stop=lambda: len(progress) >= 2,
                            on_progress=lambda *a: progress.append(a))

    assert result.stopped
    assert {o.source.name for o in result.outputs} == {"0.png", "1.png"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0-flipped.png", "0.png", "1-flipped.png", "1.png"]


def test_prepared_folder_scans_as_a_kohya_subset(tmp_path):
    src = tmp_path / "raw"
    _save(src / "a.png", _x_gradient((300, 100)))
    (src / "a.txt").write_text("sks dog, grass")
    _solid(src / "b.jpg", (80, 120))
    (src / "readme.md").write_text("not an image")
    train = tmp_path / "train"
    folder = train / subset_folder_name(10, "sks", "dog")

    result = prepare_images(src, folder, ImageOptions(width=64, height=64, flip=True, split_oversized=True))
    scan = scan_dataset(train)

    [subset] = scan.subsets
    assert subset.path.name == "10_sks dog" and subset.repeats == 10 and subset.class_words == "sks dog"
    assert sorted(it.path for it in subset.items) == sorted(o.path for o in result.outputs)
    assert not scan.skipped and not scan.orphan_captions
    captions = {it.path.name: it.caption for it in subset.items}
    assert captions["a-1.png"] == "sks dog, grass" and captions["b.png"] == "sks dog"


def test_preview_grid_has_a_row_per_source(tmp_path):
    _solid(tmp_path / "src" / "a.png", (64, 64), RED)
    _solid(tmp_path / "src" / "b.png", (64, 64), GREEN)
    result = prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(width=64, height=64, flip=True))

    grid = result.preview_grid(thumb=32)

    pad = 4
    assert grid.size == (3 * 32 + 4 * pad, 2 * 32 + 3 * pad)    # source + crop + flip, two sources
    assert _close(grid.getpixel((pad + 36 + 16, pad + 16)), RED)          # row a, its crop
    assert _close(grid.getpixel((pad + 2 * 36 + 16, pad + 36 + 16)), GREEN)  # row b, its flip
    assert result.preview_grid(thumb=32, max_images=2).size == (2 * 32 + 3 * pad, 32 + 2 * pad)


# --------------------------------------------------------------------------------------------
# Refusals name the field
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"width": 30}, "prepare.width = 30: pick a multiple of 8 between 64 and 4096"),
    ({"height": 100}, "prepare.height = 100"),
    ({"mode": "stretch"}, "prepare.mode = 'stretch'"),
    ({"split_threshold": 0}, "prepare.split_threshold"),
    ({"split_overlap": 0.95}, "prepare.split_overlap"),
    ({"auto_size_max_error": 1.0}, "prepare.auto_size_max_error"),
    ({"min_area": 600 * 600}, "prepare.min_area"),
    ({"flip": "yes"}, "prepare.flip"),
])
def test_bad_options_name_the_field(tmp_path, kwargs, field):
    _solid(tmp_path / "src" / "a.png")
    with pytest.raises(PrepareError) as info:
        prepare_images(tmp_path / "src", tmp_path / "out", ImageOptions(**kwargs))
    assert field in str(info.value)
    assert not (tmp_path / "out").exists()


def test_subset_folder_name():
    name = subset_folder_name(10, "sks", "dog")
    assert name == "10_sks dog" and parse_subset_name(name) == (10, "sks dog")
    assert subset_folder_name(1, " ohwx ", "") == "1_ohwx"
    for args, field in [((0, "sks", "dog"), "prepare.repeats"), ((10001, "sks", "dog"), "prepare.repeats"),
                        ((True, "sks", "dog"), "prepare.repeats"), ((5, "  ", "dog"), "prepare.token"),
                        ((5, "a/b", "dog"), "prepare.token"), ((5, "a\\b", "dog"), "prepare.token"),
                        ((5, "sks?", "dog"), "prepare.token"), ((5, "sks", "dog:cat"), "prepare.class_word"),
                        ((5, "sks", "dog."), "prepare.class_word")]:
        with pytest.raises(PrepareError, match=field.replace(".", r"\.")):
            subset_folder_name(*args)
