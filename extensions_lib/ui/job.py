"""One background training at a time, observable from any thread.

The gradio tab, the REST API and the WebUI glue share one TrainingJob. `start()` refuses bad input
at once (config, host, dataset, existing output) and only then runs `run_training` in a daemon
thread, so neither the UI thread nor a request handler ever waits for training. The loop reports
through Callbacks into a lock-protected state that `status()` copies out.
"""
from __future__ import annotations

import math
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from pathlib import Path
from typing import Optional

from ..config import TrainConfig
from ..hosts.base import Host
from ..train.events import Callbacks, Commands, MultiCallbacks, StepInfo, TrainResult

STATES = ("idle", "preparing", "training", "done", "stopped", "error")
RUNNING = ("preparing", "training")
MAX_LOG_LINES = 300


class JobBusyError(RuntimeError):
    """A start while another training runs."""

    def __init__(self):
        super().__init__("a training is already running: stop it first")


def _fresh(job_id: str = "", state: str = "idle") -> dict:
    return {
        "job_id": job_id, "state": state, "message": "", "error": "",
        "step": 0, "total_steps": 0, "epoch": 0, "total_epochs": 0,
        "loss": None, "avg_loss": None, "lr": None, "it_per_s": None, "eta_s": None,
        "losses": [], "val_losses": [], "previews": [], "preview_step": None,
        "output_path": "", "saved": [], "prompt_usage": "", "method": "", "name": "",
        "memory": "",     # the estimated peak memory against what the device has free (preflight)
        "started_at": None, "finished_at": None, "log": [], "warnings": [],
        # bumped on every change, so pollers redraw only what changed
        "version": 0, "loss_version": 0, "preview_version": 0,
    }


class _JobCallbacks(Callbacks):
    def __init__(self, job: "TrainingJob", job_id: str):
        self.job, self.job_id = job, job_id

    def on_start(self, info: dict) -> None:
        self.job._update(self.job_id, state="training", total_steps=info.get("total_steps", 0),
                         total_epochs=info.get("epochs", 0), message="Training…",
                         log=f"training {info.get('trainable_params', 0):,} parameters for "
                             f"{info.get('total_steps')} steps ({info.get('epochs')} epochs of "
                             f"{info.get('steps_per_epoch')})")

    def on_status(self, text: str) -> None:
        self.job._update(self.job_id, message=text, log=text)

    def on_warning(self, text: str) -> None:
        self.job._warn(self.job_id, text)

    def on_step(self, info: StepInfo) -> None:
        self.job._step(self.job_id, info)

    def on_sample(self, images: list, step: int) -> None:
        self.job._samples(self.job_id, images, step)

    def on_validation(self, step: int, loss: float) -> None:
        self.job._validation(self.job_id, step, loss)

    def on_saved(self, path: Path, final: bool) -> None:
        self.job._saved(self.job_id, path, final)

    def on_end(self, result: TrainResult) -> None:
        pass  # the thread records the result after run_training returns (and host.refresh ran)


class TrainingJob:
    """Runs at most one training; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state = _fresh()
        self._log: deque = deque(maxlen=MAX_LOG_LINES)
        self._images: list = []          # [(PIL.Image, prompt)] of the latest previews
        self._thread: Optional[threading.Thread] = None
        self._commands: Optional[Commands] = None
        self._sample_prompts = 0           # the running config's preview prompts (Sample now needs some)

    # -- control -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        with self._lock:
            return self._state["state"] in RUNNING

    def start(self, cfg: TrainConfig, host: Host) -> str:
        """Check everything that can be refused, then train in a background thread.

        Raises JobBusyError, ConfigError, HostError, DatasetError or OutputExistsError before any
        model work, so the caller shows the problem at once. Returns the job id."""
        job_id = uuid.uuid4().hex[:12]
        with self._lock:
            if self._state["state"] in RUNNING:
                raise JobBusyError()
            # claim the slot now: a second click during the checks below is refused too
            previous = self._state
            self._state = _fresh(job_id, "preparing")
        try:
            total_steps, epochs, dataset_log, memory = preflight(cfg, host)
        except BaseException:
            with self._lock:
                self._state = previous
            raise
        commands = Commands()
        with self._lock:
            self._log.clear()
            self._images = []
            self._commands = commands
            self._sample_prompts = len(cfg.sample.prompts)
            self._state.update(total_steps=total_steps, total_epochs=epochs, started_at=time.time(),
                               method=cfg.network.method, name=cfg.output_name, memory=memory,
                               message="Loading the model…")
            for line in dataset_log:
                self._log.append(line)
            self._state["version"] += 1
        self._thread = threading.Thread(target=self._run, args=(cfg, host, commands, job_id),
                                        name=f"trainer-{job_id}", daemon=True)
        self._thread.start()
        return job_id

    def stop(self) -> bool:
        """Ask the running training to stop after the current step (it still saves). False if idle."""
        with self._lock:
            if self._state["state"] not in RUNNING or self._commands is None:
                return False
            self._commands.request_stop()
            self._state["message"] = "Stopping after this step…"
            self._log.append("stop requested")
            self._state["version"] += 1
            return True

    def request_save(self) -> bool:
        """Ask the running training to write an intermediate file after the current step, named like
        the periodic step saves (`name-step00000042`). False if nothing trains."""
        return self._request("save", "Saving after this step…")

    def request_sample(self) -> bool:
        """Ask the running training for previews after the current step, made like the periodic
        ones. False if nothing trains; ValueError if this run has no preview prompts."""
        return self._request("sample", "Making previews after this step…")

    def _request(self, what: str, message: str) -> bool:
        with self._lock:
            if self._state["state"] not in RUNNING or self._commands is None:
                return False
            if what == "sample" and not self._sample_prompts:
                raise ValueError("this run has no preview prompts (sample.prompts): enter some before "
                                 "the next Start to get previews")
            getattr(self._commands, f"request_{what}")()
            self._state["message"] = message
            self._log.append(f"{what} requested")
            self._state["version"] += 1
            return True

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the current run ends (tests, CLI). True when nothing runs any more."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.running

    # -- observation ---------------------------------------------------------------------------
    def status(self, *, losses: bool = True) -> dict:
        """A JSON-safe snapshot (preview images are listed by prompt; see preview_images())."""
        with self._lock:
            s = dict(self._state)
            s["losses"] = list(s["losses"]) if losses else []
            s["val_losses"] = [list(p) for p in s["val_losses"]] if losses else []
            s["previews"] = [dict(p) for p in s["previews"]]
            s["saved"] = list(s["saved"])
            s["warnings"] = list(s["warnings"])
            s["log"] = list(self._log)
        return s

    def preview_images(self) -> list:
        """[(PIL.Image, prompt)] of the latest previews."""
        with self._lock:
            return list(self._images)

    # -- callbacks (training thread) -----------------------------------------------------------
    def _update(self, job_id: str, log: str = "", **changes) -> None:
        with self._lock:
            if self._state["job_id"] != job_id:
                return
            self._state.update(changes)
            if log:
                self._log.append(log)
            self._state["version"] += 1

    def _warn(self, job_id: str, text: str) -> None:
        with self._lock:
            if self._state["job_id"] != job_id:
                return
            self._state["warnings"] = self._state["warnings"][-19:] + [text]
            self._state["message"] = f"Warning: {text}"
            self._log.append(f"warning: {text}")
            self._state["version"] += 1

    def _step(self, job_id: str, info: StepInfo) -> None:
        with self._lock:
            s = self._state
            if s["job_id"] != job_id:
                return
            s.update(step=info.step, total_steps=info.total_steps, epoch=info.epoch,
                     total_epochs=info.total_epochs, loss=_finite(info.loss), avg_loss=_finite(info.avg_loss),
                     lr=_finite(info.lr), it_per_s=_finite(info.it_per_s), eta_s=_finite(info.eta_s))
            if s["state"] == "preparing":
                s["state"] = "training"
            s["losses"].append(_finite(info.loss))
            s["loss_version"] += 1
            s["version"] += 1

    def _validation(self, job_id: str, step: int, loss: float) -> None:
        with self._lock:
            s = self._state
            if s["job_id"] != job_id:
                return
            s["val_losses"].append([step, _finite(loss)])    # [step, loss]: JSON and the plot's second line
            s["loss_version"] += 1
            s["version"] += 1

    def _samples(self, job_id: str, images: list, step: int) -> None:
        with self._lock:
            if self._state["job_id"] != job_id:
                return
            self._images = [(img, prompt) for prompt, img in images]
            self._state["previews"] = [{"prompt": p, "step": step} for p, _ in images]
            self._state["preview_step"] = step
            self._state["preview_version"] += 1
            self._state["version"] += 1
            self._log.append(f"previews at step {step}")

    def _saved(self, job_id: str, path: Path, final: bool) -> None:
        with self._lock:
            if self._state["job_id"] != job_id:
                return
            self._state["saved"].append(str(path))
            self._log.append(f"saved {path}")
            self._state["version"] += 1

    # -- the thread ----------------------------------------------------------------------------
    def _run(self, cfg: TrainConfig, host: Host, commands: Commands, job_id: str) -> None:
        from ..train.session import run_training

        try:
            callbacks = MultiCallbacks(_JobCallbacks(self, job_id), host.progress(commands))
            result = run_training(cfg, host, callbacks=callbacks, commands=commands)
        except BaseException as e:  # noqa: BLE001 - a failed run must never leave "training" behind
            self._fail(job_id, e)
            return
        state = "stopped" if result.stopped else "done"
        if result.output_path is None:
            message = "Stopped before the first step: nothing was trained, no file was written"
            log = f"{state}: {message}"
        else:
            where = f" → {result.output_path}"
            message = ("Stopped early and saved" if result.stopped else "Done") + where
            log = f"{state}: {result.steps} steps{where}; use it as {result.prompt_usage}"
        self._update(job_id, state=state, output_path=str(result.output_path or ""),
                     prompt_usage=result.prompt_usage, finished_at=time.time(), eta_s=0.0,
                     message=message, log=log)

    def _fail(self, job_id: str, e: BaseException) -> None:
        if _is_user_error(e):
            text, detail = str(e), ""
        else:
            text = f"{type(e).__name__}: {e}"
            detail = traceback.format_exc()
            print(f"[trainer] training failed:\n{detail}", file=sys.stderr)
        self._update(job_id, state="error", error=text, message="Failed: " + text.splitlines()[0],
                     finished_at=time.time(), log="error: " + text + ("\n" + detail if detail else ""))


def _finite(x) -> Optional[float]:
    """A diverged run's NaN/inf becomes None: the status stays valid JSON."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _is_user_error(e: BaseException) -> bool:
    from ..errors import user_error_types

    return isinstance(e, user_error_types())


def preflight(cfg: TrainConfig, host: Host) -> tuple[int, int, list[str], str]:
    """Every refusal that needs no model, in the order run_training meets them.
    Returns (total steps, epochs, log lines about the dataset, the memory estimate's line)."""
    from ..train.loop import plan_steps
    from ..train.memory import estimate_note
    from ..train.session import build_dataset, check_before_model

    # the same scan as the run's (each image decoded once per change; the tab's summary has
    # usually done it already), so the step count here is the run's; the run names skipped files
    scan, _ = check_before_model(cfg, host)
    dataset = build_dataset(cfg, scan)
    _, total, epochs = plan_steps(cfg, dataset.steps_per_epoch())
    memory = estimate_note(cfg, device=host.device(), host_holds_model=not host.model_from_config,
                           num_images=dataset.num_train_samples)
    log = [f"{total} steps in {epochs} epochs", f"memory: {memory}"]
    if cfg.training.resume.strip():
        log.append(f"resuming from the training state {cfg.training.resume.strip()}")
    return total, epochs, log, memory
