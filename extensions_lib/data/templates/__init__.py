"""Prompt templates for embedding training, in the WebUI's format: one prompt per line, `[name]` is
replaced by the embedding's word and `[filewords]` by the image's caption.

The .txt files beside this module are the shipped templates; a template can also be any file path.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
NAME = "[name]"
FILEWORDS = "[filewords]"


class TemplateError(ValueError):
    """A template that cannot be used; the message names the template and the fix."""


def available_templates() -> list[str]:
    """Names of the shipped templates (file names without .txt), for the UI."""
    return sorted(p.stem for p in HERE.glob("*.txt"))


def resolve_template(name_or_path: str) -> Path:
    """A shipped template's name (`subject`, `style.txt`) or a path to a template file."""
    text = (name_or_path or "").strip()
    if not text:
        raise TemplateError("no template given: use one of " + ", ".join(available_templates()) + " or a file path")
    shipped = HERE / (text if text.endswith(".txt") else text + ".txt")
    if "/" not in text and "\\" not in text and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise TemplateError(f"template {text!r} is neither a shipped template ({', '.join(available_templates())}) "
                        "nor an existing file")


def load_template(name_or_path: str) -> list[str]:
    """The template's non-empty lines (a line without [name] gets the word put in front by the
    embedding method, so the word is in every training prompt)."""
    path = resolve_template(name_or_path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"template {path} cannot be read: {e}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise TemplateError(f"template {path} is empty: write one prompt per line using [name] and [filewords]")
    return lines


def fill(line: str, name: str, caption: str) -> str:
    """One template line with the word and the caption put in."""
    return line.replace(FILEWORDS, caption).replace(NAME, name)
