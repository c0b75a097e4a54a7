"""Dataset pipeline: folder scanning, image edge cases, buckets, captions, epochs, latent cache.

All images are generated here with Pillow; everything runs on CPU in a few seconds.
"""
from __future__ import annotations

import io
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from extensions_lib.data import (
    DatasetError, ImageLoadError, TrainDataset, assign_bucket, load_rgb, make_buckets, probe_size,
    process_caption, resize_and_crop, scan_dataset,
)
from extensions_lib.data.buckets import no_upscale_bucket

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _solid(path: Path, size=(64, 64), color=RED, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **save_kwargs)
    return path


def _noise_jpeg_bytes(size=(96, 96)) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _close(pixel, expected, tol=6) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# --------------------------------------------------------------------------------------------
# Folder scan with every awkward case at once
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    train = root / "train"
    sub = train / "10_sks dog"
    sub.mkdir(parents=True)

    _solid(sub / "good.png", (64, 48), GREEN)
    (sub / "good.txt").write_bytes(b"\xef\xbb\xbfsks dog, red collar \r\nsecond line ignored\r\n")
    _solid(sub / "nocaption.jpg", (48, 64), BLUE)
    _solid(sub / "UPPER.JPEG", (32, 32), BLUE)
    _solid(sub / "pic.webp", (32, 32), BLUE)
    _solid(sub / "pic.bmp", (32, 32), BLUE)
    (sub / "zero.png").write_bytes(b"")
    (sub / "truncated.jpg").write_bytes(_noise_jpeg_bytes()[:1500])
    (sub / "notes.png").write_text("this is not an image\n")
    (sub / "meta.json").write_text("{}")          # non-image: ignored silently
    (sub / "stray.txt").write_text("orphan caption")

    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(sub / "cmyk.jpg", quality=95)   # red in CMYK
    Image.fromarray(np.full((16, 24), 32768, np.uint16)).save(sub / "gray16.png")
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))           # fully transparent red...
    rgba.paste((0, 255, 0, 255), (16, 0, 32, 32))                   # ...left, opaque green right
    rgba.save(sub / "alpha.png")
    sideways = Image.new("RGB", (40, 20), RED)                      # stored landscape: red | blue
    sideways.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6                                                # display rotated 90° clockwise
    sideways.save(sub / "rotated.jpg", exif=exif.tobytes(), quality=95)

    (train / "3_empty").mkdir()
    _solid(train / "no_prefix_here" / "x.png")
    _solid(train / "loose.png")
    return train


@pytest.fixture(scope="module")
def messy_scan(messy):
    return scan_dataset(messy)


def _problem_for(scan, name: str):
    hits = [p for p in scan.problems if p.path.name == name]
    assert hits, f"no problem reported for {name}: {[str(p) for p in scan.problems]}"
    return hits[0]


def _item(scan, name: str):
    return next(it for s in scan.subsets for it in s.items if it.path.name == name)


def test_scan_loads_good_images_and_reports_the_rest(messy_scan):
    sub = next(s for s in messy_scan.subsets if s.folder_name == "10_sks dog")
    assert (sub.repeats, sub.name, sub.class_words, sub.is_reg) == (10, "sks dog", "sks dog", False)
    loaded = sorted(it.path.name for it in sub.items)
    assert loaded == sorted(["good.png", "nocaption.jpg", "UPPER.JPEG", "pic.webp", "pic.bmp", "cmyk.jpg",
                             "gray16.png", "alpha.png", "rotated.jpg"])
    assert messy_scan.num_train_images == 9
    assert messy_scan.num_train_samples == 90
    assert messy_scan.num_reg_images == 0


@pytest.mark.parametrize("name, words", [
    ("zero.png", "empty (0 bytes)"),
    ("truncated.jpg", "damaged or incomplete"),
    ("notes.png", "not a readable image"),
    ("3_empty", "no usable images"),
    ("no_prefix_here", "rename it to e.g. 10_no_prefix_here"),
    ("loose.png", "subfolder"),
])
def test_bad_inputs_are_reported_by_file_with_reason(messy_scan, name, words):
    problem = _problem_for(messy_scan, name)
    assert words in problem.reason
    assert str(problem).startswith(str(problem.path) + ": ")


def test_ignored_files_are_silent(messy_scan):
    names = {p.path.name for p in messy_scan.problems}
    assert not names & {"meta.json", "x.png"}


def test_a_caption_without_an_image_is_reported(messy_scan):
    problem = _problem_for(messy_scan, "stray.txt")
    assert problem.kind == "orphan caption" and "without an image" in problem.reason
    assert [p.path.name for p in messy_scan.orphan_captions] == ["stray.txt"]
    assert "good.txt" not in {p.path.name for p in messy_scan.problems}


def test_report_counts_and_names_every_skipped_file_and_orphan_caption(messy_scan):
    lines = messy_scan.report()
    assert lines[0] == ("9 training images (90 samples per epoch); 4 file(s) skipped; "
                        "1 caption file(s) without an image")
    skipped = {Path(line.split(": ")[1]).name: line for line in lines if line.startswith("skipped: ")}
    assert set(skipped) == {"zero.png", "truncated.jpg", "notes.png", "loose.png"}
    assert "damaged or incomplete" in skipped["truncated.jpg"]
    assert any(line.startswith("caption without an image: ") and "stray.txt" in line for line in lines)
    assert any(line.startswith("note: ") and "3_empty" in line for line in lines)


def test_a_full_check_decodes_each_file_once_until_it_changes(tmp_path, monkeypatch):
    from extensions_lib.data import images

    sub = tmp_path / "1_x"
    _solid(sub / "a.png")
    (sub / "bad.jpg").write_bytes(_noise_jpeg_bytes()[:1500])
    calls = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda p: calls.append(Path(p).name) or real(p))
    first = scan_dataset(tmp_path, check_images=True)
    again = scan_dataset(tmp_path, check_images=True)
    assert sorted(calls) == ["a.png", "bad.jpg"]               # the second scan decoded nothing
    assert [str(p) for p in first.skipped] == [str(p) for p in again.skipped] and len(again.skipped) == 1
    _solid(sub / "bad.jpg", (32, 32), BLUE, format="JPEG")      # the user repairs the file
    fixed = scan_dataset(tmp_path, check_images=True)
    assert fixed.num_train_images == 2 and not fixed.skipped


def test_summary_rows(messy_scan):
    rows = {r["folder"]: r for r in messy_scan.summary()}
    row = rows["10_sks dog"]
    assert (row["repeats"], row["images"], row["captions found"], row["captions missing"], row["unreadable"]) \
        == (10, 9, 1, 8, 3)
    assert rows["3_empty"]["images"] == 0


def test_caption_with_bom_and_crlf_is_exact(messy_scan):
    good = _item(messy_scan, "good.png")
    assert good.caption == "sks dog, red collar"
    assert good.has_caption_file
    fallback = _item(messy_scan, "nocaption.jpg")
    assert fallback.caption == "sks dog" and not fallback.has_caption_file


def test_cmyk_jpeg_colors_converted(messy):
    img = load_rgb(messy / "10_sks dog" / "cmyk.jpg")
    assert img.mode == "RGB"
    assert _close(img.getpixel((16, 16)), RED)


def test_16bit_png_is_scaled_not_clipped(messy):
    img = load_rgb(messy / "10_sks dog" / "gray16.png")
    assert img.mode == "RGB" and img.size == (24, 16)
    values = np.asarray(img)
    assert np.all(np.abs(values.astype(int) - 128) <= 1)


def test_exif_rotation_swaps_size_and_moves_pixels(messy, messy_scan):
    path = messy / "10_sks dog" / "rotated.jpg"
    img = load_rgb(path)
    assert img.size == (20, 40)
    assert probe_size(path) == (20, 40)
    assert _item(messy_scan, "rotated.jpg").size == (20, 40)
    # 90° clockwise: the stored left (red) half is now on top, the right (blue) half below.
    assert _close(img.getpixel((10, 5)), RED, 12)
    assert _close(img.getpixel((10, 35)), BLUE, 12)


def test_rgba_is_composited_on_white(messy, tmp_path):
    img = load_rgb(messy / "10_sks dog" / "alpha.png")
    assert img.getpixel((4, 4)) == WHITE
    assert img.getpixel((28, 4)) == GREEN
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    half.save(tmp_path / "half.png")
    assert _close(load_rgb(tmp_path / "half.png").getpixel((0, 0)), (127, 127, 127), 1)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pal.png", transparency=0)
    assert load_rgb(tmp_path / "pal.png").getpixel((0, 0)) == WHITE


def test_truncated_detected_even_if_pillow_was_told_to_allow_it(messy):
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageLoadError, match="truncated.jpg"):
            load_rgb(messy / "10_sks dog" / "truncated.jpg")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True       # the host's setting is restored
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_header_only_scan_misses_truncation_but_catches_empty(messy):
    scan = scan_dataset(messy, check_images=False)
    names = {p.path.name for p in scan.problems}
    assert {"zero.png", "notes.png"} <= names
    assert "truncated.jpg" not in names


def test_caption_extension_and_dot_caption(tmp_path):
    sub = tmp_path / "2_cat"
    _solid(sub / "a.png")
    _solid(sub / "b.png")
    (sub / "a.cap").write_text("from cap", encoding="utf-8")
    (sub / "b.caption").write_text("from caption", encoding="utf-8")
    scan = scan_dataset(tmp_path, caption_extension="cap")
    assert _item(scan, "a.png").caption == "from cap"
    assert _item(scan, "b.png").caption == "from caption"


def test_empty_caption_file_falls_back_to_folder_words(tmp_path):
    sub = tmp_path / "4_red fox"
    _solid(sub / "a.png")
    (sub / "a.txt").write_text(" \n\n")
    scan = scan_dataset(tmp_path)
    item = _item(scan, "a.png")
    assert (item.caption, item.has_caption_file) == ("red fox", False)
    assert "empty" in _problem_for(scan, "a.txt").reason


def test_non_utf8_caption_is_reported(tmp_path):
    sub = tmp_path / "1_x"
    _solid(sub / "a.png")
    _solid(sub / "b.png")
    (sub / "a.txt").write_bytes("caf\xe9".encode("latin-1"))
    scan = scan_dataset(tmp_path)
    assert "UTF-8" in _problem_for(scan, "a.txt").reason
    assert [it.path.name for it in scan.subsets[0].items] == ["b.png"]


# --------------------------------------------------------------------------------------------
# Fatal cases
# --------------------------------------------------------------------------------------------

def test_missing_train_dir(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_dataset(tmp_path / "file")


def test_no_prefixed_subfolder_says_how_to_rename(tmp_path):
    _solid(tmp_path / "mysubject" / "a.png")
    with pytest.raises(DatasetError) as e:
        scan_dataset(tmp_path)
    assert "10_mysubject" in str(e.value) and str(tmp_path) in str(e.value)


def test_no_usable_image_refuses_training(tmp_path):
    bad = tmp_path / "5_broken"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.jpg").write_bytes(_noise_jpeg_bytes()[:800])
    with pytest.raises(DatasetError) as e:
        scan_dataset(tmp_path)
    assert "5_broken" in str(e.value) and "refuses to start" in str(e.value)


def test_missing_reg_dir_is_fatal(tmp_path):
    _solid(tmp_path / "train" / "1_a" / "a.png")
    with pytest.raises(DatasetError, match="regularization folder"):
        scan_dataset(tmp_path / "train", reg_dir=tmp_path / "reg")


# --------------------------------------------------------------------------------------------
# Buckets
# --------------------------------------------------------------------------------------------

def test_make_buckets_shape():
    buckets = make_buckets(512, 256, 1024, 64)
    assert (512, 512) in buckets and (768, 320) in buckets and (320, 768) in buckets
    for w, h in buckets:
        assert w * h <= 512 * 512
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert (h, w) in buckets


def test_assign_bucket_nearest_aspect():
    buckets = make_buckets(512, 256, 1024, 64)
    kw = dict(resolution=512, min_reso=256, max_reso=1024, step=64)
    assert assign_bucket(1000, 1000, **kw) == (512, 512)
    w, h = assign_bucket(1600, 900, **kw)
    best = min(abs(np.log(bw / bh) - np.log(16 / 9)) for bw, bh in buckets)
    assert abs(np.log(w / h) - np.log(16 / 9)) == pytest.approx(best)
    assert w > h
    assert assign_bucket(900, 1600, **kw) == (h, w)
    assert assign_bucket(1600, 900, enabled=False, **kw) == (512, 512)


def test_bucket_no_upscale():
    kw = dict(resolution=512, step=64, no_upscale=True)
    assert assign_bucket(300, 200, **kw) == (256, 192)            # own size, rounded down
    assert assign_bucket(64, 64, **kw) == (64, 64)                # never enlarged to 512
    w, h = assign_bucket(2000, 1000, **kw)
    assert w * h <= 512 * 512 and w <= 2000 and w % 64 == 0 and h % 64 == 0
    assert 1.7 < w / h < 2.3
    assert no_upscale_bucket(40, 300, 512, 64) == (64, 256)       # sides keep at least one step


def test_resize_and_crop_center_and_random():
    img = Image.new("RGB", (200, 100), RED)
    img.paste(BLUE, (150, 0, 200, 100))
    out, (left, top) = resize_and_crop(img, (64, 64))
    assert out.size == (64, 64) and (left, top) == ((128 - 64) // 2, 0)
    assert _close(out.getpixel((32, 32)), RED)
    offsets = {resize_and_crop(img, (64, 64), random_crop=True, rng=random.Random(i))[1] for i in range(20)}
    assert len(offsets) > 1 and all(0 <= l <= 64 and t == 0 for l, t in offsets)
    again = resize_and_crop(img, (64, 64), random_crop=True, rng=random.Random(3))[1]
    assert again == resize_and_crop(img, (64, 64), random_crop=True, rng=random.Random(3))[1]


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

CAPTION = "sks dog, solo, red collar, grass, sky, tree"


def test_keep_tokens_stay_in_place_while_rest_shuffles():
    seen = set()
    for seed in range(30):
        out = process_caption(CAPTION, shuffle=True, keep_tokens=2, rng=random.Random(seed)).split(", ")
        assert out[:2] == ["sks dog", "solo"]
        assert sorted(out[2:]) == sorted(["red collar", "grass", "sky", "tree"])
        seen.add(tuple(out))
    assert len(seen) > 1


def test_dropout_rates_zero_and_one():
    rng = random.Random(0)
    assert process_caption(CAPTION, rng=rng) == CAPTION
    assert process_caption(CAPTION, caption_dropout_rate=0.0, tag_dropout_rate=0.0, rng=rng) == CAPTION
    assert process_caption(CAPTION, caption_dropout_rate=1.0, rng=rng) == ""
    assert process_caption(CAPTION, keep_tokens=1, tag_dropout_rate=1.0, rng=rng) == "sks dog"
    half = [process_caption(CAPTION, keep_tokens=1, tag_dropout_rate=0.5, rng=rng) for _ in range(200)]
    assert all(h.startswith("sks dog") for h in half)
    assert 1 < np.mean([len(h.split(", ")) for h in half]) < 6


# --------------------------------------------------------------------------------------------
# TrainDataset
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def small(tmp_path):
    """3_a: 4 squares; 2_b: 2 wide images; reg 1_dog: 3 squares. 16 train samples per epoch."""
    train, reg = tmp_path / "train", tmp_path / "reg"
    for i in range(4):
        _solid(train / "3_a" / f"a{i}.png", (64, 64), (i * 40, 0, 0))
        (train / "3_a" / f"a{i}.txt").write_text(f"sks, tag{i}, common, extra")
    for i in range(2):
        _solid(train / "2_b" / f"b{i}.png", (128, 64), (0, i * 90, 0))
    for i in range(3):
        _solid(reg / "1_dog" / f"r{i}.png", (64, 64), (0, 0, i * 60))
    return scan_dataset(train, reg_dir=reg)


def _fake_vae(calls: list):
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        assert pixels.min() >= -1 and pixels.max() <= 1
        calls.append(pixels.shape[0])
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], dim=1)   # (B, 4, H/8, W/8)
    return encode


def _dataset(scan, **kw):
    opts = dict(resolution=64, enable_buckets=True, min_bucket_reso=64, max_bucket_reso=128,
                bucket_reso_steps=64, batch_size=2, seed=7)
    opts.update(kw)
    return TrainDataset(scan, **opts)


def _epoch_signature(batches):
    return [(b.index, tuple(p.name for p in b.paths), tuple(b.captions), tuple(b.is_reg.tolist())) for b in batches]


def test_repeats_and_reg_balance(small):
    assert (small.num_train_images, small.num_train_samples, small.num_reg_images, small.num_reg_samples) \
        == (6, 16, 3, 3)
    assert {r["folder"]: r["kind"] for r in small.summary()}["1_dog"] == "regularization"
    ds = _dataset(small)
    ds.cache_latents(_fake_vae([]))
    batches = list(ds.epoch_batches(0))
    names = Counter(p.name for b in batches for p in b.paths if not p.name.startswith("r"))
    assert names == Counter({**{f"a{i}.png": 3 for i in range(4)}, **{f"b{i}.png": 2 for i in range(2)}})
    reg = [p.name for b in batches for p, r in zip(b.paths, b.is_reg.tolist()) if r]
    assert all(n.startswith("r") for n in reg)
    assert len(reg) == ds.num_train_samples == 16          # 3 reg images cycled up to 16 samples
    assert max(Counter(reg).values()) - min(Counter(reg).values()) <= 1
    assert any(b.is_reg.any() and not b.is_reg.all() for b in batches)   # mixed into batches
    assert len(ds) == len(batches) == ds.steps_per_epoch(1)


def test_batches_never_mix_buckets(small):
    opts = dict(resolution=128, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64)
    ds = _dataset(small, **opts)
    ds.cache_latents(_fake_vae([]))
    square = assign_bucket(64, 64, min_reso=64, max_reso=256, step=64, resolution=128)
    wide = assign_bucket(128, 64, min_reso=64, max_reso=256, step=64, resolution=128)
    assert square == (128, 128) and wide[0] > wide[1]
    for b in ds.epoch_batches(0):
        kinds = {p.name.startswith("b") for p in b.paths}
        assert len(kinds) == 1
        assert b.bucket == (wide if kinds.pop() else square)
        assert tuple(b.latents.shape[2:]) == (b.bucket[1] // 8, b.bucket[0] // 8)
        assert b.pixels is None and b.latents.dtype == torch.float32


def test_epoch_batches_deterministic(small):
    kw = dict(shuffle_caption=True, keep_tokens=1)
    first = _epoch_signature(_dataset(small, **kw).epoch_batches(3))
    second = _epoch_signature(_dataset(small, **kw).epoch_batches(3))
    assert first == second
    assert _epoch_signature(_dataset(small, **kw).epoch_batches(4)) != first
    assert _epoch_signature(_dataset(small, seed=8, **kw).epoch_batches(3)) != first
    captions = {c for _, _, caps, _ in first for c in caps if c.startswith("sks")}
    assert len(captions) > 1 and all(c.split(", ")[0] == "sks" for c in captions)


def test_sharding_is_disjoint_and_lockstep(small):
    ds = _dataset(small)
    total = len(ds)
    shards = [ds.epoch_batches(1, num_shards=3, shard_index=i) for i in range(3)]
    assert {len(s) for s in shards} == {total // 3} == {ds.steps_per_epoch(3)}
    indices = [b.index for s in shards for b in s]
    assert len(indices) == len(set(indices)) == 3 * (total // 3)
    whole = {b.index: _epoch_signature([b]) for b in ds.epoch_batches(1)}
    for s in shards:
        for b in s:
            assert _epoch_signature([b]) == whole[b.index]
    with pytest.raises(DatasetError, match="processes"):
        ds.epoch_batches(0, num_shards=total + 1, shard_index=0)


def test_cache_latents_encodes_each_image_once_and_reuses_disk(small, tmp_path):
    calls: list = []
    ds = _dataset(small, batch_size=1)
    ds.cache_latents(_fake_vae(calls), batch_size=2, disk_dir=tmp_path / "cache", cache_key="vae-a")
    assert sum(calls) == 9 and max(calls) <= 2          # 6 train + 3 reg images, once each
    assert ds.latents_cached
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 9

    calls2: list = []
    again = _dataset(small, batch_size=1)
    progress = []
    again.cache_latents(_fake_vae(calls2), disk_dir=tmp_path / "cache", cache_key="vae-a",
                        progress=lambda done, total: progress.append((done, total)))
    assert calls2 == [] and progress[-1] == (9, 9)
    b1, b2 = ds.epoch_batches(0)[0], again.epoch_batches(0)[0]
    assert b1.paths == b2.paths and torch.equal(b1.latents, b2.latents)

    # An edited image and another VAE are encoded again.
    changed = small.subsets[0].items[0].path
    os.utime(changed, ns=(0, 12345))
    calls3: list = []
    _dataset(small).cache_latents(_fake_vae(calls3), disk_dir=tmp_path / "cache", cache_key="vae-a")
    assert sum(calls3) == 1
    calls4: list = []
    _dataset(small).cache_latents(_fake_vae(calls4), disk_dir=tmp_path / "cache", cache_key="vae-b")
    assert sum(calls4) == 9


def test_flip_aug_caches_flipped_latents(small):
    calls: list = []
    ds = _dataset(small, flip_aug=True, batch_size=1)
    ds.cache_latents(_fake_vae(calls))
    assert sum(calls) == 18                              # each image and its mirror image
    flipped = [b for b in ds.epoch_batches(0) if b.flipped[0]]
    assert flipped and len(flipped) < len(ds)
    b = flipped[0]
    plain = ds._latents[next(i for i, e in enumerate(ds._entries) if e.item.path == b.paths[0])]
    assert torch.allclose(b.latents[0], plain.flip(-1), atol=1e-6)


def test_random_crop_carries_pixels(small):
    ds = _dataset(small, random_crop=True, enable_buckets=False, resolution=64)
    assert not ds.can_cache_latents
    with pytest.raises(RuntimeError, match="random_crop"):
        ds.cache_latents(_fake_vae([]))
    batch = ds.epoch_batches(0)[0]
    assert batch.latents is None
    assert batch.pixels.shape == (len(batch.paths), 3, 64, 64)
    assert batch.pixels.min() >= -1 and batch.pixels.max() <= 1
    assert len(batch.crop_offsets) == len(batch.paths)


def test_uncached_pixels_match_image(small):
    ds = _dataset(small, batch_size=1)
    batch = next(b for b in ds.epoch_batches(0) if b.paths[0].name == "a3.png")
    assert torch.allclose(batch.pixels[0, 0], torch.full((64, 64), 120 / 127.5 - 1), atol=1e-5)


def test_captions_static_and_metadata(small):
    assert _dataset(small).captions_are_static
    assert _dataset(small, keep_tokens=2).captions_are_static
    assert not _dataset(small, shuffle_caption=True).captions_are_static
    assert not _dataset(small, caption_dropout_rate=0.1).captions_are_static
    assert not _dataset(small, caption_tag_dropout_rate=0.1).captions_are_static

    ds = _dataset(small)
    assert ds.dataset_dirs() == {"3_a": {"n_repeats": 3, "img_count": 4}, "2_b": {"n_repeats": 2, "img_count": 2},
                                 "1_dog": {"n_repeats": 1, "img_count": 3}}
    freq = ds.tag_frequency()
    assert freq["3_a"]["sks"] == 4 and freq["3_a"]["tag0"] == 1 and freq["3_a"]["common"] == 4
    assert freq["2_b"] == {"b": 2} and freq["1_dog"] == {"dog": 3}


def test_bad_options_name_the_field(small):
    with pytest.raises(ValueError, match="caption_dropout_rate"):
        _dataset(small, caption_dropout_rate=1.5)
    with pytest.raises(ValueError, match="bucket_reso_steps"):
        _dataset(small, bucket_reso_steps=60)
    with pytest.raises(ValueError, match="batch_size"):
        _dataset(small, batch_size=0)
