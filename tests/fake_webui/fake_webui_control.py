"""Test-side controls of the fake WebUI (no real WebUI counterpart).

    import fake_webui_control as fw
    fw.reset(tmp_path)                  # fresh state, every data folder under tmp_path
    fw.load_model(make_fake_sd_model(sd, tok))   # as the WebUI after loading a checkpoint
    fw.load_extension_scripts(repo_root)         # import <ext>/scripts/*.py the way the WebUI does
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

FAKE_ROOT = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(FAKE_ROOT))


def reset(data_dir: Optional[str] = None, argv: Optional[list] = None, extensions: Optional[list] = None):
    """Bring every fake module back to a just-started WebUI with no model loaded.

    data_dir: where models/Lora, embeddings, models/hypernetworks, outputs go (created);
    argv: command-line options (e.g. ["--trainer-disable-api"]); extensions: folders whose preload.py
    runs (default: this repository). Returns shared.cmd_opts.
    """
    from modules import (call_queue, deepbooru, devices, errors, interrogate, launch_utils, paths_internal, processing,
                         progress, script_callbacks, sd_hijack, sd_models, sd_vae, shared, shared_cmd_options,
                         shared_items)
    from modules.textual_inversion import autocrop
    import networks

    if data_dir is not None:
        paths_internal.set_data_path(str(data_dir))
    cmd_opts = shared_cmd_options.rebuild(argv or [], extensions)
    sd_models.model_path = os.path.abspath(os.path.join(paths_internal.models_path, "Stable-diffusion"))
    for d in (cmd_opts.lora_dir, cmd_opts.embeddings_dir, cmd_opts.hypernetwork_dir, sd_models.model_path):
        os.makedirs(d, exist_ok=True)

    shared._initialize()  # opts and state are reset in place: `from modules.shared import opts` stays valid
    shared.hypernetworks = {}
    shared.loaded_hypernetworks = []
    shared_items.reload_hypernetworks_calls = 0
    script_callbacks.clear_callbacks()
    progress.reset()
    processing.reset()
    sd_models.reset()
    sd_vae.loaded_vae_file = None
    sd_vae.base_vae = None
    sd_vae.checkpoint_info = None
    sd_hijack.reset()
    networks.reset()
    launch_utils.reset()
    interrogate.reset()
    deepbooru.reset()
    autocrop.reset()
    errors.reported.clear()
    devices.torch_gc_calls = 0
    devices.fp8 = False
    if call_queue.queue_lock.locked():
        raise RuntimeError("fake WebUI: call_queue.queue_lock is still held (a previous test did not release it)")
    # the built-in Lora extension's script registers this at start-up
    script_callbacks.on_model_loaded(networks.assign_network_names_to_compvis_modules)
    return cmd_opts


def load_model(model):
    """What sd_models.load_model ends with: the model becomes shared.sd_model, then the
    model_loaded callbacks run (the Lora one names every module)."""
    from modules import script_callbacks, sd_models, sd_vae

    sd_models.model_data.set_sd_model(model)
    sd_models.model_data.was_loaded_at_least_once = True
    sd_vae.checkpoint_info = getattr(model, "sd_checkpoint_info", None)
    script_callbacks.model_loaded_callback(model)
    return model


def load_extension_scripts(extension_dir: str = REPO_ROOT) -> list:
    """Import <extension_dir>/scripts/*.py as modules/scripts.load_scripts does: by path, module
    named after the file, the extension folder on sys.path only while each file runs."""
    loaded = []
    scripts_dir = os.path.join(extension_dir, "scripts")
    for filename in sorted(os.listdir(scripts_dir)):
        path = os.path.join(scripts_dir, filename)
        if not filename.endswith(".py") or not os.path.isfile(path):
            continue
        saved = sys.path
        sys.path = [extension_dir] + sys.path
        try:
            spec = importlib.util.spec_from_file_location(filename, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded.append(module)
        finally:
            sys.path = saved
    return loaded
