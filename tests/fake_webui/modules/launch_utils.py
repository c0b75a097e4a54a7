"""Fake of modules/launch_utils.py (1.10.1): package checks and pip calls as install.py sees them.

Tests drive it through module attributes instead of a real venv:
  installed_packages  None -> ask the real environment (as the WebUI does); a dict name -> version
                      -> that table is the environment (pip installs add to it).
  pip_calls           every run_pip call: (command, desc).
  constraints_seen    text of each --constraint file at the time of the call (the installer deletes it).
  fail_pip            substrings: a run_pip command containing one raises like a failed pip.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import re
import sys
from typing import Optional

args = argparse.Namespace(skip_install=False, ui_settings_file="config.json", skip_prepare_environment=False)
python = sys.executable
index_url = ""
dir_repos = "repositories"
default_command_live = False

installed_packages: Optional[dict] = None
_real_metadata_version = importlib.metadata.version
pip_calls: list = []
constraints_seen: list = []
fail_pip: set = set()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def reset() -> None:
    global installed_packages
    installed_packages = None
    pip_calls.clear()
    constraints_seen.clear()
    fail_pip.clear()
    args.skip_install = False


def run(command, desc=None, errdesc=None, custom_env=None, live: bool = default_command_live) -> str:
    """Real one runs a shell command and raises RuntimeError on a non-zero exit; the fake runs nothing."""
    if desc is not None:
        print(desc)
    raise RuntimeError(f"{errdesc or 'Error running command'}.\nCommand: {command}\nfake WebUI: run() is not available")


def is_installed(package):
    """Same contract as the real one: a distribution of that name, else an importable module of that name."""
    if installed_packages is not None:
        return _canonical(package) in {_canonical(k) for k in installed_packages}
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def installed_version(package) -> Optional[str]:
    """Fake-only helper: what importlib.metadata.version would say under the fake table."""
    if installed_packages is None:
        return _real_metadata_version(package)
    for k, v in installed_packages.items():
        if _canonical(k) == _canonical(package):
            return v
    raise importlib.metadata.PackageNotFoundError(package)


def run_pip(command, desc=None, live=default_command_live):
    """Real: no-op under --skip-install, else `"<python>" -m pip <command> --prefer-binary[ --index-url ..]`
    with desc printed as "Installing <desc>"; a pip failure raises RuntimeError("Couldn't install <desc>...")."""
    if args.skip_install:
        return
    index_url_line = f' --index-url {index_url}' if index_url != '' else ''
    full = f'"{python}" -m pip {command} --prefer-binary{index_url_line}'
    print(f"Installing {desc}")
    pip_calls.append((command, desc))
    for path in re.findall(r'(?:-c|--constraint)\s+"([^"]+)"', command):
        with open(path, encoding="utf8") as f:
            constraints_seen.append(f.read())
    if any(s in command for s in fail_pip):
        raise RuntimeError(f"Couldn't install {desc}.\nCommand: {full}\nError code: 1\nstderr: fake pip failure")
    if installed_packages is not None:
        for name, version in re.findall(r'install\s+"?([A-Za-z0-9._-]+)==([^"\s]+)"?', command):
            installed_packages[name] = version
    return ""


@contextlib.contextmanager
def fake_environment(packages: dict):
    """Fake-only: make `packages` (name -> version) the whole environment for is_installed and
    importlib.metadata.version (what install.py reads versions with); pip installs add to it."""
    global installed_packages
    saved = installed_packages
    installed_packages = dict(packages)
    importlib.metadata.version = installed_version
    try:
        yield installed_packages
    finally:
        importlib.metadata.version = _real_metadata_version
        installed_packages = saved
