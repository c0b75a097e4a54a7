"""WebUI entry point of the Trainer extension: registers the tab, its settings and the REST routes.

The package folder is called `extensions_lib`, a name another extension could also use: the WebUI
puts each extension's folder on sys.path only while importing that extension's scripts, and the
first package imported under a name wins for everybody. So the WebUI imports our package here from
its folder under a name of its own (all imports inside the package are relative), whatever else is
in sys.modules. Everything else (gradio widgets, the WebUI host adapter) is imported inside the
callbacks in extensions_lib/ui/webui.py.
"""
import importlib
import importlib.util
import sys
from pathlib import Path

PACKAGE = "sd_webui_trainer_extension"     # the name the WebUI process knows our package by
_FOLDER = Path(__file__).resolve().parents[1] / "extensions_lib"


def _import_package():
    if PACKAGE not in sys.modules:      # the WebUI's "Reload UI" runs this file again
        spec = importlib.util.spec_from_file_location(PACKAGE, _FOLDER / "__init__.py",
                                                      submodule_search_locations=[str(_FOLDER)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    return importlib.import_module(PACKAGE + ".ui.webui")


webui = _import_package()

try:
    from modules import script_callbacks
except ImportError:  # imported outside the WebUI (tests, tools): nothing to register with
    script_callbacks = None

if script_callbacks is not None:
    script_callbacks.on_ui_settings(webui.on_ui_settings)
    script_callbacks.on_ui_tabs(webui.on_ui_tabs)
    script_callbacks.on_app_started(webui.on_app_started)
