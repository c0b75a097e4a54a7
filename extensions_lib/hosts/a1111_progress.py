"""Training progress in the WebUI's own progress machinery, and its Interrupt button as a stop.

The WebUI reports every job through `shared.state` (modules/shared_state.py): /sdapi/v1/progress
and the progress bar compute job_no/job_count + sampling_step/sampling_steps/job_count, show
`textinfo` and `current_image`. Its Interrupt button and POST /sdapi/v1/interrupt set
`state.interrupted` (with job_count 1 the button never takes the "stop after this image" path,
but `stopping_generation` is honoured too). WebUIProgress mirrors each training step there and
turns an interrupt into `Commands.request_stop()`, which the loop honours after the current step
(and still saves).

The host owns `shared.state` only while it holds the WebUI's queue lock (A1111Host.exclusive);
outside it these callbacks leave the state alone, since a generation may be using it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..train.events import Callbacks, Commands, StepInfo, TrainResult

METHOD_LABELS = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr",
                 "embedding": "embedding", "hypernetwork": "hypernetwork"}


@contextmanager
def webui_job(job: str, job_count: int, textinfo: str) -> Iterator[object]:
    """Hold the WebUI's GPU queue (`call_queue.queue_lock`: a generation running now finishes first,
    later ones wait) and run as a job in `shared.state`, so its progress bar and Interrupt work; yields
    the state. Not re-entrant: never call it from a function the WebUI already runs under its queue."""
    from modules import call_queue, shared

    call_queue.queue_lock.acquire()
    try:
        state = shared.state
        state.begin(job=job)
        state.job_count = job_count
        state.job_no = 0
        state.sampling_step = 0
        state.sampling_steps = 0
        state.textinfo = textinfo
        try:
            yield state
        finally:
            state.end()
            # as the WebUI's own job wrapper does, so no flag leaks into the next job
            state.interrupted = False
            state.skipped = False
            state.stopping_generation = False
            state.textinfo = None
    finally:
        call_queue.queue_lock.release()


def format_eta(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def step_text(label: str, info: StepInfo) -> str:
    return (f"Training {label}: step {info.step}/{info.total_steps}, loss {info.loss:.4f}, "
            f"ETA {format_eta(info.eta_s)}")


class WebUIProgress(Callbacks):
    """Callbacks writing to `modules.shared.state`; `commands` receives the stop on Interrupt.

    owns_state: returns True while the host holds the queue lock (the state is ours to write).
    label: returns the method's display name for the text ("LoRA", "embedding", …)."""

    def __init__(self, commands: Optional[Commands] = None, *, owns_state: Callable[[], bool] = lambda: True,
                 label: Callable[[], str] = lambda: "LoRA"):
        self.commands = commands if commands is not None else Commands()
        self._owns_state = owns_state
        self._label = label
        self.interrupt_seen = False

    # -- plumbing -------------------------------------------------------------------------------
    def _state(self):
        if not self._owns_state():
            return None
        from modules import shared

        return shared.state

    def _poll_interrupt(self, state) -> None:
        if state is None or self.interrupt_seen:
            return
        if getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False):
            self.interrupt_seen = True
            self.commands.request_stop()
            state.textinfo = f"Stopping the {self._label()} training after this step (it will be saved)…"

    # -- events ---------------------------------------------------------------------------------
    def on_start(self, info: dict) -> None:
        state = self._state()
        if state is None:
            return
        state.sampling_steps = int(info.get("total_steps") or 0)
        state.sampling_step = 0
        state.textinfo = f"Training {self._label()}: {state.sampling_steps} steps"
        self._poll_interrupt(state)

    def on_status(self, text: str) -> None:
        state = self._state()
        if state is None:
            return
        self._poll_interrupt(state)
        if not self.interrupt_seen:
            state.textinfo = f"Training {self._label()}: {text}"

    def on_warning(self, text: str) -> None:
        # the progress text is replaced at the next step: the WebUI's console keeps it
        print(f"[trainer] Warning: {text}", file=sys.stderr)
        self.on_status(f"Warning: {text}")

    def on_step(self, info: StepInfo) -> None:
        state = self._state()
        if state is None:
            return
        state.sampling_steps = int(info.total_steps)
        state.sampling_step = int(info.step)
        state.textinfo = step_text(self._label(), info)
        self._poll_interrupt(state)

    def on_sample(self, images: list, step: int) -> None:
        state = self._state()
        if state is None:
            return
        if images:
            _, image = images[0]
            state.assign_current_image(image)
        self._poll_interrupt(state)

    def on_saved(self, path: Path, final: bool) -> None:
        state = self._state()
        if state is None:
            return
        state.textinfo = f"Training {self._label()}: saved {Path(path).name}"
        self._poll_interrupt(state)

    def on_end(self, result: TrainResult) -> None:
        state = self._state()
        if state is None:
            return
        state.sampling_step = result.steps
        how = "stopped" if result.stopped else "finished"
        where = f" → {Path(result.output_path).name}" if result.output_path else ""
        state.textinfo = f"Training {self._label()} {how} after {result.steps} steps{where}"
