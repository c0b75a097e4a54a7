"""What scripts/train_tab.py registers with the WebUI (AUTOMATIC1111 1.10; on Forge, a tab that says
why it cannot train there).

Kept here, not in scripts/, so it is importable and testable; the script only registers these
callbacks. The WebUI modules and the host adapter are imported inside the callbacks: importing
this file needs no running WebUI. One TrainingJob lives as long as the process, so a training
keeps running (and the new page shows it) across "Reload UI".
"""
import sys
from typing import Optional

from ..config import TrainConfig
from .job import TrainingJob
from .prepare_job import PrepareJob

SECTION = ("trainer_ext", "Trainer")
OPT_PRESET = "trainer_ext_default_preset"
OPT_POLL = "trainer_ext_poll_seconds"

_job: Optional[TrainingJob] = None
_prepare_job: Optional[PrepareJob] = None
_host = None


def job() -> TrainingJob:
    global _job
    if _job is None:
        _job = TrainingJob()
    return _job


def prepare_job() -> PrepareJob:
    """The Prepare step's job, one per process: the tab and REST never prepare at the same time."""
    global _prepare_job
    if _prepare_job is None:
        _prepare_job = PrepareJob()
    return _prepare_job


def host():
    """The WebUI host adapter (one per process)."""
    global _host
    if _host is None:
        from ..hosts.a1111 import A1111Host

        _host = A1111Host()
    return _host


def _opt(key: str, default):
    try:
        from modules import shared

        value = getattr(shared.opts, key, default)
    except (ImportError, AttributeError):
        return default
    return default if value is None else value


def defaults() -> TrainConfig:
    from .presets import PRESETS, apply_preset

    cfg = TrainConfig()
    name = _opt(OPT_PRESET, "")
    if name in PRESETS:
        cfg = apply_preset(cfg, name)
    return cfg


def on_ui_tabs():
    from ..hosts.a1111_model import running_on_forge
    from .tab import ELEM_ID, build_tab, tab_label

    h = host()
    if running_on_forge():
        return [(forge_notice(), "Trainer", ELEM_ID)]
    try:
        poll = max(0.25, float(_opt(OPT_POLL, 1.0)))
    except (TypeError, ValueError):
        poll = 1.0
    tab = build_tab(h, job(), defaults=defaults(), poll_seconds=poll, prepare_job=prepare_job())
    return [(tab, tab_label(h), ELEM_ID)]


def forge_notice():
    """The tab on Forge: only the reason it cannot train there, and what to do instead."""
    import gradio as gr

    from ..hosts.a1111_model import FORGE

    with gr.Blocks(analytics_enabled=False) as notice:
        gr.Markdown(FORGE, elem_id="trainer_ext_forge_notice")
    return notice


def on_ui_settings():
    import gradio as gr
    from modules import shared

    from .presets import preset_names

    preset = shared.OptionInfo("", "Preset the Trainer tab starts with", gr.Dropdown,
                               lambda: {"choices": [""] + preset_names()}, section=SECTION)
    poll = shared.OptionInfo(1.0, "Refresh the training progress every N seconds", gr.Slider,
                             {"minimum": 0.5, "maximum": 10, "step": 0.5}, section=SECTION)
    for item in (preset, poll):
        if hasattr(item, "needs_reload_ui"):
            item.needs_reload_ui()
    shared.opts.add_option(OPT_PRESET, preset)
    shared.opts.add_option(OPT_POLL, poll)


def api_enabled() -> bool:
    """The REST routes are added only where the WebUI serves an API: with --api (or --nowebui, which is
    the API alone) or with our --trainer-api, and never with --trainer-disable-api (preload.py)."""
    try:
        from modules import shared
    except ImportError:
        return False
    cmd = shared.cmd_opts
    if getattr(cmd, "trainer_disable_api", False):
        return False
    return any(getattr(cmd, name, False) for name in ("api", "nowebui", "trainer_api"))


def _credentials(cmd_opts) -> dict:
    """user -> password from --api-auth, else from --gradio-auth and --gradio-auth-path together (as
    the WebUI's login page reads them): our routes are never less guarded than the WebUI's own API or
    its pages. AccessError for an entry without ':' or an unreadable file."""
    from .access import parse_credentials, read_credentials_file

    api_auth = getattr(cmd_opts, "api_auth", None)
    if api_auth:
        return parse_credentials(api_auth, "--api-auth")
    users = parse_credentials(getattr(cmd_opts, "gradio_auth", None) or "", "--gradio-auth")
    path = getattr(cmd_opts, "gradio_auth_path", None)
    if path:
        users.update(read_credentials_file(path, "--gradio-auth-path"))
    return users


def auth_dependencies() -> list:
    from modules import shared

    from .access import basic_auth_dependencies

    return basic_auth_dependencies(_credentials(shared.cmd_opts))


def on_app_started(demo, app):
    """REST routes under /trainer/v1 (also with --nowebui, where demo is None). Credentials that
    cannot be read leave the routes out rather than open."""
    if not api_enabled():
        return
    from .access import AccessError
    from .api import register_routes

    try:
        dependencies = auth_dependencies()
    except AccessError as e:
        print(f"Trainer: REST API not added: {e}", file=sys.stderr, flush=True)
        return
    register_routes(app, job(), host, dependencies=dependencies, prepare_job=prepare_job())
