"""The Train tab: one gradio Blocks built against the Host interface and a TrainingJob.

The WebUI glue, Forge and the standalone server all call `build_tab(host, job)`; nothing here
knows which one it runs in, apart from the tab's label. Every option is a widget made from its
TrainConfig field (label, help as tooltip text, limits), listed once in LAYOUT.
"""
from __future__ import annotations

import html
import importlib.util
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

from ..config import ConfigError, TrainConfig
from ..hosts.base import Host
from . import compat
from .compat import gr
from .fields import METHOD_LABELS, SPECS, FieldSpec, config_to_values, values_to_config
from .job import RUNNING, TrainingJob
from .plot import loss_plot
from .presets import DEFAULTS, preset_about, preset_names, preset_values
from .summary import dataset_summary, summary_html

ELEM_ID = "trainer_ext"
# our events are UI plumbing, not a gradio API (the REST API is /trainer/v1); leaving them out of
# gradio's API info also avoids gradio 4's schema walker, which fails on File/Image schemas
# under newer pydantic releases
NO_API = {"api_name": False}

# Rows of fields per section; a section's "advanced" rows go in a closed accordion.
LAYOUT: dict[str, dict[str, list[list[str]]]] = {
    "Dataset": {
        "rows": [["data.reg_dir", "data.caption_extension"],
                 ["data.resolution", "data.enable_buckets", "data.cache_latents"]],
        "advanced": [["data.min_bucket_reso", "data.max_bucket_reso", "data.bucket_reso_steps"],
                     ["data.bucket_no_upscale", "data.random_crop", "data.flip_aug", "data.cache_latents_to_disk"],
                     ["data.shuffle_caption", "data.keep_tokens", "data.max_token_length"],
                     ["data.caption_dropout_rate", "data.caption_tag_dropout_rate", "data.prior_loss_weight"]],
    },
    "Network": {
        "rows": [["network.dim", "network.alpha", "network.conv_dim", "network.conv_alpha"],
                 ["network.train_unet", "network.train_text_encoder", "network.lokr_factor"]],
        "advanced": [["network.dropout", "network.rank_dropout", "network.module_dropout"],
                     ["network.multiplier"]],
    },
    "Embedding": {
        "rows": [["embedding.token", "embedding.init_text", "embedding.num_vectors"],
                 ["embedding.prompt_source", "embedding.template", "embedding.save_pt"]],
        "advanced": [],
    },
    "Hypernetwork": {
        "rows": [["hypernetwork.layer_structure", "hypernetwork.activation", "hypernetwork.weight_init"],
                 ["hypernetwork.layer_norm", "hypernetwork.use_dropout", "hypernetwork.dropout_structure"]],
        "advanced": [["hypernetwork.activate_output", "hypernetwork.last_layer_dropout", "hypernetwork.sizes"]],
    },
    "Training": {
        "rows": [["training.max_train_epochs", "training.max_train_steps", "training.train_batch_size",
                  "training.gradient_accumulation_steps"],
                 ["training.learning_rate", "training.unet_lr", "training.text_encoder_lr"],
                 ["training.optimizer", "training.lr_scheduler", "training.lr_warmup_steps"],
                 ["training.mixed_precision", "training.gradient_checkpointing", "training.seed"]],
        "advanced": [["model.clip_skip", "training.noise_offset", "training.min_snr_gamma"],
                     ["training.weight_decay", "training.max_grad_norm", "training.lr_scheduler_num_cycles",
                      "training.lr_scheduler_power"]],
    },
    "Samples": {
        "rows": [["sample.prompts"], ["sample.negative_prompt"],
                 ["sample.every_n_epochs", "sample.every_n_steps", "sample.seed"],
                 ["sample.width", "sample.height", "sample.steps", "sample.cfg_scale"]],
        "advanced": [],
    },
    "Output": {
        "rows": [["output.name", "output.save_precision", "output.overwrite"],
                 ["output.trigger_words", "output.preferred_weight"],
                 ["output.save_every_n_epochs", "output.save_every_n_steps"]],
        "advanced": [["output.output_dir"], ["output.comment"]],
    },
    "Model": {   # standalone only: inside the WebUI the loaded checkpoint is used
        "rows": [["model.checkpoint"], ["model.vae", "model.tokenizer", "model.v_prediction"]],
        "advanced": [],
    },
}
# placed by hand: the dataset folder (with its live summary) and the method radio
SPECIAL = ("data.train_dir", "network.method")
# fields that only some methods read: hidden for the others
METHOD_ONLY = {"network.conv_dim": ("locon", "loha", "lokr"), "network.conv_alpha": ("locon", "loha", "lokr"),
               "network.lokr_factor": ("lokr",)}
OPEN_SECTIONS = ("Dataset", "Network", "Embedding", "Hypernetwork", "Training", "Output", "Model")


def layout_keys(standalone: bool) -> list[str]:
    keys = list(SPECIAL)
    for section, parts in LAYOUT.items():
        if section == "Model" and not standalone:
            continue
        for row in parts["rows"] + parts["advanced"]:
            keys.extend(row)
    return keys


def is_forge() -> bool:
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def tab_label(host: Host) -> str:
    """"Trainer" beside the AUTOMATIC1111 WebUI's own "Train" tab; "Train" on Forge (which has
    none) and standalone."""
    if host.name == "a1111" and not is_forge():
        return "Trainer"
    return "Train"


# -- widgets ---------------------------------------------------------------------------------------
def widget(spec: FieldSpec, value, **extra):
    common = dict(label=spec.label, info=spec.help, elem_id=spec.elem_id, **extra)
    if spec.key == "network.method":
        return compat.make(gr.Radio, choices=list(METHOD_LABELS), value=value, **common)
    if spec.kind is bool:
        return compat.make(gr.Checkbox, value=value, **common)
    if spec.choices is not None:
        choices = [str(c) for c in spec.choices]
        if len(choices) <= 4:
            return compat.make(gr.Radio, choices=choices, value=value, **common)
        return compat.make(gr.Dropdown, choices=choices, value=value, **common)
    if spec.kind in (int, float):
        if spec.kind is float and spec.minimum == 0.0 and spec.maximum == 1.0:
            return compat.make(gr.Slider, minimum=0.0, maximum=1.0, step=0.01, value=value, **common)
        return compat.make(gr.Number, value=value, precision=0 if spec.kind is int else None, **common)
    lines = 3 if spec.key == "sample.prompts" else 1
    return compat.make(gr.Textbox, value=value, lines=lines, max_lines=12 if lines > 1 else 1, **common)


def _problems_html(e: Exception) -> str:
    esc = html.escape
    if isinstance(e, ConfigError):
        items = "".join(f"<li><b>{esc(p.field)}</b> = {esc(repr(p.value))}: {esc(p.allowed)}</li>"
                        for p in e.problems)
        return f"<div class='trainer-ext-error'>Please fix {len(e.problems)} option(s):<ul>{items}</ul></div>"
    return f"<div class='trainer-ext-error'>{esc(str(e))}</div>"


def _ok_html(text: str) -> str:
    return f"<div class='trainer-ext-ok'>{html.escape(text)}</div>"


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def is_previous_run(s: dict, page_opened_at: Optional[float]) -> bool:
    """A run that ended before this page was opened is history, not what the page is showing live."""
    if page_opened_at is None or s["state"] in RUNNING or s["state"] == "idle":
        return False
    finished = s.get("finished_at")
    return finished is None or finished < page_opened_at


def previous_run_html(s: dict, host_info: Optional[dict] = None) -> str:
    """The idle status plus one clearly labelled line about the last run: name, when it ended, result."""
    esc = html.escape
    outcome = {"done": "finished", "stopped": "stopped early, saved", "error": "failed"}.get(s["state"], s["state"])
    when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(s["finished_at"])) if s.get("finished_at") else "earlier")
    name = s.get("name") or "(unnamed)"
    method = {value: label for label, value in METHOD_LABELS}.get(s.get("method"), s.get("method") or "")
    line = f"Previous run: {name}{f' ({method})' if method else ''}, {outcome} {when}"
    if s.get("step"):
        line += f" after {s['step']} steps"
    if s["state"] == "error" and s.get("error"):
        line += f": {s['error'].splitlines()[0]}"
    elif s.get("output_path"):
        line += f" → {s['output_path']}"
        if s.get("prompt_usage"):
            line += f"; use it as {s['prompt_usage']}"
    idle = status_html(dict(s, state="idle", step=0, total_steps=0, total_epochs=0, loss=None, avg_loss=None,
                            it_per_s=None, eta_s=None, lr=None, started_at=None, warnings=[]), host_info)
    return idle[:-len("</div>")] + f"<div class='trainer-ext-muted trainer-ext-previous'>{esc(line)}</div></div>"


def status_html(s: dict, host_info: Optional[dict] = None) -> str:
    """The progress bar and one line of numbers; when idle, the host's model and any problem."""
    esc = html.escape
    state = s["state"]
    total = s["total_steps"] or 0
    pct = 100.0 * s["step"] / total if total else (100.0 if state == "done" else 0.0)
    parts = [f"<span class='trainer-ext-badge {state}'>{state}</span>"]
    if state != "idle":
        parts.append(f"step <b>{s['step']}</b> / {total}")
        if s["total_epochs"]:
            parts.append(f"epoch {s['epoch']} / {s['total_epochs']}")
    if s["loss"] is not None:
        avg = f" (avg {s['avg_loss']:.4f})" if s["avg_loss"] is not None else ""
        parts.append(f"loss <b>{s['loss']:.4f}</b>{avg}")
    elif s["step"]:
        parts.append("loss <b>not finite</b>")
    if s["it_per_s"]:
        speed = f"{s['it_per_s']:.2f} it/s" if s["it_per_s"] >= 1 else f"{1 / s['it_per_s']:.2f} s/it"
        parts.append(speed)
    if state in RUNNING and s["eta_s"] is not None:
        parts.append(f"ETA {_fmt_time(s['eta_s'])}")
    if s["lr"] is not None:
        parts.append(f"lr {s['lr']:.2e}")
    if s.get("started_at"):
        end = s.get("finished_at") or time.time()
        parts.append(f"elapsed {_fmt_time(end - s['started_at'])}")
    message = s["error"] if state == "error" else s["message"]
    if state == "idle":
        message = "Ready. Pick a dataset folder and press Start."
    msg_cls = "trainer-ext-error" if state == "error" else "trainer-ext-muted"
    extra = ""
    info = host_info or {}
    if state not in RUNNING and info.get("model"):
        extra += f"<div class='trainer-ext-muted'>Model: {esc(str(info['model']))}</div>"
    if state not in RUNNING and info.get("problem"):
        extra += f"<div class='trainer-ext-error'>{esc(str(info['problem']))}</div>"
    for warning in (s.get("warnings") or [])[-3:]:       # e.g. a NaN preview: the run goes on, the user must know
        extra += f"<div class='trainer-ext-warning'>Warning: {esc(str(warning))}</div>"
    return (f"<div class='trainer-ext-status' data-state='{state}'>"
            f"<div class='trainer-ext-progress'><div style='width:{pct:.1f}%'></div></div>"
            f"<div class='trainer-ext-numbers'>{' · '.join(parts)}</div>"
            f"<div class='{msg_cls}'>{esc(message or '')}</div>{extra}</div>")


# -- the tab ---------------------------------------------------------------------------------------
def build_tab(host: Host, job: TrainingJob, *, defaults: Optional[TrainConfig] = None,
              poll_seconds: float = 1.0, host_for_run: Optional[Callable[[], Host]] = None):
    """Build the tab's Blocks (not launched). `host_for_run`, if given, is called at each Start
    to get the host for that run; by default every run uses `host`."""
    defaults = defaults or TrainConfig()
    standalone = host.name == "standalone"
    keys = layout_keys(standalone)
    initial = dict(zip(keys, config_to_values(defaults, keys)))
    w: dict = {}

    def field(key: str, **extra):
        if key in METHOD_ONLY:
            extra.setdefault("visible", defaults.network.method in METHOD_ONLY[key])
        w[key] = widget(SPECS[key], initial[key], **extra)
        return w[key]

    def rows(parts: list[list[str]]):
        for row in parts:
            with gr.Row():
                for key in row:
                    field(key)

    groups: dict = {}
    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(elem_id=f"{ELEM_ID}_toolbar"):
            preset = compat.make(gr.Dropdown, choices=[DEFAULTS] + preset_names(), value=None, label="Preset",
                                 info="Sets the options that matter for a kind of job; the dataset is kept.",
                                 elem_id=f"{ELEM_ID}_preset", scale=2)
            config_path = compat.make(gr.Textbox, label="Config file (TOML, same as the CLI)",
                                      placeholder="/path/to/config.toml", elem_id=f"{ELEM_ID}_config_path",
                                      info="Save writes every option; Load fills the form.", scale=3)
            with compat.make(gr.Column, scale=1, min_width=140, elem_id=f"{ELEM_ID}_config_buttons"):
                save_btn = compat.make(gr.Button, value="Save config", elem_id=f"{ELEM_ID}_save", size="sm")
                load_btn = compat.make(gr.Button, value="Load config", elem_id=f"{ELEM_ID}_load", size="sm")
                upload = compat.make(gr.UploadButton, label="Upload .toml", file_types=[".toml"], size="sm",
                                     elem_id=f"{ELEM_ID}_upload", **compat.file_kwargs())
        preset_info = gr.Markdown("", elem_id=f"{ELEM_ID}_preset_info")

        with gr.Row(equal_height=False):
            with compat.make(gr.Column, scale=3, elem_id=f"{ELEM_ID}_settings"):
                with compat.make(gr.Accordion, label="Dataset", open=True, elem_id=f"{ELEM_ID}_dataset"):
                    field("data.train_dir", placeholder="/path/to/dataset  (holds e.g. 10_sks dog/)")
                    summary = gr.HTML(summary_html(dataset_summary(defaults)), elem_id=f"{ELEM_ID}_dataset_summary")
                    rows(LAYOUT["Dataset"]["rows"])
                    with compat.make(gr.Accordion, label="Buckets, captions, augmentation", open=False):
                        rows(LAYOUT["Dataset"]["advanced"])
                with compat.make(gr.Group, elem_id=f"{ELEM_ID}_method_group"):
                    field("network.method")
                for section in ("Network", "Embedding", "Hypernetwork", "Training", "Samples", "Output", "Model"):
                    if section == "Model" and not standalone:
                        continue
                    title = "Model (standalone)" if section == "Model" else section
                    with compat.make(gr.Accordion, label=title, open=section in OPEN_SECTIONS,
                                     elem_id=f"{ELEM_ID}_{section.lower()}",
                                     visible=_section_visible(section, defaults.network.method)) as acc:
                        groups[section] = acc
                        rows(LAYOUT[section]["rows"])
                        if LAYOUT[section]["advanced"]:
                            with compat.make(gr.Accordion, label="Advanced", open=False):
                                rows(LAYOUT[section]["advanced"])

            with compat.make(gr.Column, scale=2, elem_id=f"{ELEM_ID}_run"):
                with gr.Row():
                    start_btn = compat.make(gr.Button, value="Start training", variant="primary",
                                            elem_id=f"{ELEM_ID}_start")
                    stop_btn = compat.make(gr.Button, value="Stop", variant="stop", elem_id=f"{ELEM_ID}_stop",
                                           interactive=False)
                message = gr.HTML("", elem_id=f"{ELEM_ID}_message")
                # a run that ended before this tab was built is shown as the previous run, not as current
                status = gr.HTML(_page_status(job.status(), None, time.time()), elem_id=f"{ELEM_ID}_status")
                with compat.make(gr.Row, elem_id=f"{ELEM_ID}_result_row", equal_height=True):
                    result = compat.make(gr.Textbox, value="", label="Use it in a prompt", lines=1, max_lines=1,
                                         placeholder="e.g. <lora:name:0.8>, when training ends",
                                         interactive=False, elem_id=f"{ELEM_ID}_result", scale=4)
                    copy_btn = compat.make(gr.Button, value="Copy", elem_id=f"{ELEM_ID}_copy", size="sm",
                                           scale=1, min_width=80)
                plot = compat.make(gr.Image, value=None, type="pil", label="Loss", interactive=False,
                                   elem_id=f"{ELEM_ID}_loss_plot", show_download_button=False,
                                   show_share_button=False, height=220)
                gallery = compat.make(gr.Gallery, value=None, label="Previews", elem_id=f"{ELEM_ID}_gallery",
                                      columns=4, height=200, object_fit="contain", show_share_button=False)
                with compat.make(gr.Accordion, label="Log", open=False, elem_id=f"{ELEM_ID}_log_box"):
                    log = compat.make(gr.Textbox, value="", lines=8, max_lines=16, show_label=False,
                                      interactive=False, elem_id=f"{ELEM_ID}_log")

        inputs = [w[k] for k in keys]

        # -- handlers ------------------------------------------------------------------------
        def to_config(values) -> TrainConfig:
            return values_to_config(keys, list(values), base=defaults)

        def on_method(method):
            return [compat.update(visible=_section_visible(s, method)) for s in groups] + [
                compat.update(visible=method in methods) for methods in METHOD_ONLY.values()]

        w["network.method"].change(on_method, inputs=[w["network.method"]],
                                   outputs=list(groups.values()) + [w[k] for k in METHOD_ONLY], queue=False,
                                   **NO_API)

        summary_keys = [k for k in keys if k.startswith("data.") and k not in (
            "data.random_crop", "data.shuffle_caption", "data.keep_tokens", "data.caption_dropout_rate",
            "data.caption_tag_dropout_rate", "data.cache_latents", "data.cache_latents_to_disk",
            "data.max_token_length", "data.prior_loss_weight")] + [
            "training.max_train_epochs", "training.max_train_steps", "training.train_batch_size",
            "training.gradient_accumulation_steps"]

        def on_dataset(*values):
            base = defaults
            try:
                cfg = values_to_config(summary_keys, list(values), base=base)
            except ConfigError as e:
                return _problems_html(e)
            return summary_html(dataset_summary(cfg))

        for key in summary_keys:
            w[key].change(on_dataset, inputs=[w[k] for k in summary_keys], outputs=[summary], **NO_API)

        def on_preset(name, *values):
            if not name:
                return [compat.no_change() for _ in keys] + [""]
            chosen = preset_values(name)
            out = [compat.update(value=v) for v in config_to_values(_with(defaults, chosen), keys)]
            out = [o if k in chosen else compat.no_change() for k, o in zip(keys, out)]
            return out + [f"**{name}:** {preset_about(name)}"]

        preset.change(on_preset, inputs=[preset], outputs=inputs + [preset_info], **NO_API)

        def on_save(path, *values):
            try:
                cfg = to_config(values)
                if not str(path or "").strip():
                    raise ValueError("enter a file path for the config, e.g. /path/to/my_lora.toml")
                target = Path(str(path).strip()).expanduser()
                target.parent.mkdir(parents=True, exist_ok=True)
                cfg.save_toml(target)
            except (ConfigError, ValueError, OSError) as e:
                return _problems_html(e)
            return _ok_html(f"Saved the config to {target}")

        save_btn.click(on_save, inputs=[config_path] + inputs, outputs=[message], **NO_API)

        def load_from(path):
            try:
                if not str(path or "").strip():
                    raise ValueError("enter the path of a .toml config to load")
                cfg = TrainConfig.from_toml(Path(str(path).strip()).expanduser())
            except (ConfigError, ValueError, OSError) as e:
                return [compat.no_change() for _ in keys] + [_problems_html(e)]
            return [compat.update(value=v) for v in config_to_values(cfg, keys)] + [
                _ok_html(f"Loaded {path}")]

        load_btn.click(load_from, inputs=[config_path], outputs=inputs + [message], **NO_API)
        upload.upload(lambda f: load_from(compat.file_path(f)), inputs=[upload], outputs=inputs + [message],
                      **NO_API)

        def on_start(*values):
            try:
                cfg = to_config(values)
                run_host = host_for_run() if host_for_run else host
                job_id = job.start(cfg, run_host)
            except Exception as e:  # noqa: BLE001 - every refusal is shown to the user, not raised
                from .job import JobBusyError, _is_user_error

                if not (_is_user_error(e) or isinstance(e, (JobBusyError, ValueError))):
                    raise
                return _problems_html(e), compat.no_change(), compat.no_change()
            return (_ok_html(f"Started training {cfg.output_name} ({cfg.network.method}), job {job_id}."),
                    compat.update(interactive=False), compat.update(interactive=True))

        start_btn.click(on_start, inputs=inputs, outputs=[message, start_btn, stop_btn], **NO_API)

        def on_stop():
            if job.stop():
                return _ok_html("Stopping after the current step; the result is saved.")
            return _ok_html("Nothing is training.")

        stop_btn.click(on_stop, inputs=[], outputs=[message], queue=False, **NO_API)
        copy_btn.click(None, inputs=[result], outputs=[], **NO_API,
                       **compat.js("(text) => { if (window.trainerExt) { trainerExt.copy(text); } "
                                   "else if (navigator.clipboard) { navigator.clipboard.writeText(text); } "
                                   "return []; }"))

        def poll(last: dict):
            """(outputs, what this page has now): only what changed since `last` is sent."""
            s = job.status()
            last = last or {}
            # when this page was opened: a run that ended before it is the previous run, shown as such
            opened_at = last.get("opened_at") or time.time()
            new_job = last.get("job_id") != s["job_id"]
            out = []
            changed = new_job or last.get("version") != s["version"]
            if is_previous_run(s, opened_at):
                now = {k: s[k] for k in ("job_id", "version", "loss_version", "preview_version")}
                if not changed:
                    return [compat.no_change()] * 7, dict(now, opened_at=opened_at)
                return ([previous_run_html(s, _describe(host)), None, None, "", "",
                         compat.update(interactive=True), compat.update(interactive=False)],
                        dict(now, opened_at=opened_at))
            if changed or s["state"] in RUNNING:
                out.append(status_html(s, None if s["state"] in RUNNING else _describe(host)))
            else:
                out.append(compat.no_change())
            if new_job or last.get("loss_version") != s["loss_version"]:
                out.append(loss_plot(s["losses"], s["total_steps"]))
            else:
                out.append(compat.no_change())
            if new_job or last.get("preview_version") != s["preview_version"]:
                out.append(job.preview_images() or None)
            else:
                out.append(compat.no_change())
            if changed:
                out.append(s["prompt_usage"] if s["state"] in ("done", "stopped") else "")
                out.append("\n".join(s["log"]))
                running = s["state"] in RUNNING
                out.append(compat.update(interactive=not running))
                out.append(compat.update(interactive=running))
            else:
                out += [compat.no_change()] * 4
            return out, dict({k: s[k] for k in ("job_id", "version", "loss_version", "preview_version")},
                             opened_at=opened_at)

        poll_outputs = [status, plot, gallery, result, log, start_btn, stop_btn]
        poll_options = dict(every=poll_seconds, show_progress="hidden", **NO_API)
        if compat.GRADIO_MAJOR < 4:
            # gradio 3 wraps `every` functions, hiding a gr.Request parameter: per-page memory in a State
            seen_state = gr.State({})

            def poll_page(last):
                out, now = poll(last)
                # gradio 3 runs an `every` event as one loop per page with the inputs of its first call:
                # the State value returned is not what the next call gets, the same dict object is
                last.clear()
                last.update(now)
                return out + [now]

            tab.load(poll_page, inputs=[seen_state], outputs=poll_outputs + [seen_state], **poll_options)
        else:
            # gradio 4's client warns on every call of an input-taking event hidden from its API,
            # so the per-page memory is kept here, by session, and the poll takes no inputs
            seen = _Seen()

            def poll_session(request: gr.Request):
                key = getattr(request, "session_hash", None) or "?"
                out, now = poll(seen.get(key))
                seen.put(key, now)
                return out

            tab.load(poll_session, inputs=None, outputs=poll_outputs, **poll_options)

    # for tests: the widgets by config key, the key order of the handlers' values, the handlers
    tab.trainer_widgets = w
    tab.trainer_keys = keys
    tab.trainer_summary_keys = summary_keys
    tab.trainer_handlers = {"start": on_start, "stop": on_stop, "poll": poll, "save": on_save, "load": load_from,
                            "preset": on_preset, "dataset": on_dataset, "method": on_method}
    return tab


def _page_status(s: dict, host_info: Optional[dict], page_opened_at: float) -> str:
    if is_previous_run(s, page_opened_at):
        return previous_run_html(s, host_info)
    return status_html(s, host_info)


def _describe(host: Host) -> dict:
    """The host's facts for the idle status line; a host that cannot tell is not an error."""
    try:
        return host.describe() or {}
    except Exception:  # noqa: BLE001 - e.g. the WebUI has no model yet
        return {}


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


def _section_visible(section: str, method: str) -> bool:
    if section == "Network":
        return method in ("lora", "locon", "loha", "lokr")
    if section == "Embedding":
        return method == "embedding"
    if section == "Hypernetwork":
        return method == "hypernetwork"
    return True


def _with(cfg: TrainConfig, values: dict) -> TrainConfig:
    data = cfg.to_dict()
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    return TrainConfig.from_dict(data)
