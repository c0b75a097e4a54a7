"""The run column's HTML: the status line (progress bar, numbers, problems), the previous run, and
the one-line replies to the tab's buttons. Pure functions of a job status dict."""
from __future__ import annotations

import html
import time
from typing import Optional

from ..config import ConfigError
from ..hosts.base import Host
from .fields import METHOD_LABELS
from .job import RUNNING


def problems_html(e: Exception) -> str:
    """A refusal: every field of a ConfigError with its value and what is allowed, else the message."""
    esc = html.escape
    if isinstance(e, ConfigError):
        items = "".join(f"<li><b>{esc(p.field)}</b> = {esc(repr(p.value))}: {esc(p.allowed)}</li>"
                        for p in e.problems)
        return f"<div class='trainer-ext-error'>Please fix {len(e.problems)} option(s):<ul>{items}</ul></div>"
    return f"<div class='trainer-ext-error'>{esc(str(e))}</div>"


def ok_html(text: str) -> str:
    return f"<div class='trainer-ext-ok'>{html.escape(text)}</div>"


def notice_html(text: str) -> str:
    """A reply that is neither success nor error (e.g. a button pressed while nothing trains)."""
    return f"<div class='trainer-ext-muted trainer-ext-notice'>{html.escape(text)}</div>"


def fmt_time(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(host: Host) -> dict:
    """The host's facts for the idle status line; a host that cannot tell is not an error."""
    try:
        return host.describe() or {}
    except Exception:  # noqa: BLE001 - e.g. the WebUI has no model yet
        return {}


def is_previous_run(s: dict, page_opened_at: Optional[float]) -> bool:
    """A run that ended before this page was opened is history, not what the page is showing live."""
    if page_opened_at is None or s["state"] in RUNNING or s["state"] == "idle":
        return False
    finished = s.get("finished_at")
    return finished is None or finished < page_opened_at


def page_status(s: dict, host_info: Optional[dict], page_opened_at: float) -> str:
    """The status as a page opened at `page_opened_at` shows it."""
    if is_previous_run(s, page_opened_at):
        return previous_run_html(s, host_info)
    return status_html(s, host_info)


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


def _numbers(s: dict) -> list[str]:
    """The status line's parts: state badge, step, epoch, loss, speed, ETA, lr, elapsed."""
    state = s["state"]
    total = s["total_steps"] or 0
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
        parts.append(f"ETA {fmt_time(s['eta_s'])}")
    if s["lr"] is not None:
        parts.append(f"lr {s['lr']:.2e}")
    if s.get("started_at"):
        end = s.get("finished_at") or time.time()
        parts.append(f"elapsed {fmt_time(end - s['started_at'])}")
    return parts


def status_html(s: dict, host_info: Optional[dict] = None) -> str:
    """The progress bar and one line of numbers; when idle, the host's model and any problem.
    The outer element carries data-state, data-job and data-step (styles and the browser test read them)."""
    esc = html.escape
    state = s["state"]
    total = s["total_steps"] or 0
    pct = 100.0 * s["step"] / total if total else (100.0 if state == "done" else 0.0)
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
    return (f"<div class='trainer-ext-status' data-state='{state}' data-job='{esc(str(s.get('job_id') or ''))}' "
            f"data-step='{int(s['step'] or 0)}'>"
            f"<div class='trainer-ext-progress'><div style='width:{pct:.1f}%'></div></div>"
            f"<div class='trainer-ext-numbers'>{' · '.join(_numbers(s))}</div>"
            f"<div class='{msg_cls}'>{esc(message or '')}</div>{extra}</div>")
