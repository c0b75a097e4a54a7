"""One dataset preparation at a time, shared by the tab and the REST API.

REST can wait for its preparation (`run`) or start it in the background (`start`) and poll
`status()`: captioning thousands of pictures would otherwise keep one HTTP request open for as
long. The tab starts it too and shows the status while it waits. `start` checks the request before it returns, so a field a user got
wrong is refused at once; only what happens while working (a captioner that cannot load, a
stop) ends up in the status.
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Optional

from ..errors import user_error_types
from ..hosts.base import Host
from ..prepare.run import CheckedRequest, PrepareReport, PrepareRequest, check, run_prepare

STATES = ("idle", "running", "done", "stopped", "error")


class PrepareBusyError(RuntimeError):
    """A preparation while another one runs."""

    def __init__(self):
        super().__init__("a preparation is already running: wait for it or stop it first")


def report_dict(report: PrepareReport) -> dict:
    """What REST answers of a finished preparation."""
    return {"folder": str(report.folder), "images": report.images, "captioned": report.captioned,
            "skipped": [[str(p), reason] for p, reason in report.skipped],
            "class_dir": str(report.class_dir) if report.class_dir else "",
            "class_images_made": report.class_images_made, "class_images_reused": report.class_images_reused,
            "stopped": report.stopped, "summary": report.summary()}


class PrepareJob:
    def __init__(self):
        self._lock = threading.Lock()       # guards _status; its state "running" is the one-at-a-time rule
        self._stop = threading.Event()
        self._status = {"state": "idle", "message": "", "error": "", "report": None,
                        "started_at": None, "finished_at": None}
        self._run = 0                       # numbers the preparations, so a caller finds its own report
        self._report: Optional[PrepareReport] = None

    # -- running ----------------------------------------------------------------------------------
    def run(self, req: PrepareRequest, host: Host) -> PrepareReport:
        """Prepare and wait for the end; user errors are raised (and kept in the status)."""
        self._claim()
        return self._work(req, host, self._check(req, host))

    def start(self, req: PrepareRequest, host: Host) -> int:
        """Check the request, then prepare in a daemon thread; returns the run's number (for
        `result`). Raises PrepareBusyError, or the request's refusal (nothing written), before
        returning."""
        run = self._claim()
        checked = self._check(req, host)
        threading.Thread(target=self._work_quietly, args=(req, host, checked), name="trainer-prepare",
                         daemon=True).start()
        return run

    def stop(self) -> bool:
        """Ask a running preparation to stop after the current picture (finished files are kept)."""
        with self._lock:
            if self._status["state"] != "running":
                return False
            self._stop.set()
            self._status["message"] = "stopping after the current picture"
            return True

    # -- observing --------------------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return dict(self._status)

    def result(self, run: int) -> tuple[dict, Optional[PrepareReport]]:
        """(status, report) of preparation number `run`; the report is None until it ended well, or
        when another preparation has started since."""
        with self._lock:
            return dict(self._status), (self._report if run == self._run else None)

    # -- inside -----------------------------------------------------------------------------------
    def _claim(self) -> int:
        with self._lock:
            if self._status["state"] == "running":
                raise PrepareBusyError()
            self._stop.clear()
            self._run += 1
            self._report = None
            self._status = {"state": "running", "message": "starting", "error": "", "report": None,
                            "started_at": time.time(), "finished_at": None}
            return self._run

    def _check(self, req: PrepareRequest, host: Host) -> CheckedRequest:
        """The claimed preparation's request checked; a refusal ends it (in the status) and is raised."""
        try:
            return check(req, host)
        except BaseException as e:
            self._finish(error=str(e) or type(e).__name__)
            raise

    def _work(self, req: PrepareRequest, host: Host, checked: CheckedRequest) -> PrepareReport:
        """Run the claimed, checked preparation; it ends (not running any more) whatever happens."""
        try:
            report = run_prepare(req, host, on_status=lambda text: self._set(message=text),
                                 should_stop=self._stop.is_set, checked=checked)
        except BaseException as e:
            self._finish(error=str(e) or type(e).__name__)
            raise
        self._finish(report=report)
        return report

    def _work_quietly(self, req: PrepareRequest, host: Host, checked: CheckedRequest) -> None:
        try:
            self._work(req, host, checked)
        except user_error_types():
            pass                              # in the status; nobody waits for the exception
        except Exception:  # noqa: BLE001 - a bug: in the status and on stderr, never a dead thread only
            traceback.print_exc()

    def _finish(self, *, report: Optional[PrepareReport] = None, error: str = "") -> None:
        if error:
            state, message = "error", error
        else:
            state, message = ("stopped" if report.stopped else "done"), report.summary()
        # one update: whoever sees the end can start the next preparation at once
        with self._lock:
            self._report = report
            self._status.update(state=state, message=message, error=error, finished_at=time.time(),
                                report=report_dict(report) if report else None)

    def _set(self, **values) -> None:
        with self._lock:
            self._status.update(values)
