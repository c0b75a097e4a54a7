"""TOML in and out: reading a config file (files written by earlier versions included), parsing one
`--set` value, and writing with tomli_w, plain or with every option's help as a comment."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .problems import ConfigError, ConfigProblem
from .schema import SECTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the WebUI ships Python 3.10 on some installs
    import tomli as tomllib

if TYPE_CHECKING:
    from .train_config import TrainConfig

HEADER = ("# Trainer training config. Train with: python -m extensions_lib train THIS_FILE.toml\n"
          "# Any option can be overridden there with --set section.key=value.\n")

# Earlier versions, without tomli-w, wrote strings with json.dumps: a character beyond U+FFFF became a
# \uD83D\uDE00 surrogate pair, which TOML does not accept. An unescaped backslash before the pair
# (an even run of backslashes) tells it from literal text.
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


class TomlWriteError(ValueError):
    """The config cannot be written as TOML (tomli-w missing)."""


class ConfigFileError(OSError):
    """The config file exists but cannot be read as text: a folder, no permission, not UTF-8.
    The message is one line naming the file and the fix."""


def read_toml(path) -> dict:
    """The tables of a TOML config file; a file that is not TOML is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigFileError(f"config {path} is a folder, not a file: give the path of a .toml config file "
                              "(write one with `python -m extensions_lib config FILE.toml`)")
    if not path.is_file():
        raise FileNotFoundError(f"Config file not found: {path}")
    text = _read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        repaired = _SURROGATE_PAIR.sub(_join_pair, text)
        if repaired != text:
            try:
                return tomllib.loads(repaired)
            except tomllib.TOMLDecodeError:
                pass
        raise ConfigError([ConfigProblem(str(path), "", f"not valid TOML: {e}")]) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"config {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                              f"{e.start}): save it as UTF-8, which TOML requires") from None
    except PermissionError:
        raise ConfigFileError(f"config {path} cannot be read: permission denied; let this user read it "
                              f"(e.g. chmod u+r) or copy it somewhere readable") from None
    except OSError as e:
        raise ConfigFileError(f"config {path} cannot be read: {e.strerror or e}; check the file") from None


def _join_pair(m: re.Match) -> str:
    high, low = int(m.group(2), 16), int(m.group(3), 16)
    return f"{m.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"


def parse_value(raw: str) -> Any:
    """One `--set` value: a TOML value (1e-4, true, ["a", "b"]), else the text as it is."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def dumps_toml(data: dict) -> str:
    """TOML of a config dict (TrainConfig.to_dict()). None is left out: TOML has no null, and a
    missing option reads back as its default."""
    tomli_w = _tomli_w()
    clean = {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
             for k, v in data.items() if v is not None}
    try:
        return tomli_w.dumps(clean)
    except TypeError:
        raise ConfigError(_unwritable(clean)) from None


def commented_toml(cfg: "TrainConfig") -> str:
    """The config as TOML with a header, and every option's help text and allowed values as a
    comment above it (tomli_w writes no comments, so each option is written on its own)."""
    tomli_w = _tomli_w()
    parts = [HEADER, f"version = {cfg.version}\n"]
    problems: list[ConfigProblem] = []
    for sname, cls in SECTIONS.items():
        parts.append(f"\n[{sname}]\n")
        section = getattr(cfg, sname)
        for f in dataclasses.fields(cls):
            value = getattr(section, f.name)
            m = f.metadata
            allowed = f" ({', '.join(map(str, m['choices']))})" if m.get("choices") else ""
            parts.append(f"# {m.get('help', '')}{allowed}\n")
            if value is None:
                parts.append(f"# {f.name} is not set\n")
                continue
            try:
                parts.append(tomli_w.dumps({f.name: value}))
            except TypeError:
                problems.append(_problem(f"{sname}.{f.name}", value))
    if problems:
        raise ConfigError(problems)
    return "".join(parts)


def _tomli_w():
    try:
        import tomli_w
    except ImportError:
        raise TomlWriteError("Writing a TOML config needs the tomli-w package: pip install tomli-w") from None
    return tomli_w


def _unwritable(data: dict) -> list[ConfigProblem]:
    import tomli_w

    problems = []
    for sname, section in data.items():
        items = section.items() if isinstance(section, dict) else [(None, section)]
        for name, value in items:
            try:
                tomli_w.dumps({"v": value})
            except TypeError:
                problems.append(_problem(f"{sname}.{name}" if name else sname, value))
    return problems


def _problem(field: str, value) -> ConfigProblem:
    return ConfigProblem(field, value, "cannot be written to TOML: use text, a number, true/false or a list of them")
