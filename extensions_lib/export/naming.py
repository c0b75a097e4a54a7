"""Output names and file names. A name must be a safe single file name on Windows, macOS and Linux,
because it becomes `<name>.safetensors` in the WebUI's model folders and the word used in prompts."""
from __future__ import annotations

import os

MAX_NAME_LENGTH = 100
_RESERVED_CHARS = '<>:"/\\|?*'
_WINDOWS_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)
}
_MODEL_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin", ".json", ".png")
_ALLOWED = (
    f"use 1-{MAX_NAME_LENGTH} characters: letters, digits, spaces, '-', '_', '.' and the like; "
    f"no path separators or any of {_RESERVED_CHARS}, no control characters, no Windows device names "
    "(CON, PRN, AUX, NUL, COM1-9, LPT1-9), no leading dot, no leading or trailing space, no trailing dot, "
    "and no file extension"
)


def _problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"it is {len(name)} characters long"
    if name in (".", ".."):
        return "it names a folder"
    bad = sorted({c for c in name if c in _RESERVED_CHARS or ord(c) < 32 or ord(c) == 127})
    if bad:
        return "it contains " + ", ".join(repr(c) for c in bad)
    if name.startswith("."):
        return "it starts with a dot (a hidden file)"
    if name != name.strip():
        return "it starts or ends with whitespace"
    if name.endswith("."):
        return "it ends with a dot"
    # Windows refuses device names even with an extension: "con.safetensors" cannot be created
    if name.split(".")[0].rstrip().upper() in _WINDOWS_DEVICE_NAMES:
        return "it is a reserved Windows device name"
    if name.lower().endswith(_MODEL_EXTENSIONS):
        return "it ends with a file extension, which is added for you"
    return None


def validate_output_name(name: object, field: str = "output.name") -> str | None:
    """None when `name` is usable as an output name, else an error message naming `field` (the
    option the name comes from), the value and what is allowed."""
    if not isinstance(name, str):
        return f"{field} must be text, got {type(name).__name__} {name!r}"
    problem = _problem(name)
    if problem is None:
        return None
    return f"{field} {name!r} is not allowed: {problem}; {_ALLOWED}"


def output_path(
    folder: str | os.PathLike[str],
    name: str,
    *,
    epoch: int | None = None,
    step: int | None = None,
    best: bool = False,
    ext: str = ".safetensors",
) -> str:
    """`<folder>/<name><ext>` for the final file; intermediate saves follow sd-scripts
    (library/train_util.py EPOCH_FILE_NAME / STEP_FILE_NAME): `<name>-000002` for epoch 2,
    `<name>-step00000500` for step 500."""
    error = validate_output_name(name)
    if error:
        raise ValueError(error)
    if not ext.startswith(".") or len(ext) < 2 or any(c in ext for c in _RESERVED_CHARS):
        raise ValueError(f"ext must look like '.safetensors', got {ext!r}")
    if sum((epoch is not None, step is not None, bool(best))) > 1:
        raise ValueError("give one of epoch, step or best for an intermediate save")
    for field, value in (("epoch", epoch), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{field} must be a non-negative int, got {value!r}")
    if epoch is not None:
        stem = f"{name}-{epoch:06d}"
    elif step is not None:
        stem = f"{name}-step{step:08d}"
    elif best:
        stem = f"{name}-best"    # the lowest validation loss so far (output.keep_best_validation)
    else:
        stem = name
    return os.path.join(os.fspath(folder), stem + ext)
