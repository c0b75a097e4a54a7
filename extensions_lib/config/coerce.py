"""User values (TOML, JSON from the REST API, `--set` text, form fields) into each option's type.
A value that does not fit becomes a ConfigProblem naming the option; nothing is guessed silently."""
from __future__ import annotations

import dataclasses
import json

from .problems import ConfigProblem


def set_field(section, sname: str, name: str, value, problems: list[ConfigProblem]) -> None:
    """Set `section.name` from a user value, or add a problem (unknown option, wrong type)."""
    fields = [f.name for f in dataclasses.fields(section)]
    if name not in fields:
        problems.append(ConfigProblem(f"{sname}.{name}", value,
                                      f"unknown option; {sname} has: {', '.join(fields)}"))
        return
    # the default's type is the option's type (the dataclass annotations are strings here)
    kind = type(getattr(section, name))
    try:
        setattr(section, name, coerce(value, kind))
    except (TypeError, ValueError):
        problems.append(ConfigProblem(f"{sname}.{name}", value, f"must be {type_word(kind)}"))


def coerce(value, kind):
    """`value` as `kind` (bool, int, float, str or list); TypeError/ValueError when it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise TypeError
    if kind is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, int):
            return value
        raise TypeError
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            return float(value.strip())
        if isinstance(value, (int, float)):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if kind is list:
        if isinstance(value, str):
            # a form field or --set gives text: a JSON list, or comma-separated values
            value = json.loads(value) if value.strip().startswith("[") else [
                _num_or_str(x) for x in value.split(",") if x.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError
    return value


def _num_or_str(x: str):
    x = x.strip()
    for conv in (int, float):
        try:
            return conv(x)
        except ValueError:
            pass
    return x


def type_word(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text",
            list: "a list"}.get(kind, str(kind))
