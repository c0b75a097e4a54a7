"""Installs the Trainer extension's missing packages; the WebUI runs it, never the user.

The WebUI (modules/launch_utils.py, run_extension_installer) starts it as `python install.py` with
the WebUI root on PYTHONPATH and the WebUI root as working directory, captures its output and prints
it afterwards; a non-zero exit is reported as "Error running install.py" and start-up goes on.
It does not run under --skip-install.

What gets installed is decided by extensions_lib/install_plan.py from requirements-extension.txt:
only missing packages, never a new version of something present (except a version of ours pinned for
other hosts that cannot work on this one: see install_plan), with the host's pinned packages held by a
pip constraints file.
"""
import importlib.metadata
import importlib.util
import os
import sys
import tempfile

import launch

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIREMENTS = os.path.join(HERE, "requirements-extension.txt")
TAG = "[Trainer extension]"


def _load_install_plan():
    # By path, not `import extensions_lib...`: the extension folder is not on sys.path here, and the
    # package __init__ may import what we are about to install.
    path = os.path.join(HERE, "extensions_lib", "install_plan.py")
    spec = importlib.util.spec_from_file_location("_train_extension_install_plan", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _host_pin_file():
    """The WebUI's pin file, found the way launch_utils.prepare_environment finds it."""
    name = os.environ.get("REQS_FILE", "requirements_versions.txt")
    if os.path.isfile(name):
        return name
    try:
        from modules.paths_internal import script_path
    except Exception:
        script_path = os.getcwd()
    path = os.path.join(script_path, name)
    return path if os.path.isfile(path) else None


def _installed(names):
    """name -> version for the packages the WebUI's own check calls installed ('' if no version)."""
    found = {}
    for name in names:
        if not launch.is_installed(name):
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except Exception:
            found[name] = ""  # importable without metadata: present, version unknown
    return found


def main() -> int:
    plan_mod = _load_install_plan()
    with open(REQUIREMENTS, encoding="utf8") as f:
        requirements = plan_mod.parse_requirements(f, source=REQUIREMENTS)

    pin_file = _host_pin_file()
    pin_lines = None
    if pin_file:
        with open(pin_file, encoding="utf8") as f:
            pin_lines = f.read().splitlines()
    protected = plan_mod.protected_names(pin_lines)

    installed = _installed(plan_mod.names_to_query(requirements, protected))
    decisions = plan_mod.plan(requirements, installed, protected=protected)
    to_install = [d for d in decisions if d.action == "install"]
    for d in decisions:
        if d.action == "unsupported":
            level = "optional, skipped" if d.optional else "WARNING"
            print(f"{TAG} {d.name}: {level}: {d.reason}")
    if not to_install:
        return 0

    constraints = plan_mod.constraint_lines(installed, protected)
    failed_required = []
    fd, constraints_file = tempfile.mkstemp(prefix="train-extension-constraints-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf8") as f:
            f.write("\n".join(constraints) + "\n")
        for d in to_install:
            desc = f"{d.spec} for the Trainer extension ({d.reason})"
            try:
                launch.run_pip(d.pip_args(constraints_file), desc)
                print(f"{TAG} installed {d.spec}")
            except Exception as e:  # run_pip raises RuntimeError with pip's output
                if d.optional:
                    print(f"{TAG} WARNING: optional package {d.spec} could not be installed; "
                          f"the features that need it stay off. {_first_line(e)}")
                else:
                    failed_required.append((d, e))
    finally:
        os.remove(constraints_file)

    for d, e in failed_required:
        print(f"{TAG} ERROR: could not install {d.spec}: {e}\n"
              f"{TAG} Install it by hand into the WebUI's venv: \"{sys.executable}\" -m pip install \"{d.spec}\" "
              f"(do not let pip upgrade torch, transformers, gradio or numpy).", file=sys.stderr)
    return 1 if failed_required else 0


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
