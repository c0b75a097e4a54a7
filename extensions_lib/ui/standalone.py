"""`python -m extensions_lib ui`: the Trainer tab on its own web server, with the REST API.

The tab is rendered into an outer Blocks the way the WebUI renders extension tabs, and the REST
routes are added to the launched app the way the WebUI's on_app_started does, so this server is
also the closest stand-in for the WebUI when testing the tab in a browser.

--auth / --auth-file logins guard both the page (gradio's login) and the REST routes (HTTP Basic). An
address other computers can reach (--host 0.0.0.0) is refused without a login unless --insecure says so.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..config import TrainConfig
from ..hosts.base import Host, HostError
from ..hosts.standalone import StandaloneHost

TINY = "tiny"
STOP_WAIT_S = 300.0    # on Ctrl-C / SIGTERM: how long to wait for a running training to stop and save
ASSETS = Path(__file__).resolve().parents[2]     # the extension root: style.css, javascript/


class CheckpointHost(Host):
    """A StandaloneHost per checkpoint named in the form: changing model.checkpoint in the UI loads
    the new model for the next run (one model held at a time). "tiny" is a tiny random model."""

    name = "standalone"
    model_from_config = True

    def __init__(self, output_root: Path | str = "output", tokenizer: str = "", device: Optional[str] = None):
        self.output_root = Path(output_root)
        self.tokenizer = tokenizer
        self._device = device
        self._key = None
        self._host: Optional[StandaloneHost] = None

    def _inner(self, cfg: TrainConfig) -> StandaloneHost:
        m = cfg.model
        key = (m.checkpoint, m.vae, m.tokenizer or self.tokenizer, m.v_prediction)
        if self._host is None or key != self._key:
            self._host = None     # let the previous model go before loading the next one
            bundle = None
            if m.checkpoint == TINY:
                from ..model.tiny import build_tiny_bundle, default_tokenizer_dir

                bundle = build_tiny_bundle(Path(m.tokenizer or self.tokenizer or default_tokenizer_dir()),
                                           v_prediction=m.v_prediction)
            self._host = StandaloneHost(bundle, output_root=self.output_root, device=self._device)
            self._key = key
        return self._host

    def check_ready(self, cfg: TrainConfig) -> None:
        ckpt = cfg.model.checkpoint
        if not ckpt:
            raise HostError("model.checkpoint is empty: give a .safetensors/.ckpt checkpoint or a diffusers "
                            "folder (or 'tiny' for a tiny random test model)")
        if ckpt != TINY and not Path(ckpt).exists():
            raise HostError(f"model.checkpoint: {ckpt} does not exist; check the path")

    @contextmanager
    def borrow_bundle(self, cfg: TrainConfig):
        if cfg.model.checkpoint != TINY and not cfg.model.tokenizer and self.tokenizer:
            cfg.model.tokenizer = self.tokenizer
        with self._inner(cfg).borrow_bundle(cfg) as bundle:
            yield bundle

    def output_dir(self, kind: str, cfg: TrainConfig) -> Path:
        return StandaloneHost(output_root=self.output_root).output_dir(kind, cfg)

    def device(self):
        return StandaloneHost(output_root=self.output_root, device=self._device).device()

    def describe(self) -> dict:
        return {"host": "standalone", "output_root": str(self.output_root)}

    # Prepare: the standalone host's answers (crops work; captions and class images need the WebUI)
    def captioners(self) -> dict[str, str]:
        return StandaloneHost().captioners()

    def captioner(self, name: str):
        return StandaloneHost().captioner(name)

    def image_generation_refusal(self) -> str:
        return StandaloneHost().image_generation_refusal()

    def generate_images(self, requests, progress):
        return StandaloneHost().generate_images(requests, progress)


def _asset(rel: str) -> str:
    p = ASSETS / rel
    return p.read_text(encoding="utf-8") if p.is_file() else ""


def build_app(host: Host, job, defaults: Optional[TrainConfig] = None, poll_seconds: float = 1.0,
              prepare_job=None):
    """The outer Blocks: a header and the tab, styled with the extension's style.css and trainer.js
    (which the WebUI would load by itself)."""
    from . import compat
    from .compat import gr
    from .tab import ELEM_ID, build_tab, tab_label

    tab = build_tab(host, job, defaults=defaults, poll_seconds=poll_seconds, prepare_job=prepare_job)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])   # no web-font download
    with gr.Blocks(analytics_enabled=False, title="Trainer", css=_asset("style.css"), theme=theme) as demo:
        gr.HTML("<div class='trainer-ext-header'><b>Trainer</b> · LoRA / LoCon / LoHa / LoKr, embeddings and "
                "hypernetworks for Stable Diffusion</div>")
        with compat.make(gr.Tabs, selected=ELEM_ID):
            with compat.make(gr.TabItem, label=tab_label(host), id=ELEM_ID, elem_id=f"tab_{ELEM_ID}"):
                tab.render()
        script = _asset("javascript/trainer.js")
        if script:
            demo.load(None, inputs=None, outputs=None, **compat.js("() => {\n" + script + "\n}"))
    demo.trainer_tab = tab
    return demo


def server_logins(args) -> dict:
    """user -> password from --auth and --auth-file. Refuses (SystemExit with the reason and the fix)
    unusable entries, and an address other computers can reach with no login unless --insecure."""
    from .access import AccessError, is_loopback, parse_credentials, read_credentials_file

    try:
        users = parse_credentials("\n".join(getattr(args, "auth", None) or []), "--auth")
        if getattr(args, "auth_file", ""):
            users.update(read_credentials_file(args.auth_file, "--auth-file"))
    except AccessError as e:
        raise SystemExit(f"error: {e}") from None
    if not users and not is_loopback(args.host) and not getattr(args, "insecure", False):
        raise SystemExit(
            f"error: --host {args.host} lets other computers reach the Trainer, which can start trainings and "
            "read folders on this machine, and no login is set. Give --auth USER:PASSWORD or --auth-file FILE, "
            "or --insecure to serve without a login anyway (only on a network you trust), or listen on "
            "--host 127.0.0.1.")
    return users


def serve(args) -> int:
    from . import compat
    from .access import basic_auth_dependencies
    from .api import register_routes
    from .job import TrainingJob
    from .prepare_job import PrepareJob

    users = server_logins(args)     # before anything is loaded: a refusal is immediate
    host = CheckpointHost(output_root=args.output_root, tokenizer=getattr(args, "tokenizer", "") or "")
    defaults = TrainConfig()
    defaults.model.checkpoint = args.checkpoint
    defaults.model.tokenizer = getattr(args, "tokenizer", "") or ""
    job, prepare_job = TrainingJob(), PrepareJob()      # the tab and REST share them
    demo = build_app(host, job, defaults, prepare_job=prepare_job)
    compat.queue(demo)
    try:
        app, local_url, _ = demo.launch(**compat.launch_kwargs(
            demo, server_name=args.host, server_port=args.port, prevent_thread_lock=True, inbrowser=False,
            show_api=False, quiet=True, share=False, auth=list(users.items()) or None))
    except ValueError as e:
        hint = compat.launch_failure_hint()
        if not hint:
            raise
        raise SystemExit(f"error: {hint}") from e
    register_routes(app, job, lambda: host, dependencies=basic_auth_dependencies(users),
                    prepare_job=prepare_job)
    login = f"; login required ({len(users)} user(s))" if users else ""
    print(f"Trainer UI on {local_url}  (REST API under {local_url.rstrip('/')}/trainer/v1{login})", flush=True)
    signalled = _wait_for_signal()
    return shut_down(demo, job, signalled)


def _wait_for_signal() -> threading.Event:
    """Block until Ctrl-C or SIGTERM. gradio's own block_thread() swallows Ctrl-C and returns while a
    training thread is still inside torch, which aborts the process ("terminate called without an
    active exception") before anything is saved; here the main thread waits for the training instead.
    The returned event is set again by a second signal."""
    signalled = threading.Event()
    again = threading.Event()

    def handler(signum, frame):
        (again if signalled.is_set() else signalled).set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not signalled.wait(0.5):
        pass
    return again


def shut_down(demo, job, again: threading.Event, wait_s: float = STOP_WAIT_S) -> int:
    """Stop a running training after its current step, wait (at most `wait_s`, or until a second
    signal) for it to save, then close the server. 0 when nothing was lost, 1 when the wait ended
    first (the process then ends at once: a normal exit under a running torch thread aborts)."""
    if job.running:
        print(f"stopping the training after this step and saving; waiting up to {wait_s:.0f} s "
              "(Ctrl-C again to quit without waiting)…", file=sys.stderr, flush=True)
        deadline = time.monotonic() + wait_s
        asked = False
        while job.running and not again.is_set() and time.monotonic() < deadline:
            # asked again until it takes: a run still in its start checks has nothing to stop yet
            asked = asked or job.stop()
            job.wait(0.5)
            time.sleep(0.05)
        if job.running:
            print("the training did not finish saving; quitting without it", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        status = job.status(losses=False)
        print(f"training {status['state']}: {status['output_path'] or 'nothing saved'}", flush=True)
    demo.close()
    print("Trainer UI closed", flush=True)
    return 0
