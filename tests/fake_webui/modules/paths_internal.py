"""Fake of modules/paths_internal.py (1.10.1).

Real: script_path is the WebUI root, data_path comes from --data-dir (default: the WebUI root),
models_path is <data_path>/models unless --models-dir. Fake: data_path is FAKE_WEBUI_DATA_DIR or a
fresh temporary folder, so tests never write next to the code; fake_webui_control.reset() moves it.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional


def normalized_filepath(filepath):
    return str(Path(filepath).absolute())


cwd = os.getcwd()
modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)

data_path = os.environ.get("FAKE_WEBUI_DATA_DIR")
if not data_path:
    data_path = tempfile.mkdtemp(prefix="fake-webui-")
    atexit.register(shutil.rmtree, data_path, True)    # a test run leaves no folders behind
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file


def set_data_path(path: str, models_dir: Optional[str] = None) -> None:
    """Fake-only: point every data folder at `path` (what --data-dir/--models-dir do at start)."""
    global data_path, models_path, extensions_dir, default_output_dir
    data_path = os.path.abspath(path)
    models_path = os.path.abspath(models_dir) if models_dir else os.path.join(data_path, "models")
    extensions_dir = os.path.join(data_path, "extensions")
    default_output_dir = os.path.join(data_path, "outputs")
    from modules import paths
    paths.data_path, paths.models_path, paths.extensions_dir = data_path, models_path, extensions_dir
