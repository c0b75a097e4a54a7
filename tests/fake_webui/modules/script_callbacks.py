"""Fake of modules/script_callbacks.py (1.10.1) for the callbacks an extension's scripts register.

on_*(callback, *, name=None) store ScriptCallback(script, callback, name) in callback_map under
'callbacks_<category>'; the *_callback() functions call them the way the WebUI does, catch and
report exceptions per callback, and go on:
  app_started_callback(demo, app)   demo is None with --nowebui
  model_loaded_callback(sd_model)
  ui_tabs_callback() -> list        each callback returns None or [(component, title, elem_id), ...]
  ui_train_tabs_callback(params)    params.txt2img_preview_params
  ui_settings_callback()
  script_unloaded_callback(), before_ui_callback()
Order is registration order (the real one also lets the user reorder in settings).
"""
import dataclasses
import inspect
import os
from typing import Any

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
)


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    callback_name = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique = callback_name
    for index in range(1000):
        if not any(x.name == unique for x in callbacks):
            break
        unique = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def ordered_callbacks(category):
    return list(callback_map.get('callbacks_' + category, []))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def app_started_callback(demo, app):
    for c in ordered_callbacks('app_started'):
        try:
            c.callback(demo, app)
        except Exception:
            report_exception(c, 'app_started_callback')


def app_reload_callback():
    for c in ordered_callbacks('on_reload'):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'callbacks_on_reload')


def model_loaded_callback(sd_model):
    for c in ordered_callbacks('model_loaded'):
        try:
            c.callback(sd_model)
        except Exception:
            report_exception(c, 'model_loaded_callback')


def ui_tabs_callback():
    res = []
    for c in ordered_callbacks('ui_tabs'):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, 'ui_tabs_callback')
    return res


def ui_train_tabs_callback(params: UiTrainTabParams):
    for c in ordered_callbacks('ui_train_tabs'):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'callbacks_ui_train_tabs')


def ui_settings_callback():
    for c in ordered_callbacks('ui_settings'):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'ui_settings_callback')


def script_unloaded_callback():
    for c in reversed(ordered_callbacks('script_unloaded')):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'script_unloaded')


def before_ui_callback():
    for c in reversed(ordered_callbacks('before_ui')):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'before_ui')


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for cb in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(cb)


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_before_reload(callback, *, name=None):
    add_callback(callback_map['callbacks_on_reload'], callback, name=name, category='on_reload')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_ui_train_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_train_tabs'], callback, name=name, category='ui_train_tabs')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_before_ui(callback, *, name=None):
    add_callback(callback_map['callbacks_before_ui'], callback, name=name, category='before_ui')
