"""Fake of modules/call_queue.py (1.10.1): the GPU queue shared by txt2img, img2img, the API and
extensions.

Same semantics as the real wrappers:
- queue_lock is a FIFOLock (modules/fifo_lock.py), a module global of call_queue (not in shared);
- wrap_gradio_gpu_call(func, extra_outputs): if args[0] is a str "task(...)" it is queued in
  modules.progress; then, holding queue_lock: state.begin(job=id_task), progress.start_task,
  func(...), progress.record_results, progress.finish_task (even on error), state.end();
- then wrap_gradio_call resets state.skipped/interrupted/stopping_generation/job_count/job;
- then wrap_gradio_call_no_job: res = list(func(...)) (so func must return a list/tuple of outputs),
  on an exception it returns extra_outputs (default [None, '']) + [error html] instead of raising,
  calls devices.torch_gc(), and with add_stats appends a performance <div> to res[-1] with `+=`
  (so the LAST output must be a str). VRAM/profiling stats are left out.
"""
import html
import time
from functools import wraps

from modules import devices, errors, fifo_lock, progress, shared

queue_lock = fifo_lock.FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            res = func(*args, **kwargs)
        return res

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    @wraps(func)
    def f(*args, **kwargs):
        if args and type(args[0]) is str and args[0].startswith("task(") and args[0].endswith(")"):
            id_task = args[0]
            progress.add_task_to_queue(id_task)
        else:
            id_task = None

        with queue_lock:
            shared.state.begin(job=id_task)
            progress.start_task(id_task)
            try:
                res = func(*args, **kwargs)
                progress.record_results(id_task, res)
            finally:
                progress.finish_task(id_task)
            shared.state.end()

        return res

    return wrap_gradio_call(f, extra_outputs=extra_outputs, add_stats=True)


def wrap_gradio_call(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, **kwargs):
        try:
            res = func(*args, **kwargs)
        finally:
            shared.state.skipped = False
            shared.state.interrupted = False
            shared.state.stopping_generation = False
            shared.state.job_count = 0
            shared.state.job = ""
        return res

    return wrap_gradio_call_no_job(f, extra_outputs, add_stats)


def wrap_gradio_call_no_job(func, extra_outputs=None, add_stats=False):
    @wraps(func)
    def f(*args, extra_outputs_array=extra_outputs, **kwargs):
        t = time.perf_counter()
        try:
            res = list(func(*args, **kwargs))
        except Exception as e:
            errors.report(f"Error completing request\nArguments: {args} {kwargs}"[:131072], exc_info=True)
            if extra_outputs_array is None:
                extra_outputs_array = [None, '']
            res = extra_outputs_array + [f"<div class='error'>{html.escape(f'{type(e).__name__}: {e}')}</div>"]

        devices.torch_gc()

        if not add_stats:
            return tuple(res)

        elapsed = time.perf_counter() - t
        elapsed_m, elapsed_s = int(elapsed // 60), elapsed % 60
        elapsed_text = f"{elapsed_s:.1f} sec."
        if elapsed_m > 0:
            elapsed_text = f"{elapsed_m} min. " + elapsed_text
        res[-1] += f"<div class='performance'><p class='time'>Time taken: <wbr><span class='measurement'>{elapsed_text}</span></p></div>"
        return tuple(res)

    return f
