"""The Train tab in a real browser: `python -m extensions_lib ui --checkpoint tiny` in a subprocess,
driven with Playwright + the system Chromium. Screenshots go to test-artifacts/ (README pictures).

Covers what only a browser shows: the page renders on this gradio version, the dataset summary
reacts to typing, Load config fills the form, Start trains (status and loss move while polling),
previews and the `<lora:…>` text appear, the copy button fills the clipboard, a refused start
shows its reason, and Stop is honoured.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import make_images

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                                "(tools/setup_browser.sh installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "extensions_lib", "ui", "--checkpoint", "tiny",
                             "--port", str(port), "--output-root", str(tmp_path / "out")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the UI server exited ({proc.returncode}):\n{(tmp_path / 'server.log').read_text()}")
            try:
                _get(base + "/trainer/v1/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the UI server did not answer within 90 s:\n" + (tmp_path / "server.log").read_text())
                time.sleep(0.3)
        yield base, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _box(page, elem_id: str):
    """The input element of a gradio Textbox/Number by its elem_id (gradio 3 and 4 markup)."""
    return page.locator(f"#{elem_id}").first.locator("textarea, input").first


def _el(page, elem_id: str):
    # gradio 3 puts an HTML component's elem_id on two nested elements
    return page.locator(f"#{elem_id}").first


def _status(page) -> str:
    return _el(page, "trainer_ext_status").inner_text()


def _step(page) -> int:
    m = re.search(r"step\s+(\d+)\s*/\s*(\d+)", _status(page))
    return int(m.group(1)) if m else -1


def _wait_for(predicate, timeout: float, what: str, page=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    detail = ""
    if page is not None:
        page.screenshot(path=str(ARTIFACTS / "trainer-failure.png"), full_page=True)
        detail = (f"\nstatus: {_status(page)}\nmessage: {_el(page, 'trainer_ext_message').inner_text()}"
                  f"\n(screenshot: {ARTIFACTS / 'trainer-failure.png'})")
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def test_train_in_the_browser(server):
    base, tmp = server
    make_images(tmp / "dataset" / "3_sks", n=4, size=64)
    ARTIFACTS.mkdir(exist_ok=True)
    # the tiny settings come from a config file loaded through the form (the CLI's TOML)
    from extensions_lib.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.checkpoint = "tiny"
    cfg.data.resolution, cfg.data.enable_buckets = 64, False
    cfg.network.dim, cfg.network.alpha = 4, 4.0
    cfg.training.max_train_epochs, cfg.training.learning_rate = 6, 1e-3
    cfg.training.lr_scheduler = "constant"
    cfg.sample.prompts = ["a photo of sks", "sks on a table"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps, cfg.sample.every_n_epochs = 4, 3
    cfg.output.name = "browser_lora"
    cfg.output.preferred_weight = 0.7
    cfg.save_toml(tmp / "tiny.toml")

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = context.new_page()
        errors, console = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.goto(base + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#trainer_ext_start", timeout=30_000)
        assert "idle" in _status(page).lower() or "ready" in _status(page).lower()

        _box(page, "trainer_ext_config_path").fill(str(tmp / "tiny.toml"))
        page.click("#trainer_ext_load")
        page.wait_for_selector("#trainer_ext_message .trainer-ext-ok", timeout=15_000)
        _wait_for(lambda: _box(page, "trainer_ext_output_name").input_value() == "browser_lora", 10,
                  "Load config to fill the output name")
        assert _box(page, "trainer_ext_data_resolution").input_value() == "64"

        # typing the dataset folder refreshes the summary table
        _box(page, "trainer_ext_data_train_dir").fill(str(tmp / "dataset"))
        page.wait_for_selector("#trainer_ext_dataset_summary table", timeout=15_000)
        summary = _el(page, "trainer_ext_dataset_summary").inner_text()
        assert "3_sks" in summary and "12 samples per epoch" in summary, summary   # 4 images x 3 repeats
        assert re.search(r"72\s+steps in all", summary), summary                    # 12 steps x 6 epochs
        page.screenshot(path=str(ARTIFACTS / "trainer-tab.png"))

        page.click("#trainer_ext_start")
        _wait_for(lambda: _step(page) > 0, 60, "the first training step", page)
        first = _step(page)
        _wait_for(lambda: _step(page) > first or "done" in _status(page).lower(), 60,
                  "the step counter to move", page)
        assert re.search(r"loss\s+\d", _status(page)), _status(page)
        # the loss plot has been drawn while training
        _wait_for(lambda: page.locator("#trainer_ext_loss_plot img").count() > 0, 30, "the loss plot", page)

        result = _box(page, "trainer_ext_result")
        _wait_for(lambda: result.input_value().startswith("<lora:"), 120, "the final prompt text", page)
        assert result.input_value() == "<lora:browser_lora:0.7>"
        assert "done" in _status(page).lower()
        assert (tmp / "out" / "Lora" / "browser_lora.safetensors").is_file()
        _wait_for(lambda: page.locator("#trainer_ext_gallery img").count() >= 2, 30, "the preview images", page)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "trainer-done.png"))

        page.click("#trainer_ext_copy")
        _wait_for(lambda: page.evaluate("navigator.clipboard.readText()") == "<lora:browser_lora:0.7>", 10,
                  "the copy button to fill the clipboard")

        # the same name again is refused with the reason, before any work
        page.click("#trainer_ext_start")
        page.wait_for_selector("#trainer_ext_message .trainer-ext-error", timeout=15_000)
        assert "already exists" in _el(page, "trainer_ext_message").inner_text()

        # with overwrite on, a long run starts, and Stop ends it early (it still saves)
        _el(page, "trainer_ext_output_overwrite").locator("input[type=checkbox]").check()
        _box(page, "trainer_ext_training_max_train_epochs").fill("1000")
        page.click("#trainer_ext_start")
        _wait_for(lambda: _step(page) > 2, 60, "the second run to train", page)
        page.click("#trainer_ext_stop")
        _wait_for(lambda: "stopped" in _status(page).lower(), 60, "the stop to be honoured", page)
        status = _get(base + "/trainer/v1/status?losses=false")
        assert status["state"] == "stopped" and status["step"] < status["total_steps"]
        assert not errors, (errors, console)
        browser.close()
