"""The Trainer tab in a real browser: `python -m extensions_lib ui --checkpoint tiny` in a subprocess,
driven with Playwright + the system Chromium. Screenshots go to test-artifacts/ (README pictures).

Covers what only a browser shows: the page renders on this gradio version, the dataset summary
reacts to typing, Load config fills the form, Start trains (status and loss move while polling),
previews and the `<lora:…>` text appear, the copy button fills the clipboard, a refused start
shows its reason, Save now writes a step file during a run, and Stop is honoured.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port, make_images

playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
# Every wait is on a condition, never a fixed sleep: a loaded machine makes the server, the training
# thread and the browser slow, so each wait has a deadline far above a quiet run's time.
DEADLINE = 240

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed "
                                "(tools/setup_browser.sh installs it)")


def _get(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _saved(base: str) -> list[Path]:
    """The files the running job has written (REST status); none while the server is too busy to answer."""
    try:
        return [Path(f) for f in _get(base + "/trainer/v1/status?losses=false")["saved"]]
    except OSError:
        return []


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "extensions_lib", "ui", "--checkpoint", "tiny",
                             "--port", str(port), "--output-root", str(tmp_path / "out")],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + DEADLINE
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the UI server exited ({proc.returncode}):\n{(tmp_path / 'server.log').read_text()}")
            try:
                _get(base + "/trainer/v1/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"the UI server did not answer within {DEADLINE} s:\n"
                                + (tmp_path / "server.log").read_text())
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


# The status element says which job it shows and how far it got (data-job, data-state, data-step),
# so a wait for the new run can never be satisfied by the previous run's status.
_STATUS_JS = """() => {
    const el = document.querySelector('.trainer-ext-status');
    return el ? {state: el.dataset.state, job: el.dataset.job, step: Number(el.dataset.step),
                 text: el.innerText} : null;
}"""


def _status(page) -> dict:
    return page.evaluate(_STATUS_JS) or {"state": "", "job": "", "step": -1, "text": ""}


def _message(page) -> str:
    return page.evaluate("() => (document.querySelector('#trainer_ext_message') || {}).innerText || ''")


def _fail(page, what: str, timeout: float):
    page.screenshot(path=str(ARTIFACTS / "trainer-failure.png"), full_page=True)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\nstatus: {_status(page)}\n"
                         f"message: {_message(page)}\n(screenshot: {ARTIFACTS / 'trainer-failure.png'})")


def _wait_for(page, predicate, what: str, timeout: float = DEADLINE):
    """Poll `predicate()` (Python, cheap: reads the page through one evaluate) until true."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    _fail(page, what, timeout)


def _wait_for_status(page, what: str, *, job: str = "", states=(), min_step: int = 0, timeout: float = DEADLINE):
    """Until the status shows `job` (if given) in one of `states` (if given) at `min_step` or later."""
    def ok():
        s = _status(page)
        return ((not job or s["job"] == job) and (not states or s["state"] in states) and s["step"] >= min_step)

    _wait_for(page, ok, what, timeout)
    return _status(page)


def _start(page) -> str:
    """Press Start and return the new job's id (from the reply, so later waits follow this run)."""
    before = _message(page)
    page.click("#trainer_ext_start")
    _wait_for(page, lambda: _message(page) != before and re.search(r"job (\w+)\.", _message(page)),
              "the start to be confirmed")
    return re.search(r"job (\w+)\.", _message(page)).group(1)


def test_train_in_the_browser(server):
    base, tmp = server
    make_images(tmp / "dataset" / "3_sks", n=4, size=64)
    ARTIFACTS.mkdir(exist_ok=True)
    # the tiny settings come from a config file loaded through the form (the CLI's TOML); the run is
    # short (24 steps, previews only at the end) so a slow machine still finishes it in time
    from extensions_lib.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.checkpoint = "tiny"
    cfg.data.resolution, cfg.data.enable_buckets = 64, False
    cfg.network.dim, cfg.network.alpha = 4, 4.0
    cfg.training.max_train_epochs, cfg.training.learning_rate = 2, 1e-3
    cfg.training.lr_scheduler = "constant"
    cfg.sample.prompts = ["a photo of sks", "sks on a table"]
    cfg.sample.width = cfg.sample.height = 64
    cfg.sample.steps, cfg.sample.every_n_epochs = 4, 0
    cfg.output.name = "browser_lora"
    cfg.output.preferred_weight = 0.7
    cfg.save_toml(tmp / "tiny.toml")

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.set_default_timeout(DEADLINE * 1000)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page = context.new_page()
        errors, console = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.goto(base + "/", wait_until="domcontentloaded")
        page.wait_for_selector("#trainer_ext_start")
        assert _wait_for_status(page, "the idle status", states=("idle",))["state"] == "idle"

        _box(page, "trainer_ext_config_path").fill(str(tmp / "tiny.toml"))
        page.click("#trainer_ext_load")
        page.wait_for_selector("#trainer_ext_message .trainer-ext-ok")
        _wait_for(page, lambda: _box(page, "trainer_ext_output_name").input_value() == "browser_lora",
                  "Load config to fill the output name")
        assert _box(page, "trainer_ext_data_resolution").input_value() == "64"

        # typing the dataset folder refreshes the summary table
        _box(page, "trainer_ext_data_train_dir").fill(str(tmp / "dataset"))
        page.wait_for_selector("#trainer_ext_dataset_summary table")
        summary = _el(page, "trainer_ext_dataset_summary").inner_text()
        assert "3_sks" in summary and "12 samples per epoch" in summary, summary   # 4 images x 3 repeats
        assert re.search(r"24\s+steps in all", summary), summary                    # 12 steps x 2 epochs
        page.screenshot(path=str(ARTIFACTS / "trainer-tab.png"))

        job = _start(page)
        first = _wait_for_status(page, "the first training step", job=job, min_step=1)["step"]
        s = _wait_for_status(page, "the run to end", job=job, states=("done", "stopped", "error"), min_step=first)
        assert s["state"] == "done" and s["step"] == 24, s
        assert re.search(r"loss\s+\d", s["text"]), s
        # the loss plot, the previews and the prompt text are shown
        _wait_for(page, lambda: page.locator("#trainer_ext_loss_plot img").count() > 0, "the loss plot")
        result = _box(page, "trainer_ext_result")
        _wait_for(page, lambda: result.input_value() == "<lora:browser_lora:0.7>", "the final prompt text")
        assert (tmp / "out" / "Lora" / "browser_lora.safetensors").is_file()
        _wait_for(page, lambda: page.locator("#trainer_ext_gallery img").count() >= 2, "the preview images")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ARTIFACTS / "trainer-done.png"))

        page.click("#trainer_ext_copy")
        _wait_for(page, lambda: page.evaluate("navigator.clipboard.readText()") == "<lora:browser_lora:0.7>",
                  "the copy button to fill the clipboard")

        # the same name again is refused with the reason, before any work
        page.click("#trainer_ext_start")
        page.wait_for_selector("#trainer_ext_message .trainer-ext-error")
        assert "already exists" in _message(page)

        # with overwrite on, a long run starts; Save now writes a step file while it goes on, and
        # Stop ends it early (it still saves)
        _el(page, "trainer_ext_output_overwrite").locator("input[type=checkbox]").check()
        _box(page, "trainer_ext_training_max_train_epochs").fill("1000")
        job = _start(page)
        _wait_for_status(page, "the second run to train", job=job, states=("training",), min_step=2)
        page.click("#trainer_ext_save_now")      # enabled by then: the status showed the run training
        step_file = re.compile(r"browser_lora-step\d{8}\.safetensors")
        _wait_for(page, lambda: any(step_file.fullmatch(f.name) for f in _saved(base)), "the Save now file")
        assert [f for f in _saved(base) if step_file.fullmatch(f.name)][0].is_file()
        page.click("#trainer_ext_stop")
        s = _wait_for_status(page, "the stop to be honoured", job=job, states=("stopped", "done", "error"))
        assert s["state"] == "stopped", s
        status = _get(base + "/trainer/v1/status?losses=false")
        assert status["state"] == "stopped" and status["step"] < status["total_steps"]
        assert not errors, (errors, console)
        browser.close()
