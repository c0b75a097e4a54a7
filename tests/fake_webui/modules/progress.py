"""Fake of modules/progress.py (1.10.1): the task registry that POST /internal/progress reads.

Same module globals and functions; progressapi() computes the same fields as the real endpoint
(a dict instead of the pydantic ProgressResponse).
"""
import base64
import io
import random
import string
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import modules.shared as shared

current_task = None
pending_tasks = OrderedDict()
finished_tasks = []
recorded_results = []
recorded_results_limit = 2


def start_task(id_task):
    global current_task
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task):
    global current_task
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    if len(finished_tasks) > 16:
        finished_tasks.pop(0)


def create_task_id(task_type):
    return f"task({task_type}-{''.join(random.choices(string.ascii_uppercase + string.digits, k=7))})"


def record_results(id_task, res):
    recorded_results.append((id_task, res))
    if len(recorded_results) > recorded_results_limit:
        recorded_results.pop(0)


def add_task_to_queue(id_job):
    pending_tasks[id_job] = time.time()


@dataclass
class ProgressRequest:
    id_task: Optional[str] = None
    id_live_preview: int = -1
    live_preview: bool = True


def progressapi(req: ProgressRequest) -> dict:
    active = req.id_task == current_task
    queued = req.id_task in pending_tasks
    completed = req.id_task in finished_tasks
    if not active:
        textinfo = "Waiting..."
        if queued:
            order = sorted(pending_tasks, key=lambda x: pending_tasks[x])
            textinfo = f"In queue: {order.index(req.id_task) + 1}/{len(order)}"
        return dict(active=active, queued=queued, completed=completed, id_live_preview=-1, textinfo=textinfo)

    state = shared.state
    progress = 0
    if state.job_count > 0:
        progress += state.job_no / state.job_count
    if state.sampling_steps > 0 and state.job_count > 0:
        progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
    progress = min(progress, 1)
    elapsed = time.time() - state.time_start
    eta = (elapsed / progress - elapsed) if progress > 0 else None
    live_preview = None
    id_live_preview = req.id_live_preview
    if shared.opts.live_previews_enable and req.live_preview:
        state.set_current_image()
        if state.id_live_preview != req.id_live_preview and state.current_image is not None:
            buffered = io.BytesIO()
            fmt = shared.opts.live_previews_image_format
            state.current_image.save(buffered, format=fmt)
            live_preview = f"data:image/{fmt};base64,{base64.b64encode(buffered.getvalue()).decode('ascii')}"
            id_live_preview = state.id_live_preview
    return dict(active=active, queued=queued, completed=completed, progress=progress, eta=eta,
                live_preview=live_preview, id_live_preview=id_live_preview, textinfo=state.textinfo)


def reset():
    """Fake-only."""
    global current_task
    current_task = None
    pending_tasks.clear()
    finished_tasks.clear()
    recorded_results.clear()
