"""Fake of modules/shared_cmd_options.py (1.10.1).

Real: the WebUI parser, then preload(parser) of every extension's preload.py (user extensions, then
extensions-builtin), then parse_args() of sys.argv into cmd_opts, plus webui_is_non_local and
disable_extension_access. Fake: the same, with the built-in Lora preload (--lora-dir,
--lyco-dir-backcompat) and the preload.py of each folder in FAKE_WEBUI_EXTENSIONS (os.pathsep list;
default: this repository's root), parsing [] or FAKE_WEBUI_ARGS instead of pytest's sys.argv.
"""
import importlib.util
import os
import shlex

from modules import cmd_args, paths_internal

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def extension_dirs() -> list:
    env = os.environ.get("FAKE_WEBUI_EXTENSIONS")
    return [d for d in env.split(os.pathsep) if d] if env is not None else [REPO_ROOT]


def _lora_preload(parser):
    # extensions-builtin/Lora/preload.py adds these two
    models_path = paths_internal.models_path
    parser.add_argument("--lora-dir", type=paths_internal.normalized_filepath, default=os.path.join(models_path, "Lora"))
    parser.add_argument("--lyco-dir-backcompat", type=paths_internal.normalized_filepath, default=os.path.join(models_path, "LyCORIS"))


def _load_preload(path):
    # the real loader (script_loading.load_module) names the module after the file and runs it by path
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(argv=None, extensions=None):
    parser = cmd_args.make_parser()
    for ext in extensions if extensions is not None else extension_dirs():
        script = os.path.join(ext, "preload.py")
        if os.path.isfile(script):
            module = _load_preload(script)  # the real one reports errors and goes on; tests want to see them
            if hasattr(module, "preload"):
                module.preload(parser)
    _lora_preload(parser)
    if argv is None:
        argv = shlex.split(os.environ.get("FAKE_WEBUI_ARGS", ""))
    opts = parser.parse_args(argv)
    opts.webui_is_non_local = any([opts.share, opts.listen, opts.ngrok, opts.server_name])
    opts.disable_extension_access = opts.webui_is_non_local and not opts.enable_insecure_extension_access
    return parser, opts


parser, cmd_opts = build()


def rebuild(argv=None, extensions=None):
    """Fake-only: parse again (after the data folder moved) and update cmd_opts IN PLACE, so modules
    that did `from modules.shared import cmd_opts` see the new values."""
    global parser
    parser, fresh = build(argv, extensions)
    vars(cmd_opts).clear()
    vars(cmd_opts).update(vars(fresh))
    return cmd_opts
