"""The Trainer tab: one gradio Blocks built against the Host interface and a TrainingJob.

The WebUI glue and the standalone server both call `build_tab(host, job)`; nothing here knows
which one it runs in. Two steps: Prepare dataset (prepare_tab.py) and Train, whose widgets are made
in layout.py, what they do is in handlers.py, the status HTML in status.py.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..config import TrainConfig
from ..hosts.base import Host
from . import compat
from .compat import gr
from .handlers import TabHandlers, connect
from .job import TrainingJob
from .layout import ELEM_ID, build_layout, layout_keys, shows_model_section
from .prepare_job import PrepareJob
from .prepare_tab import build_prepare, connect_prepare
from .status import page_status, previous_run_html, status_html

__all__ = ["ELEM_ID", "build_tab", "tab_label", "layout_keys", "status_html", "previous_run_html"]


def tab_label(host: Host) -> str:
    """The product's name, in the WebUI (beside its own "Train" tab) and standalone alike."""
    return "Trainer"


def build_tab(host: Host, job: TrainingJob, *, defaults: Optional[TrainConfig] = None,
              poll_seconds: float = 1.0, host_for_run: Optional[Callable[[], Host]] = None,
              show_model_section: Optional[bool] = None, prepare_job: Optional[PrepareJob] = None):
    """Build the tab's Blocks (not launched). `host_for_run`, if given, is called at each Start
    to get the host for that run; by default every run uses `host`. `show_model_section` places
    the checkpoint/VAE/tokenizer fields; by default they are shown where the host loads the model
    the form names (layout.shows_model_section), not where the WebUI lends its own. `prepare_job`:
    the Prepare step's, to share it with the REST API (by default the tab has its own)."""
    defaults = defaults or TrainConfig()
    if show_model_section is None:
        show_model_section = shows_model_section(host)
    # a run that ended before this tab was built is shown as the previous run, not as current
    first_status = page_status(job.status(), None, time.time())
    with gr.Blocks(analytics_enabled=False) as tab:
        # the two steps in the order of the work; the tab opens on Train (most visits)
        with compat.make(gr.Tabs, selected="train", elem_id=f"{ELEM_ID}_steps"):
            with compat.make(gr.Tab, label="Prepare dataset", id="prepare", elem_id=f"{ELEM_ID}_prepare_step"):
                prepare_ui, prepare_handlers = build_prepare(host, prepare_job)
            with compat.make(gr.Tab, label="Train", id="train", elem_id=f"{ELEM_ID}_train_step"):
                ui = build_layout(defaults, show_model_section=show_model_section, status_html=first_status)
        handlers = TabHandlers(host, job, ui.keys, defaults, sections=list(ui.sections), host_for_run=host_for_run)
        connect(tab, ui, handlers, poll_seconds)
        connect_prepare(prepare_ui, prepare_handlers, train_dir=ui.fields["data.train_dir"],
                        reg_dir=ui.fields["data.reg_dir"], resolution=ui.fields["data.resolution"])

    # for tests: the widgets by config key, the key order of the handlers' values, the handlers
    tab.trainer_layout = ui
    tab.trainer_widgets = ui.fields
    tab.trainer_keys = ui.keys
    tab.trainer_summary_keys = handlers.summary_keys
    tab.trainer_handlers = handlers.as_dict()
    tab.trainer_prepare = prepare_handlers
    return tab

