"""Fake of modules/shared.py (1.10.1) after shared_init.initialize(): cmd_opts, opts, state,
interrogator, sd_model (property, see shared_items), hypernetworks, loaded_hypernetworks, reload_hypernetworks,
OptionInfo / OptionHTML / options_section, walk_files.
"""
import copy
import os

from modules import shared_cmd_options, options, shared_items  # shared_items swaps this module's class
from modules.paths_internal import models_path, script_path, data_path, extensions_dir, extensions_builtin_dir  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

batch_cond_uncond = True
parallel_processing_allowed = True
hide_dirs = {"visible": not cmd_opts.hide_ui_dir_config}

demo = None
device = None
weight_load_location = None
xformers_available = False

hypernetworks = {}
loaded_hypernetworks = []

state = None
prompt_styles = None
interrogator = None
face_restorers = []
options_templates: dict = None
opts: options.Options = None
restricted_opts: set = set()
settings_components: dict = None
tab_names = []
sd_upscalers = []
clip_model = None
total_tqdm = None
mem_mon = None

options_section = options.options_section
OptionInfo = options.OptionInfo
OptionHTML = options.OptionHTML

reload_hypernetworks = shared_items.reload_hypernetworks


def walk_files(path, allowed_extensions=None):
    """Same contract as modules/util.walk_files: every file under path (following links), filtered by extension."""
    if not os.path.exists(path):
        return
    if allowed_extensions is not None:
        allowed_extensions = set(allowed_extensions)
    for root, _, files in os.walk(path, followlinks=True):
        for filename in sorted(files):
            if allowed_extensions is not None and os.path.splitext(filename)[1].lower() not in allowed_extensions:
                continue
            yield os.path.join(root, filename)


def _initialize():
    """What modules/shared_init.initialize() does for opts, state and interrogator; again (fake-only)
    it resets the same opts and state objects in place, so references taken with
    `from modules.shared import opts` stay valid (the interrogator is a new one)."""
    global options_templates, opts, state, interrogator
    from modules import shared_options, shared_state
    options_templates = {k: copy.copy(v) for k, v in shared_options.options_templates.items()}
    if opts is None:
        opts = options.Options(options_templates, restricted_opts)
    else:
        opts.data_labels = options_templates
        opts.data = {k: v.default for k, v in options_templates.items() if not v.do_not_save}
    if state is None:
        state = shared_state.State()
    else:
        state.__dict__.clear()
        state.__init__()
    # shared_init.initialize() makes the interrogator behind the Interrogate buttons and the Caption script
    from modules import interrogate
    interrogator = interrogate.InterrogateModels("interrogate")


_initialize()
