"""Refusals before any model work: an output folder that cannot take the files, files the run would
write that already exist, a disk too small for every save, oversized metadata text, a bad caption
extension, an unreadable dataset folder, a giant hypernetwork, a read-only latent cache folder.

Each case goes through the entry the CLI uses (run_training) and the one the tab and REST API use
(TrainingJob.start), on a host whose model cannot be borrowed, and checks that nothing was written.
Read-only folders are simulated (os.access and a failing write), because tests may run as root,
where chmod does not stop a write; a real chmod is added when not root."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import make_images, quick_config

from extensions_lib.config import ConfigError
from extensions_lib.data.folders import DatasetError
from extensions_lib.export.atomic import OutputExistsError
from extensions_lib.hosts.base import Host
from extensions_lib.train.events import Callbacks
from extensions_lib.train.session import check_before_model, run_training
from extensions_lib.ui.job import TrainingJob

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class NoModelHost(Host):
    """A host whose model must never be needed: every case here is refused before it."""
    name = "test"

    def __init__(self, default_out: Path):
        self.default_out = default_out
        self.borrowed = False

    def output_dir(self, kind, cfg):
        return Path(cfg.output.output_dir) if cfg.output.output_dir else self.default_out

    @contextmanager
    def borrow_bundle(self, cfg):
        self.borrowed = True
        raise AssertionError("the model was built although the run should have been refused")
        yield  # pragma: no cover


class Warnings(Callbacks):
    def __init__(self):
        self.warnings = []

    def on_warning(self, text):
        self.warnings.append(text)


@pytest.fixture
def data(tmp_path):
    make_images(tmp_path / "data" / "2_sks", n=2, size=64)
    return tmp_path / "data"


def tree(root: Path) -> set:
    return {(str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*")}


def refused(cfg, host, root: Path, error: type) -> list[str]:
    """The messages the CLI's and the tab's/REST's entries refuse `cfg` with; asserts that no model
    was borrowed and that nothing under `root` changed."""
    before = tree(root)
    messages = []
    for start in (lambda: run_training(cfg, host), lambda: TrainingJob().start(cfg, host)):
        with pytest.raises(error) as e:
            start()
        messages.append(str(e.value))
    assert not host.borrowed
    assert tree(root) == before
    return messages


def deny_access(monkeypatch, *folders: Path):
    """Simulate read-only folders: os.access says no and creating a file in them fails."""
    denied = {str(Path(f).resolve()) for f in folders}
    real_access, real_mkstemp = os.access, __import__("tempfile").mkstemp

    def access(path, mode, *a, **kw):
        if str(Path(path).resolve()) in denied and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **kw)

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and str(Path(dir).resolve()) in denied:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*a, dir=dir, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)


# -- 1. the output folder ------------------------------------------------------------------------
def test_output_folder_that_is_a_file_or_cannot_be_created(tmp_path, data):
    host = NoModelHost(tmp_path / "default")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cfg = quick_config(data, blocker)
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "output.output_dir" in m and str(blocker) in m and "is a file" in m
    cfg = quick_config(data, blocker / "sub")
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "output.output_dir" in m and "cannot be created" in m and str(blocker) in m
    # the host's own folder (output.output_dir empty) is checked the same way
    host = NoModelHost(blocker)
    cfg = quick_config(data, "")
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "output.output_dir is empty" in m and str(blocker) in m


def test_read_only_output_folder(tmp_path, data, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, out)
    with monkeypatch.context() as mp:
        deny_access(mp, out)
        for m in refused(cfg, host, tmp_path, ConfigError):
            assert "output.output_dir" in m and str(out) in m and "read-only" in m
    # a folder to be created under a read-only parent
    cfg = quick_config(data, out / "new")
    with monkeypatch.context() as mp:
        deny_access(mp, out)
        for m in refused(cfg, host, tmp_path, ConfigError):
            assert "cannot be created" in m and str(out) in m
    # the write probe alone (a read-only mount or ACL that os.access does not see)
    cfg = quick_config(data, out)
    with monkeypatch.context() as mp:
        real = __import__("tempfile").mkstemp
        mp.setattr("tempfile.mkstemp", lambda *a, dir=None, **kw: (_ for _ in ()).throw(
            OSError(30, "Read-only file system")) if dir is not None and Path(dir) == out else real(*a, dir=dir, **kw))
        for m in refused(cfg, host, tmp_path, ConfigError):
            assert "not writable" in m and "Read-only file system" in m
    if not IS_ROOT:
        out.chmod(0o555)
        try:
            for m in refused(cfg, host, tmp_path, ConfigError):
                assert "read-only" in m and str(out) in m
        finally:
            out.chmod(0o755)


# -- 2. files the run would write ----------------------------------------------------------------
def test_existing_intermediate_files_are_named_and_a_users_card_files_are_not_clashes(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    host = NoModelHost(tmp_path / "default")
    # 2 images x 2 repeats, batch 1: 4 steps per epoch, 2 epochs = 8 steps
    cfg = quick_config(data, out, output__save_every_n_epochs=1)
    (out / "test_lora-000001.safetensors").write_bytes(b"an earlier run's epoch file")
    (out / "test_lora.json").write_text("{}")      # the user's card files: kept by the run, not refused
    (out / "test_lora.png").write_bytes(b"a picture")
    for m in refused(cfg, host, tmp_path, OutputExistsError):
        assert "test_lora-000001.safetensors" in m and "output.overwrite" in m
        assert "test_lora.json" not in m and "test_lora.png" not in m
    for f in out.iterdir():
        f.unlink()

    cfg = quick_config(data, out, output__save_every_n_steps=3)
    (out / "test_lora-step00000006.safetensors").write_bytes(b"x")
    for m in refused(cfg, host, tmp_path, OutputExistsError):
        assert "test_lora-step00000006.safetensors" in m
    # names the run does not write are no clash: step 8 is the last (the final file), step 4 is
    # not a multiple of 3, epoch 2 is the last epoch
    (out / "test_lora-step00000006.safetensors").unlink()
    for name in ("test_lora-step00000008.safetensors", "test_lora-step00000004.safetensors",
                 "test_lora-000002.safetensors"):
        (out / name).write_bytes(b"x")
    check_before_model(cfg, host)
    # overwrite on: the same clashes are allowed
    (out / "test_lora-step00000003.safetensors").write_bytes(b"x")
    cfg.output.overwrite = True
    check_before_model(cfg, host)


# -- 3. disk space -------------------------------------------------------------------------------
def test_not_enough_disk_space_is_refused_with_numbers(tmp_path, data, monkeypatch):
    out = tmp_path / "out"
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, out, network__dim=128, output__save_every_n_steps=1)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=50 * 1024 * 1024))
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "output.output_dir" in m and "50.0 MiB free" in m and "8 save(s)" in m
        assert "save_every_n_steps" in m
    # the same run with room to spare starts (and is stopped only by the test host)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=100 * 1024 ** 3))
    check_before_model(cfg, host)


# -- 4. metadata text ----------------------------------------------------------------------------
@pytest.mark.parametrize("field, size", [("comment", 64 * 1024 + 1), ("trigger_words", 4 * 1024 + 1)])
def test_oversized_comment_and_trigger_words(tmp_path, data, field, size):
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, tmp_path / "out", **{f"output__{field}": "x" * size})
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert f"output.{field}" in m and "KiB" in m and len(m) < 2000   # the value is shortened
    setattr(cfg.output, field, "x" * (size - 1))
    check_before_model(cfg, host)


# -- 5. caption extension ------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["", ".", "sub/.txt", "..\\x.txt"])
def test_bad_caption_extension(tmp_path, data, ext):
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, tmp_path / "out", data__caption_extension=ext)
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "data.caption_extension" in m and ".txt" in m


# -- 6. unreadable dataset folders ---------------------------------------------------------------
@pytest.mark.parametrize("which", ["train_dir", "subfolder"])
def test_unreadable_dataset_folder(tmp_path, data, monkeypatch, which):
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, tmp_path / "out")
    locked = data if which == "train_dir" else data / "2_sks"
    real = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    with monkeypatch.context() as mp:
        mp.setattr(Path, "iterdir", iterdir)
        for m in refused(cfg, host, tmp_path, DatasetError):
            assert str(locked) in m and "cannot be read" in m and "permission" in m
    if not IS_ROOT:
        locked.chmod(0o000)
        try:
            for m in refused(cfg, host, tmp_path, DatasetError):
                assert str(locked) in m and "cannot be read" in m
        finally:
            locked.chmod(0o755)


# -- 7. hypernetwork size ------------------------------------------------------------------------
def test_giant_hypernetwork_layer_is_refused(tmp_path, data):
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, tmp_path / "out", "hypernetwork", hypernetwork__layer_structure=[1, 1000000, 1])
    for m in refused(cfg, host, tmp_path, ConfigError):
        assert "hypernetwork.layer_structure" in m and "16" in m
    cfg.hypernetwork.layer_structure = [1, 16, 1]
    check_before_model(cfg, host)


# -- 8. latent cache on a read-only dataset folder -----------------------------------------------
def test_read_only_latent_cache_falls_back_to_memory_with_a_warning(tmp_path, data, monkeypatch):
    """The disk cache only speeds up the next run; the run itself trains the same from memory, so it
    goes on with a warning that names the option and the folder (before the model is loaded)."""
    host = NoModelHost(tmp_path / "default")
    cfg = quick_config(data, tmp_path / "out", data__cache_latents=True, data__cache_latents_to_disk=True)
    deny_access(monkeypatch, data)
    callbacks = Warnings()
    with pytest.raises(AssertionError, match="model was built"):
        run_training(cfg, host, callbacks=callbacks)    # the test host stops it at the model
    assert any("data.cache_latents_to_disk" in w and str(data) in w and "memory" in w
               for w in callbacks.warnings), callbacks.warnings
    assert not (data / ".latent_cache").exists()
