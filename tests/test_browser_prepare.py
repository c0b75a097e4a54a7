"""The Trainer tab's "Prepare dataset" step in a real browser, then training on what it made:
raw pictures -> Prepare (crop, flipped copies, captions with the trigger word first) -> tag merge ->
the Train step's Dataset folder filled in -> Start -> the LoRA file.

Same server and browser as test_browser.py (`python -m extensions_lib ui --checkpoint tiny` in a
subprocess, Playwright + the system Chromium). The Prepare step's screenshot goes to
test-artifacts/prepare_step.png for a human to look at.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api")

# `server` is test_browser.py's fixture (the UI server in a subprocess), imported so pytest finds it here
from test_browser import (ARGS, ARTIFACTS, CHROMIUM, DEADLINE, _box, _el, _start,  # noqa: E402, F401
                          _wait_for_status, server)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                                "(tools/setup_browser.sh installs it)")

P = "trainer_ext_prepare"
# raw picture name -> (size, caption or None); one wide 3:1 picture, two captioned ones
RAW = {"portrait": ((80, 128), "red dog, sitting"),
       "wide": ((192, 64), "black dog, running"),
       "square": ((96, 96), None),
       "landscape": ((120, 80), None)}
BROKEN = "broken.png"


def _make_raw(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (name, ((w, h), caption)) in enumerate(RAW.items()):
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 60 * i)], -1)
        a[h // 4:h // 2, w // 4:w // 2] = rng.integers(0, 255, 3)   # a block so a flip differs
        Image.fromarray(a.astype(np.uint8)).save(folder / f"{name}.png")
        if caption:
            (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    (folder / BROKEN).write_bytes(b"this is not a PNG")


def _text(page, elem_id: str) -> str:
    return page.evaluate(f"() => (document.querySelector('#{elem_id}') || {{}}).innerText || ''")


def _wait(page, predicate, what: str, timeout: float = DEADLINE) -> None:
    """Poll `predicate()` until true; on timeout a screenshot and the Prepare step's messages."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    page.screenshot(path=str(ARTIFACTS / "prepare-failure.png"), full_page=True)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                         f"prepare message: {_text(page, P + '_message')}\n"
                         f"tag message: {_text(page, P + '_tag_message')}\n"
                         f"train message: {_text(page, 'trainer_ext_message')}\n"
                         f"(screenshot: {ARTIFACTS / 'prepare-failure.png'})")


def _step_tab(page, label: str):
    """The button that selects one of the tab's steps (gradio 3 and 4 markup)."""
    return page.locator("#trainer_ext_steps button, .tab-nav button").filter(
        has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first


def _table_rows(page, elem_id: str) -> dict[str, str]:
    """A gradio Dataframe's body rows as {first cell: second cell}."""
    rows = page.evaluate(f"""() => Array.from(document.querySelectorAll('#{elem_id} tbody tr')).map(
        tr => Array.from(tr.querySelectorAll('td')).map(td => td.innerText.trim()))""")
    return {r[0]: r[1] for r in rows if len(r) >= 2}


def _captions(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def test_prepare_then_train_in_the_browser(server):
    base, tmp = server
    raw, dataset = tmp / "raw", tmp / "dataset"
    _make_raw(raw)
    subset = dataset / "2_sks dog"
    ARTIFACTS.mkdir(exist_ok=True)
    started = time.time()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.set_default_timeout(DEADLINE * 1000)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#trainer_ext_start")
        _wait_for_status(page, "the idle status", states=("idle",))

        # -- Prepare ------------------------------------------------------------------------------
        _step_tab(page, "Prepare dataset").click()
        page.wait_for_selector(f"#{P}_start", state="visible")
        _box(page, f"{P}_source_dir").fill(str(raw))
        _box(page, f"{P}_dataset_dir").fill(str(dataset))
        _box(page, f"{P}_token").fill("sks")
        _box(page, f"{P}_class_word").fill("dog")
        _box(page, f"{P}_repeats").fill("2")
        _box(page, f"{P}_width").fill("64")
        _box(page, f"{P}_height").fill("64")
        _el(page, f"{P}_flip").locator("input[type=checkbox]").check()
        page.click(f"#{P}_start")
        _wait(page, lambda: page.locator(f"#{P}_message .trainer-ok, #{P}_message .trainer-error").count() > 0,
              "Prepare to finish")
        message = _text(page, f"{P}_message")
        assert page.locator(f"#{P}_message .trainer-ok").count() == 1, message
        assert f"8 training image(s) written to {subset}" in message, message
        assert BROKEN in message and "1 file(s) skipped" in message, message
        assert "Dataset folder now points at it" in message, message
        # the preview shows what each picture became (a decoded image, not a broken link)
        _wait(page, lambda: page.evaluate(f"""() => Array.from(document.querySelectorAll('#{P}_preview img'))
              .some(img => img.complete && img.naturalWidth > 0)"""), "the preview image")

        pngs = sorted(subset.glob("*.png"))
        assert len(pngs) == 8, [p.name for p in pngs]
        assert sum(p.stem.endswith("-flipped") for p in pngs) == 4
        for png in pngs:
            with Image.open(png) as im:
                assert im.size == (64, 64), (png.name, im.size)
        # a flipped copy is the mirror of its original
        with Image.open(subset / "wide.png") as a, Image.open(subset / "wide-flipped.png") as b:
            assert np.array_equal(np.asarray(a)[:, ::-1], np.asarray(b))
        before = _captions(subset)
        assert sorted(before) == ["portrait-flipped.txt", "portrait.txt", "wide-flipped.txt", "wide.txt"]
        assert before["portrait.txt"].strip() == "sks, red dog, sitting", before
        assert all(text.split(",")[0].strip() == "sks" for text in before.values()), before

        # -- Tag editing --------------------------------------------------------------------------
        _wait(page, lambda: _box(page, f"{P}_tag_folder").input_value() == str(subset),
              "Prepare to fill the tag folder")
        page.click(f"#{P}_show_tags")
        _wait(page, lambda: _table_rows(page, f"{P}_tag_table").get("sks") == "4", "the tag table to list sks")
        rows = _table_rows(page, f"{P}_tag_table")
        assert rows.get("red dog") == "2" and rows.get("sitting") == "2", rows
        _el(page, f"{P}_tag_action").locator("label", has_text="merge into").click()
        _box(page, f"{P}_tag_list").fill("red dog")
        _box(page, f"{P}_tag_into").fill("Rex")
        page.click(f"#{P}_apply_tags")
        _wait(page, lambda: "caption file(s) changed" in _text(page, f"{P}_tag_message"), "the tag edit")
        assert "2 caption file(s) changed, 2 left as they were" in _text(page, f"{P}_tag_message")
        _wait(page, lambda: _table_rows(page, f"{P}_tag_table").get("Rex") == "2", "the table to show Rex")
        assert "red dog" not in _table_rows(page, f"{P}_tag_table")
        after = _captions(subset)
        changed = {name for name in before if before[name] != after[name]}
        assert changed == {name for name, text in before.items() if "red dog" in text}, (before, after)
        assert after["portrait.txt"].strip() == after["portrait-flipped.txt"].strip() == "sks, Rex, sitting"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "prepare_step.png"), full_page=True)
        prepared = time.time()

        # -- Train on it --------------------------------------------------------------------------
        _step_tab(page, "Train").click()
        page.wait_for_selector("#trainer_ext_start", state="visible")
        assert _box(page, "trainer_ext_data_train_dir").input_value() == str(dataset)
        # the dataset summary follows the filled-in folder: 8 images x 2 repeats
        _wait(page, lambda: "2_sks dog" in _text(page, "trainer_ext_dataset_summary")
              and "16 samples per epoch" in _text(page, "trainer_ext_dataset_summary"), "the dataset summary")
        assert _box(page, "trainer_ext_data_resolution").input_value() == "64"   # the size it prepared at
        _el(page, "trainer_ext_data_enable_buckets").locator("input[type=checkbox]").uncheck()
        _box(page, "trainer_ext_network_dim").fill("4")
        _box(page, "trainer_ext_training_max_train_steps").fill("6")
        _box(page, "trainer_ext_output_name").fill("prepared_lora")
        job = _start(page)
        s = _wait_for_status(page, "the run to end", job=job, states=("done", "stopped", "error"))
        assert s["state"] == "done" and s["step"] == 6, s
        result = _box(page, "trainer_ext_result")
        _wait(page, lambda: result.input_value().startswith("<lora:prepared_lora:"), "the prompt text")
        assert re.fullmatch(r"<lora:prepared_lora:[\d.]+>", result.input_value()), result.input_value()
        assert not errors, errors
        browser.close()

    lora = tmp / "out" / "Lora" / "prepared_lora.safetensors"
    assert lora.is_file()
    from safetensors import safe_open

    with safe_open(str(lora), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata() or {}
    assert keys and any("lora_down" in k for k in keys), keys[:5]
    assert metadata, "the LoRA file has no metadata"
    print(f"prepare + tag edit {prepared - started:.1f}s, training {time.time() - prepared:.1f}s")
