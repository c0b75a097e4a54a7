"""Fake of modules/errors.py (1.10.1): report()/display()/record_exception() print to stderr like the
real ones; the fake also keeps what was reported in `reported` so tests can assert on it."""
import sys
import traceback

reported: list = []


def report(message: str, *, exc_info: bool = False) -> None:
    text = message
    if exc_info:
        text += "\n" + traceback.format_exc()
    reported.append(text)
    print(text, file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    reported.append(f"{task}: {type(e).__name__}: {e}")
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(e, file=sys.stderr)


def record_exception():
    reported.append(traceback.format_exc())
