"""The few places where gradio 3.41 (AUTOMATIC1111 1.10) and gradio 4.x (Forge) differ.

Everything else in the UI is written once against the API both versions share.
"""
from __future__ import annotations

import inspect
import os
from functools import lru_cache
from typing import Any

# offline machines: no version check or analytics call at import/launch time
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

GRADIO_MAJOR = int(gr.__version__.split(".")[0])


@lru_cache(maxsize=None)
def _accepted(cls) -> frozenset:
    return frozenset(inspect.signature(cls.__init__).parameters)


def make(cls, **kwargs) -> Any:
    """Create a component, dropping keyword arguments this gradio version does not know
    (e.g. Accordion(elem_classes=) exists only in 4.x, Image(show_fullscreen_button=) only later)."""
    names = _accepted(cls)
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def js(code: str) -> dict:
    """Keyword for client-side code on an event: `_js=` in gradio 3, `js=` in 4."""
    return {"_js": code} if GRADIO_MAJOR < 4 else {"js": code}


def update(**kwargs) -> dict:
    """A partial update of a component (no arguments = leave it as it is)."""
    return gr.update(**kwargs)


def no_change() -> dict:
    return gr.update()


def file_path(value) -> str | None:
    """A gr.File input as a path: gradio 3 hands a tempfile wrapper (.name), gradio 4 a str."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        if value is None:
            return None
    if isinstance(value, dict):  # gradio 4 FileData-like dicts
        return value.get("path") or value.get("name")
    return getattr(value, "name", None) or str(value)


def file_kwargs() -> dict:
    return {"type": "file"} if GRADIO_MAJOR < 4 else {"type": "filepath"}


def launch_kwargs(blocks, **kwargs) -> dict:
    names = frozenset(inspect.signature(blocks.launch).parameters)
    return {k: v for k, v in kwargs.items() if k in names}


def queue(blocks):
    """Enable the queue that `every=` polling needs (gradio 3 needs it explicitly; 4 always has one)."""
    if GRADIO_MAJOR < 4:
        return blocks.queue(concurrency_count=8)
    return blocks.queue(default_concurrency_limit=8)


def launch_failure_hint() -> str:
    """Why a launch failed, when it is the known clash of this gradio with its web stack: gradio
    3.41/4.40 render pages with starlette's old TemplateResponse(name, context), which starlette 1.x
    no longer accepts (the page answers 500 and launch says localhost is unreachable)."""
    try:
        from starlette.templating import Jinja2Templates
        import fastapi
        import starlette

        params = list(inspect.signature(Jinja2Templates.TemplateResponse).parameters)[1:2]
    except (ImportError, TypeError, ValueError):
        return ""
    if params == ["request"]:
        return (f"gradio {gr.__version__} cannot render its page with starlette {starlette.__version__} "
                f"(fastapi {fastapi.__version__}): install the versions the WebUI pins, e.g. "
                "fastapi==0.104.1 pydantic==2.8.2 httpx==0.24.1 for gradio 4.40 (Forge), "
                "fastapi==0.94.0 for gradio 3.41 (AUTOMATIC1111)")
    return ""
