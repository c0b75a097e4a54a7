"""A preview prompt line with its own settings, as sd-scripts' prompt files write them.

A prompt line may carry its own settings the way sd-scripts' prompt files do, after the prompt:
`a photo of sks dog --n blurry --w 512 --h 768 --s 30 --l 6.5 --d 42` (negative prompt, width,
height, steps, CFG scale, seed). An option is `--name` after a space; `--` inside a word ("well--lit")
is prompt text. What a line leaves out comes from the sample.* settings; a line's own seed is used
as is, otherwise prompt i gets sample.seed + i.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from .schema import SampleConfig

# an option starts with "--" at the start of the line or after whitespace, its name runs to the next space
_OPTION = re.compile(r"(?:^|(?<=\s))--(\S+)")
# sd-scripts options that pick things the Trainer does not have (a sampler, ControlNet, flow models...)
_SD_SCRIPTS_ONLY = {"ss": "the sampler; previews always sample with DDIM", "g": "a second guidance scale; use --l",
                    "cn": "a ControlNet image", "ctr": "CFG truncation", "rcfg": "CFG renormalisation",
                    "fs": "a flow shift"}


class PromptLineError(ValueError):
    """A preview prompt line whose options cannot be used; the message names the line and the option."""


@dataclass(frozen=True)
class PromptSettings:
    prompt: str
    negative: str
    width: int
    height: int
    steps: int
    cfg_scale: float
    seed: int


def _limits(name: str) -> tuple:
    meta = next(f.metadata for f in fields(SampleConfig) if f.name == name)
    return meta["min"], meta["max"]


def _int_option(option: str, value: str, field: str, multiple: int = 1) -> int:
    low, high = _limits(field)
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--{option} expects a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"--{option} {number} is outside {low}..{high}")
    if number % multiple:
        down = max(low, number - number % multiple)
        raise ValueError(f"--{option} {number} is not a multiple of {multiple}; use e.g. --{option} {down}")
    return number


def _float_option(option: str, value: str, field: str) -> float:
    low, high = _limits(field)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--{option} expects a number like 7.5, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"--{option} expects a finite number like 7.5, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"--{option} {value} is outside {low}..{high}")
    return number


# option name -> (PromptSettings field, reader of the option's text)
_READERS = {
    "n": ("negative", lambda v: v),
    "w": ("width", lambda v: _int_option("w", v, "width", 8)),
    "h": ("height", lambda v: _int_option("h", v, "height", 8)),
    "s": ("steps", lambda v: _int_option("s", v, "steps")),
    "l": ("cfg_scale", lambda v: _float_option("l", v, "cfg_scale")),
    "d": ("seed", lambda v: _int_option("d", v, "seed")),
}
_EXAMPLES = {"w": "--w 512", "h": "--h 512", "s": "--s 20", "l": "--l 7.5", "d": "--d 42"}


def _shown(line: str) -> str:
    return repr(line if len(line) <= 120 else line[:117] + "...")


def parse_prompt_line(line: str, *, negative: str = "", width: int = 512, height: int = 512, steps: int = 20,
                      cfg_scale: float = 7.0, seed: int = 1234) -> PromptSettings:
    """The prompt of a sample.prompts line and its settings: the line's own --n/--w/--h/--s/--l/--d,
    the keyword arguments (the sample.* values) for the rest. PromptLineError for a bad line."""
    def refuse(why: str) -> PromptLineError:
        return PromptLineError(f"sample.prompts line {_shown(line)}: {why}")

    matches = list(_OPTION.finditer(line))
    prompt = line[:matches[0].start()] if matches else line
    values = {}
    for m, after in zip(matches, matches[1:] + [None]):
        option = m.group(1).lower()
        text = line[m.end():after.start() if after else len(line)].strip()
        if option in _SD_SCRIPTS_ONLY:
            raise refuse(f"--{option} ({_SD_SCRIPTS_ONLY[option]}) is an sd-scripts option that Trainer "
                         "previews do not use; remove it")
        if option not in _READERS:
            raise refuse(f"unknown option --{m.group(1)}; the options are --n (negative prompt), --w (width), "
                         "--h (height), --s (steps), --l (CFG scale), --d (seed); to keep '--' as prompt text, "
                         "put no space before it")
        field, read = _READERS[option]
        if field in values:
            raise refuse(f"--{option} is given twice; keep one")
        if not text and option != "n":     # "--n" alone: no negative prompt for this line
            raise refuse(f"--{option} needs a value, e.g. {_EXAMPLES[option]}")
        try:
            values[field] = read(text)
        except ValueError as e:
            raise refuse(str(e)) from None
    prompt = prompt.strip()
    if not prompt:
        raise refuse("the prompt before the options is empty; write the prompt first, then the options")
    settings = dict(negative=negative, width=width, height=height, steps=steps, cfg_scale=cfg_scale, seed=seed)
    settings.update(values)
    return PromptSettings(prompt=prompt, **settings)


def check_prompt_line(line: str) -> None:
    """Raise PromptLineError when a sample.prompts line's options are unusable (for the config check,
    so a bad line is refused before training starts rather than at the first preview)."""
    parse_prompt_line(line)
