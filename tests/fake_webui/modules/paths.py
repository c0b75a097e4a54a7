"""Fake of modules/paths.py (1.10.1): re-exports the folders of paths_internal."""
from modules.paths_internal import models_path, script_path, data_path, extensions_dir, extensions_builtin_dir, cwd  # noqa: F401
