"""Reading a REST request's JSON body safely: bounded in size and depth, numbers finite.

Python's json reads NaN, Infinity and 1e999, which no option accepts; they are refused by the field
that holds them. Depth is checked without recursion, so a hostile body cannot exhaust the stack.
"""
import json
import math
from typing import Any

from fastapi import Request

MAX_BODY_BYTES = 1 << 20     # a config is a few KiB; prompts lists included, far below this
MAX_DEPTH = 16               # a config is sections -> options -> lists


class BodyError(Exception):
    """A request body refused before it is read as a config: HTTP status and JSON reply."""

    def __init__(self, status: int, body: dict):
        super().__init__(body["error"])
        self.status, self.body = status, body


class _NonFinite:
    """Stands in for NaN / Infinity / a number too large for a float while the body is parsed, so the
    field holding it can be named."""

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str):
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


async def read_json_body(request: Request) -> Any:
    """The request's JSON, bounded in size and depth, with only finite numbers; BodyError otherwise."""
    too_large = BodyError(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes; "
                                         "a training config is a few KiB"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise BodyError(422, {"error": f"the body is nested too deeply; a config is sections of options "
                                       f"(at most {MAX_DEPTH} levels)"}) from None
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise BodyError(400, {"error": f"the body must be JSON (a TrainConfig as nested sections): {e}"}) from None
    _check_values(data)
    return data


def _check_values(data: Any) -> None:
    """Walk the parsed body without recursion: refuse a non-finite number by its field, and depth."""
    todo = [(data, "", 1)]
    while todo:
        value, where, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise BodyError(422, {"error": f"{where or 'the body'} is nested more than {MAX_DEPTH} levels deep; "
                                           "a config is sections of options"})
        if isinstance(value, _NonFinite):
            field = where or "the body"
            raise BodyError(422, {"error": f"{field} = {value.text}: not a finite number; give a number such "
                                           "as 1e-4 (NaN and Infinity are not accepted)",
                                  "problems": [{"field": field, "value": value.text,
                                                "allowed": "a finite number"}]})
        if isinstance(value, dict):
            todo += [(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()]
        elif isinstance(value, list):
            todo += [(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]


async def read_config_body(request: Request) -> dict:
    data = await read_json_body(request)
    if not isinstance(data, dict):
        raise BodyError(422, {"error": "the body must be a JSON object of config sections, "
                                       "e.g. {\"data\": {\"train_dir\": ...}}"})
    return data
