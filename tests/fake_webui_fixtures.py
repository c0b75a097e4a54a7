"""Set-up shared by the tests that run against the fake WebUI (tests/fake_webui).

Importing this module puts the fake first on sys.path, so `modules` is the fake AUTOMATIC1111 1.10.1;
a test module imports it before any `modules` import and takes the fixtures by name:

    from fake_webui_fixtures import model_loaded, webui  # noqa: F401  (pytest fixtures)

Tests of behaviour without a WebUI never import it, so the fake stays off their path.
"""
import sys
import types
from pathlib import Path

import pytest

FAKE = str(Path(__file__).resolve().parent / "fake_webui")
if FAKE not in sys.path:
    sys.path.insert(0, FAKE)

import fake_webui_control as fw  # noqa: E402
from modules import sd_models  # noqa: E402

from extensions_lib.hosts import a1111 as a1111_mod  # noqa: E402


@pytest.fixture(autouse=True)
def webui(tmp_path):
    """A fresh fake WebUI for every test; afterwards no lock may still be held."""
    cmd_opts = fw.reset(tmp_path / "webui")
    yield cmd_opts
    assert not a1111_mod._TRAINING.locked(), "a test left the training lock held"
    fw.reset(tmp_path / "webui")      # raises if queue_lock is still held


@pytest.fixture
def model_loaded():
    """A stand-in for shared.sd_model: txt2img and the captioners need one loaded, and only read it."""
    sd_models.model_data.set_sd_model(types.SimpleNamespace(sd_checkpoint_info=None, sd_model_hash=None))
    sd_models.model_data.was_loaded_at_least_once = True
