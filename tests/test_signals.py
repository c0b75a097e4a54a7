"""SIGTERM and Ctrl-C during a training: the CLI and the standalone UI server stop after the current
step, save what was learned and exit cleanly (what `kill`, systemd and container runtimes rely on)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import free_port, make_images, quick_config, TOKENIZER_DIR

from extensions_lib.model.tiny import tiny_ldm_state_dict

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 240.0      # a loaded machine is slow; every wait is on a condition with this bound

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class _Output:
    """A child's stdout and stderr (merged), read in a thread so a full pipe never blocks it."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.chunks = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def wait_for(self, predicate, what: str) -> None:
        deadline = time.time() + DEADLINE
        while not predicate():
            if self.proc.poll() is not None:
                pytest.fail(f"the process exited ({self.proc.returncode}) before {what}:\n{self.text[-4000:]}")
            if time.time() > deadline:
                pytest.fail(f"no {what} within {DEADLINE:.0f} s:\n{self.text[-4000:]}")
            time.sleep(0.2)

    def finish(self) -> int:
        try:
            code = self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"the process did not exit within {DEADLINE:.0f} s of the signal:\n{self.text[-4000:]}")
        self.thread.join(10)
        return code


def _start(args: list[str]) -> _Output:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "extensions_lib", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return _Output(proc)


def _assert_loads(path: Path) -> None:
    assert path.is_file(), f"{path} was not saved"
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) > 0


def _long_config(tmp_path: Path):
    make_images(tmp_path / "data" / "1_sks", n=4)
    return quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_epochs=5000)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_stops_saves_and_exits_on_a_signal(tmp_path, signum):
    cfg = _long_config(tmp_path)
    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "tiny.safetensors"))
    cfg.model.checkpoint = str(tmp_path / "tiny.safetensors")
    cfg.model.tokenizer = str(TOKENIZER_DIR)
    cfg.save_toml(tmp_path / "train.toml")

    out = _start(["train", str(tmp_path / "train.toml")])
    try:
        # tqdm's bar, e.g. " 2/20000 [": at least one optimizer step is done
        out.wait_for(lambda: re.search(r"\b[1-9]\d*/\d+ \[", out.text), "a training step")
        out.proc.send_signal(signum)
        code = out.finish()
    finally:
        if out.proc.poll() is None:
            out.proc.kill()
    assert code == 0, out.text[-4000:]        # a stop on request is a success, as with Ctrl-C
    assert "stopping after this step" in out.text and "stopped early, saved" in out.text, out.text[-4000:]
    assert "Traceback" not in out.text
    _assert_loads(tmp_path / "out" / "test_lora.safetensors")


def _request(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_server_stops_the_training_saves_and_exits_on_a_signal(tmp_path, signum):
    port = free_port()
    base = f"http://127.0.0.1:{port}/trainer/v1"
    out = _start(["ui", "--checkpoint", "tiny", "--port", str(port), "--output-root", str(tmp_path / "root")])
    try:
        out.wait_for(lambda: "REST API under" in out.text, "the server")
        cfg = _long_config(tmp_path)
        cfg.model.checkpoint = "tiny"
        job_id = _request(base + "/train", cfg.to_dict())["job_id"]

        def trained() -> bool:
            s = _request(base + "/status?losses=false")
            return s["job_id"] == job_id and s["step"] >= 1
        out.wait_for(trained, "a training step")
        out.proc.send_signal(signum)
        code = out.finish()
    finally:
        if out.proc.poll() is None:
            out.proc.kill()
    assert code == 0, out.text[-4000:]
    assert "terminate called" not in out.text and "Traceback" not in out.text, out.text[-4000:]
    assert "waiting up to" in out.text and "training stopped" in out.text, out.text[-4000:]
    _assert_loads(tmp_path / "out" / "test_lora.safetensors")


def test_a_stop_while_latents_are_cached_trains_nothing_and_writes_nothing(tmp_path):
    """Ctrl-C during latent caching: no training step, no file under the final name, no state; the
    latents already cached on disk stay for the next run."""
    from extensions_lib.hosts.standalone import StandaloneHost
    from extensions_lib.train.events import Callbacks, Commands
    from extensions_lib.train.session import run_training

    from helpers import tiny_bundle

    make_images(tmp_path / "data" / "1_sks", n=6)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=4,
                       data__cache_latents=True, data__cache_latents_to_disk=True, output__save_state=True)
    commands = Commands()

    class StopAtSecondBatch(Callbacks):
        steps = []

        def on_status(self, text):
            if text.startswith("Caching latents… 2/"):
                commands.request_stop()       # as the CLI's signal handler does

        def on_step(self, info):
            self.steps.append(info.step)

    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=StopAtSecondBatch(), commands=commands)
    assert result.stopped and result.output_path is None and result.steps == 0
    assert StopAtSecondBatch.steps == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    cached = list((tmp_path / "data" / ".latent_cache").rglob("*"))
    assert any(p.is_file() for p in cached), "the latents encoded before the stop are kept"
