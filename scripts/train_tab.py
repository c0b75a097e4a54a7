"""WebUI entry point of the Train extension: registers the tab, its settings and the REST routes.

The extension folder is on sys.path only while the WebUI imports this file, so the package is
imported here, at the top; everything else (gradio widgets, the WebUI host adapter) is imported
inside the callbacks in extensions_lib/ui/webui.py.
"""
from extensions_lib.ui import webui

try:
    from modules import script_callbacks
except ImportError:  # imported outside the WebUI (tests, tools): nothing to register with
    script_callbacks = None

if script_callbacks is not None:
    script_callbacks.on_ui_settings(webui.on_ui_settings)
    script_callbacks.on_ui_tabs(webui.on_ui_tabs)
    script_callbacks.on_app_started(webui.on_app_started)
