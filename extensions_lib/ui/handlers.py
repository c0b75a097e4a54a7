"""What the Trainer tab's widgets do.

TabHandlers holds one plain method per event (method change, dataset summary, preset, save/load/
upload config, start, stop, sample now, save now, poll), each a function of form values that
returns what the outputs show, so tests call them without a browser. `connect` attaches them to
the components of a TabLayout, including the gradio 3/4 difference in how the poll keeps its
per-page memory.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

from ..config import ConfigError, TrainConfig
from ..hosts.base import Host
from . import compat
from .compat import gr
from .fields import config_to_values, values_to_config
from .job import RUNNING, JobBusyError, TrainingJob, _is_user_error
from .layout import METHOD_ONLY, TabLayout, section_visible
from .plot import loss_plot
from .presets import preset_about, preset_values
from .status import describe, is_previous_run, notice_html, ok_html, previous_run_html, problems_html, status_html
from .summary import dataset_summary, summary_html

# our events are UI plumbing, not a gradio API (the REST API is /trainer/v1); leaving them out of
# gradio's API info also avoids gradio 4's schema walker, which fails on File/Image schemas
# under newer pydantic releases
NO_API = {"api_name": False}
# data fields that change neither the file list nor the step count: no rescan when they change
_NOT_IN_SUMMARY = ("data.random_crop", "data.shuffle_caption", "data.keep_tokens", "data.caption_dropout_rate",
                   "data.caption_tag_dropout_rate", "data.cache_latents", "data.cache_latents_to_disk",
                   "data.max_token_length", "data.prior_loss_weight")
_STEP_COUNT_KEYS = ("training.max_train_epochs", "training.max_train_steps", "training.train_batch_size",
                    "training.gradient_accumulation_steps")
# what the poll remembers per page, to send only what changed
_VERSIONS = ("job_id", "version", "loss_version", "preview_version")
NOT_TRAINING = "Nothing is training: press Start first."


def summary_keys(keys: list[str]) -> list[str]:
    """The fields the dataset summary depends on (the folders, buckets and step count)."""
    return [k for k in keys if k.startswith("data.") and k not in _NOT_IN_SUMMARY] + list(_STEP_COUNT_KEYS)


class TabHandlers:
    def __init__(self, host: Host, job: TrainingJob, keys: list[str], defaults: TrainConfig, *,
                 sections: list[str], host_for_run: Optional[Callable[[], Host]] = None):
        self.host, self.job, self.keys, self.defaults = host, job, keys, defaults
        self.sections = sections
        self.host_for_run = host_for_run
        self.summary_keys = summary_keys(keys)

    def to_config(self, values) -> TrainConfig:
        """Form values -> config; fields without a widget keep the tab's defaults."""
        return values_to_config(self.keys, list(values), base=self.defaults)

    # -- the form --------------------------------------------------------------------------------
    def method(self, method: str) -> list:
        """Visibility of each method-dependent section, then of each METHOD_ONLY field."""
        return [compat.update(visible=section_visible(s, method)) for s in self.sections] + [
            compat.update(visible=method in methods) for methods in METHOD_ONLY.values()]

    def dataset(self, *values) -> str:
        try:
            cfg = values_to_config(self.summary_keys, list(values), base=self.defaults)
        except ConfigError as e:
            return problems_html(e)
        return summary_html(dataset_summary(cfg))

    def preset(self, name: str) -> list:
        """A value for each field the preset sets (others unchanged), then the preset's description."""
        if not name:
            return [compat.no_change() for _ in self.keys] + [""]
        chosen = preset_values(name)
        values = config_to_values(_with(self.defaults, chosen), self.keys)
        out = [compat.update(value=v) if k in chosen else compat.no_change() for k, v in zip(self.keys, values)]
        return out + [f"**{name}:** {preset_about(name)}"]

    def save_config(self, path, *values) -> str:
        try:
            cfg = self.to_config(values)
            if not str(path or "").strip():
                raise ValueError("enter a file path for the config, e.g. /path/to/my_lora.toml")
            target = Path(str(path).strip()).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            cfg.save_toml(target)
        except (ConfigError, ValueError, OSError) as e:
            return problems_html(e)
        return ok_html(f"Saved the config to {target}")

    def load_config(self, path) -> list:
        """A value for every field, then the message; on a problem nothing changes."""
        try:
            if not str(path or "").strip():
                raise ValueError("enter the path of a .toml config to load")
            cfg = TrainConfig.from_toml(Path(str(path).strip()).expanduser())
        except (ConfigError, ValueError, OSError) as e:
            return [compat.no_change() for _ in self.keys] + [problems_html(e)]
        return [compat.update(value=v) for v in config_to_values(cfg, self.keys)] + [ok_html(f"Loaded {path}")]

    def upload_config(self, file) -> list:
        return self.load_config(compat.file_path(file))

    # -- the run ---------------------------------------------------------------------------------
    def start(self, *values) -> tuple:
        """(message, then an update per run button: start, stop, sample now, save now)."""
        try:
            cfg = self.to_config(values)
            run_host = self.host_for_run() if self.host_for_run else self.host
            job_id = self.job.start(cfg, run_host)
        except Exception as e:  # noqa: BLE001 - every refusal is shown to the user, not raised
            if not (_is_user_error(e) or isinstance(e, (JobBusyError, ValueError))):
                raise
            return (problems_html(e),) + tuple(compat.no_change() for _ in range(4))
        memory = self.job.status(losses=False)["memory"]
        note = f" {memory[:1].upper()}{memory[1:]}." if memory else ""
        return (ok_html(f"Started training {cfg.output_name} ({cfg.network.method}), job {job_id}.{note}"),
                *_run_buttons(running=True))

    def resumable(self, *values) -> tuple:
        """(the list of training states in this form's output folder, a note): what Resume can go on from."""
        from ..methods.base import make_method
        from ..train.resume import resumable_states

        try:
            cfg = self.to_config(values)
            folder = self.host.output_dir(make_method(cfg).kind, cfg)
        except Exception as e:  # noqa: BLE001 - shown, not raised: the form may be half filled
            if not (_is_user_error(e) or isinstance(e, ValueError)):
                raise
            return compat.update(choices=[], value=None), problems_html(e)
        states = resumable_states(folder)
        if not states:
            return (compat.update(choices=[], value=None),
                    notice_html(f"No training state in {folder}: turn on Output → save state to make one."))
        labels = [s.label() for s in states]
        self._states = {s.label(): str(s.folder) for s in states}
        return compat.update(choices=labels, value=None), ok_html(f"{len(states)} run(s) in {folder} can go on: "
                                                                 "pick one to fill Resume from.")

    def pick_resumable(self, label: str):
        """The chosen state's folder into training.resume."""
        folder = getattr(self, "_states", {}).get(label or "")
        return compat.update(value=folder) if folder else compat.no_change()

    def stop(self) -> str:
        if self.job.stop():
            return ok_html("Stopping after the current step; the result is saved.")
        return notice_html(NOT_TRAINING)

    def sample_now(self) -> str:
        try:
            requested = self.job.request_sample()
        except ValueError as e:
            return problems_html(e)
        if requested:
            return ok_html("Making previews after the current step; they appear under Previews.")
        return notice_html(NOT_TRAINING + " Sample now makes previews of a running training.")

    def save_now(self) -> str:
        if self.job.request_save():
            return ok_html("Saving an intermediate file after the current step; the Log names it.")
        return notice_html(NOT_TRAINING + " Save now writes an intermediate file of a running training.")

    def poll(self, last: dict) -> tuple[list, dict]:
        """(outputs, what this page has now): only what changed since `last` is sent.
        Outputs: status, loss plot, gallery, result, log, then the run buttons."""
        s = self.job.status()
        last = last or {}
        # when this page was opened: a run that ended before it is the previous run, shown as such
        opened_at = last.get("opened_at") or time.time()
        now = dict({k: s[k] for k in _VERSIONS}, opened_at=opened_at)
        new_job = last.get("job_id") != s["job_id"]
        changed = new_job or last.get("version") != s["version"]
        keep = compat.no_change
        if is_previous_run(s, opened_at):
            if not changed:
                return [keep() for _ in range(5 + 4)], now
            return [previous_run_html(s, describe(self.host)), None, None, "", "", *_run_buttons(False)], now
        running = s["state"] in RUNNING
        out = [status_html(s, None if running else describe(self.host)) if changed or running else keep()]
        if new_job or last.get("loss_version") != s["loss_version"]:
            out.append(loss_plot(s["losses"], s["total_steps"], val_losses=s.get("val_losses")))
        else:
            out.append(keep())
        if new_job or last.get("preview_version") != s["preview_version"]:
            out.append(self.job.preview_images() or None)
        else:
            out.append(keep())
        if changed:
            out.append(s["prompt_usage"] if s["state"] in ("done", "stopped") else "")
            out.append("\n".join(s["log"]))
            out += _run_buttons(running)
        else:
            out += [keep() for _ in range(2 + 4)]
        return out, now

    def as_dict(self) -> dict:
        """The handlers by the names tests use."""
        return {"start": self.start, "stop": self.stop, "poll": self.poll, "save": self.save_config,
                "load": self.load_config, "preset": self.preset, "dataset": self.dataset, "method": self.method,
                "sample_now": self.sample_now, "save_now": self.save_now, "resumable": self.resumable,
                "pick_resumable": self.pick_resumable}


def _run_buttons(running: bool) -> list:
    """Start is usable while idle; Stop, Sample now and Save now while a training runs."""
    return [compat.update(interactive=not running)] + [compat.update(interactive=running) for _ in range(3)]


def _with(cfg: TrainConfig, values: dict) -> TrainConfig:
    data = cfg.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return TrainConfig.from_dict(data)


# -- attaching the handlers to the components ----------------------------------------------------------
def connect(tab, ui: TabLayout, h: TabHandlers, poll_seconds: float) -> None:
    """Register every event; call inside `with tab:` (the Blocks that holds `ui`)."""
    fields = ui.fields
    fields["network.method"].change(h.method, inputs=[fields["network.method"]],
                                    outputs=list(ui.sections.values()) + [fields[k] for k in METHOD_ONLY],
                                    queue=False, **NO_API)
    summary_inputs = [fields[k] for k in h.summary_keys]
    for key in h.summary_keys:
        fields[key].change(h.dataset, inputs=summary_inputs, outputs=[ui.summary], **NO_API)
    ui.preset.change(h.preset, inputs=[ui.preset], outputs=ui.inputs + [ui.preset_info], **NO_API)
    ui.save_config.click(h.save_config, inputs=[ui.config_path] + ui.inputs, outputs=[ui.message], **NO_API)
    ui.load_config.click(h.load_config, inputs=[ui.config_path], outputs=ui.inputs + [ui.message], **NO_API)
    ui.upload.upload(h.upload_config, inputs=[ui.upload], outputs=ui.inputs + [ui.message], **NO_API)

    ui.find_states.click(h.resumable, inputs=ui.inputs, outputs=[ui.states, ui.message], **NO_API)
    ui.states.change(h.pick_resumable, inputs=[ui.states], outputs=[fields["training.resume"]], **NO_API)
    ui.start.click(h.start, inputs=ui.inputs, outputs=[ui.message] + ui.run_buttons, **NO_API)
    # queue=False: these only set a flag, and must not wait behind polls in a busy queue
    ui.stop.click(h.stop, inputs=[], outputs=[ui.message], queue=False, **NO_API)
    ui.sample_now.click(h.sample_now, inputs=[], outputs=[ui.message], queue=False, **NO_API)
    ui.save_now.click(h.save_now, inputs=[], outputs=[ui.message], queue=False, **NO_API)
    ui.copy.click(None, inputs=[ui.result], outputs=[], **NO_API,
                  **compat.js("(text) => { if (window.trainerExt) { trainerExt.copy(text); } "
                              "else if (navigator.clipboard) { navigator.clipboard.writeText(text); } "
                              "return []; }"))
    _connect_poll(tab, ui, h, poll_seconds)


def _connect_poll(tab, ui: TabLayout, h: TabHandlers, poll_seconds: float) -> None:
    outputs = [ui.status, ui.plot, ui.gallery, ui.result, ui.log] + ui.run_buttons
    options = dict(every=poll_seconds, show_progress="hidden", **NO_API)
    if compat.GRADIO_MAJOR < 4:
        # gradio 3 wraps `every` functions, hiding a gr.Request parameter: per-page memory in a State
        seen_state = gr.State({})

        def poll_page(last):
            out, now = h.poll(last)
            # gradio 3 runs an `every` event as one loop per page with the inputs of its first call:
            # the State value returned is not what the next call gets, the same dict object is
            last.clear()
            last.update(now)
            return out + [now]

        tab.load(poll_page, inputs=[seen_state], outputs=outputs + [seen_state], **options)
    else:
        # gradio 4's client warns on every call of an input-taking event hidden from its API,
        # so the per-page memory is kept here, by session, and the poll takes no inputs
        seen = _Seen()

        def poll_session(request: gr.Request):
            key = getattr(request, "session_hash", None) or "?"
            out, now = h.poll(seen.get(key))
            seen.put(key, now)
            return out

        tab.load(poll_session, inputs=None, outputs=outputs, **options)


class _Seen:
    """Last versions sent to each page (bounded: closed pages are forgotten eventually)."""

    def __init__(self, limit: int = 200):
        self._data: "OrderedDict[str, dict]" = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: str) -> dict:
        with self._lock:
            return dict(self._data.get(key) or {})

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._limit:
                self._data.popitem(last=False)
