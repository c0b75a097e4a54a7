"""Atomic file writes: a reader (the WebUI refreshing its lists) never sees a half-written file,
and a user's existing file is replaced only when they asked for it."""
from __future__ import annotations

import errno
import os
import secrets
from typing import Any, Callable, Mapping

import torch

from .checks import check_str_metadata, check_tensor_dict, plain_legacy_copy


class OutputExistsError(FileExistsError):
    """Raised instead of overwriting a file the user did not ask us to replace."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        super().__init__(
            errno.EEXIST,
            f"{self.path} already exists; pick another output name or enable overwrite to replace it",
            self.path,
        )

    def __str__(self) -> str:  # FileExistsError's default adds "[Errno 17]" noise in UI messages
        return self.strerror


def _tmp_path_for(path: str) -> str:
    folder, base = os.path.split(path)
    # hidden and with an extension the WebUI does not list (.tmp-xxxx), so a refresh mid-write ignores it
    return os.path.join(folder, f".{base}.tmp-{secrets.token_hex(4)}")


def _create_tmp(path: str) -> str:
    for _ in range(100):
        tmp = _tmp_path_for(path)
        try:
            # created by us (O_EXCL) with the normal umask-derived mode, unlike mkstemp's 0600
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", path)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:  # write access: Windows cannot flush a read-only handle
        os.fsync(f.fileno())


def _fsync_dir(folder: str) -> None:
    # makes the rename itself durable on POSIX; directories cannot be opened on Windows
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    if not overwrite:
        # a hard link fails if the name appeared since our first check, so even a race cannot clobber it
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise OutputExistsError(path) from None
        except (OSError, AttributeError, NotImplementedError):
            pass  # file system without hard links (FAT, some network shares): fall back to replace
        else:
            os.unlink(tmp)
            return
        if os.path.lexists(path):
            raise OutputExistsError(path)
    try:
        os.replace(tmp, path)
    except PermissionError as e:
        raise PermissionError(
            e.errno, f"could not replace {path}: {e.strerror}; is it open in another program?", path
        ) from e


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[str], Any], *, overwrite: bool) -> str:
    """Write `path` by calling write_fn(tmp_path) on a temporary file in the same folder, then rename.

    Refuses (OutputExistsError) before any work when `path` exists and overwrite is False. On any
    error the temporary file is removed and an earlier file at `path` is left untouched.
    Returns the path written.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder; give a file name to write", path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)

    tmp = _create_tmp(path)
    try:
        write_fn(tmp)
        _fsync_file(tmp)
        _publish(tmp, path, overwrite)
    except BaseException:  # includes KeyboardInterrupt: never leave the temp file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)
    return path


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None,
    *,
    overwrite: bool,
) -> str:
    """Atomically write a .safetensors file. All metadata values must be str (TypeError names the key)."""
    import safetensors.torch

    check_tensor_dict(tensors)
    check_str_metadata(metadata)
    meta = dict(metadata) if metadata else None
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(dict(tensors), tmp, meta), overwrite=overwrite)


def save_torch_legacy(obj: Any, path: str | os.PathLike[str], *, overwrite: bool) -> str:
    """Atomically write a legacy (non-zip) torch pickle, the only .pt form the WebUI's safe loader accepts
    from torch >= 2.4. `obj` may hold only tensors and plain Python values (TypeError names the key path)."""
    plain = plain_legacy_copy(obj)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(plain, f, _use_new_zipfile_serialization=False)

    return atomic_write(path, write, overwrite=overwrite)
