"""install.py and extensions_lib/install_plan.py: install only what is missing, never move a host pin.

install.py is run the way the WebUI runs it: as __main__ with the WebUI's `launch` importable (here
the fake in tests/fake_webui), and once as a real subprocess.
"""
import os
import runpy
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "fake_webui")
for _p in (REPO, FAKE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from extensions_lib import install_plan as ip  # noqa: E402
from modules import launch_utils  # noqa: E402

INSTALL_PY = os.path.join(REPO, "install.py")
with open(os.path.join(REPO, "requirements-extension.txt"), encoding="utf8") as _f:
    REQUIREMENTS = _f.read().splitlines()

# What a WebUI 1.10.1 venv has (requirements_versions.txt + TORCH_COMMAND), and Forge's.
A1111 = {"torch": "2.1.2+cu121", "torchvision": "0.16.2+cu121", "transformers": "4.30.2", "tokenizers": "0.13.3",
         "accelerate": "0.21.0", "safetensors": "0.4.2", "gradio": "3.41.2", "numpy": "1.26.2",
         "Pillow": "9.5.0", "protobuf": "3.20.0", "fastapi": "0.94.0", "pydantic": "1.10.17",
         "huggingface-hub": "0.24.6", "einops": "0.4.1", "packaging": "24.1"}
FORGE = {**A1111, "torch": "2.3.1+cu121", "torchvision": "0.18.1+cu121", "transformers": "4.46.1",
         "accelerate": "0.31.0", "gradio": "4.40.0", "pydantic": "2.8.2", "fastapi": "0.104.1",
         "huggingface-hub": "0.26.2"}
PY311 = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux"}
PY310 = {**PY311, "python_version": "3.10", "python_full_version": "3.10.6"}


def installs(installed, env=PY311):
    return {d.name: d.spec for d in ip.plan(REQUIREMENTS, installed, env) if d.action == "install"}


# --- the pure plan ----------------------------------------------------------------------------

def test_webui_110_pins_get_diffusers_0303_and_no_pin_is_touched():
    got = installs(A1111)
    assert got["diffusers"] == "diffusers==0.30.3"
    assert got["lycoris-lora"] == "lycoris-lora==4.0.0"   # 4.1 needs torch >= 2.4 to import
    assert got["bitsandbytes"] == "bitsandbytes==0.45.3"  # 0.50 would pull torch >= 2.4
    assert not set(got) & {ip.canonical_name(n) for n in A1111}


def test_forge_gets_diffusers_0310():
    assert installs(FORGE)["diffusers"] == "diffusers==0.31.0"
    assert installs(FORGE)["lycoris-lora"] == "lycoris-lora==4.0.0"    # Forge's torch 2.3.1
    assert installs({**FORGE, "torch": "2.4.1"})["bitsandbytes"] == "bitsandbytes==0.50.2"
    assert installs({**FORGE, "torch": "2.4.1"})["lycoris-lora"] == "lycoris-lora==4.1.3"


def test_present_package_is_never_reinstalled_even_at_another_version():
    have = {**A1111, "diffusers": "0.25.0", "lycoris_lora": "2.0.0", "bitsandbytes": "0.41.1"}
    decisions = {d.name: d for d in ip.plan(REQUIREMENTS, have, PY311)}
    for name in ("diffusers", "lycoris-lora", "bitsandbytes"):
        assert decisions[name].action == "present", name
    assert "0.25.0" in decisions["diffusers"].reason


def test_a_strict_version_that_cannot_work_on_this_torch_is_replaced():
    """lycoris-lora 4.1.3 (what an earlier install of ours put on every host) fails to import on torch < 2.4."""
    decisions = {d.name: d for d in ip.plan(REQUIREMENTS, {**A1111, "lycoris-lora": "4.1.3"}, PY311)}
    assert decisions["lycoris-lora"].action == "install"
    assert decisions["lycoris-lora"].spec == "lycoris-lora==4.0.0"
    assert "needs torch>=2.4, this host has torch 2.1.2+cu121" in decisions["lycoris-lora"].reason
    for have in ({**A1111, "lycoris-lora": "4.0.0"}, {**A1111, "torch": "2.4.1", "lycoris-lora": "4.1.3"},
                 {**A1111, "lycoris-lora": "4.1.2"}):   # fits, or not a version of ours: left alone
        assert {d.name: d for d in ip.plan(REQUIREMENTS, have, PY311)}["lycoris-lora"].action == "present"
    held = ip.plan(REQUIREMENTS, {**A1111, "lycoris-lora": "4.1.3"}, PY311, protected={"Lycoris_Lora"})
    assert {d.name: d for d in held}["lycoris-lora"].action == "present"   # a host pin is never moved


def test_only_strict_lines_replace_a_present_version():
    reqs = ["x==1.0 @when torch>=2.4", "x==0.9 @when torch<2.4"]
    assert ip.plan(reqs, {"torch": "2.1.2", "x": "1.0"})[0].action == "present"
    bad = ip.plan(reqs[:1] + ["y==2 @when torch<2.0"], {"torch": "2.1.2", "x": "1.0"})
    assert bad[0].action == "present"
    with pytest.raises(ValueError, match="'@strict' or '@optional'"):
        ip.parse_requirements(["x==1 @stric"], source="reqs.txt")


def test_present_without_version_counts_as_present():
    decisions = {d.name: d for d in ip.plan(REQUIREMENTS, {**A1111, "diffusers": None}, PY311)}
    assert decisions["diffusers"].action == "present"


def test_nothing_missing_nothing_to_do():
    have = {**A1111, "diffusers": "0.30.3", "lycoris-lora": "4.0.0", "bitsandbytes": "0.45.3",
            "prodigyopt": "1.0", "lion-pytorch": "0.2.2", "tomli-w": "1.0.0"}
    assert ip.plan_installs(REQUIREMENTS, have, environment=PY311) == []


def test_old_torch_has_no_tested_bitsandbytes_and_it_is_skipped():
    decisions = {d.name: d for d in ip.plan(REQUIREMENTS, {**A1111, "torch": "1.13.1+cu117"}, PY311)}
    assert decisions["bitsandbytes"].action == "unsupported"
    assert decisions["bitsandbytes"].optional
    assert "torch 1.13.1+cu117" in decisions["bitsandbytes"].reason


def test_markers_follow_the_python_of_the_host():
    assert "tomli" in installs(A1111, PY310)       # no tomllib before 3.11
    assert "tomli" not in installs(A1111, PY311)
    assert "bitsandbytes" not in installs(A1111, {**PY311, "sys_platform": "darwin"})


def test_pip_args_carry_the_constraints_file():
    args = ip.plan_installs(REQUIREMENTS, A1111, constraints_file="/tmp/c d.txt", environment=PY311)
    assert 'install "diffusers==0.30.3" --constraint "/tmp/c d.txt"' in args
    assert all("--constraint" in a for a in args)
    assert not any(a.split('"')[1].split("==")[0] in ip.FORBIDDEN for a in args)


def test_constraints_hold_every_protected_package_at_its_installed_version():
    pins = ["setuptools==69.5.1  # temp fix", "spandrel==0.3.4", "torch", "-r other.txt", ""]
    protected = ip.protected_names(pins)
    lines = ip.constraint_lines({**A1111, "spandrel": "0.3.4", "weird": "not a version", "diffusers": "0.30.3"}, protected)
    assert "torch==2.1.2+cu121" in lines
    assert "transformers==4.30.2" in lines and "numpy==1.26.2" in lines and "pillow==9.5.0" in lines
    assert "spandrel==0.3.4" in lines          # from the host's pin file
    assert not any(line.startswith(("diffusers", "weird", "huggingface-hub")) for line in lines)


def test_bad_requirement_lines_name_the_line_and_the_fix():
    with pytest.raises(ValueError, match=r"reqs.txt:2: 'diffusers>=0.30' must pin one exact version"):
        ip.parse_requirements(["# c", "diffusers>=0.30"], source="reqs.txt")
    with pytest.raises(ValueError, match=r"reqs.txt:1: torch is installed by the WebUI itself"):
        ip.parse_requirements(["torch==2.1.2"], source="reqs.txt")
    with pytest.raises(ValueError, match=r"reqs.txt:1: unknown flag '@maybe'"):
        ip.parse_requirements(["x==1 @maybe"], source="reqs.txt")
    with pytest.raises(ValueError, match=r"reqs.txt:1: bad condition 'transformers'"):
        ip.parse_requirements(["x==1 @when transformers"], source="reqs.txt")


def test_the_shipped_requirement_file_parses_and_never_lists_torch():
    reqs = ip.parse_requirements(REQUIREMENTS, "requirements-extension.txt")
    assert {"diffusers", "lycoris-lora", "bitsandbytes"} <= set(reqs.names())
    assert not set(reqs.names()) & set(ip.FORBIDDEN)


# --- install.py as the WebUI runs it ------------------------------------------------------------

def run_install(packages, monkeypatch, fail=(), pin_file=None):
    """Run install.py as __main__ with the fake `launch`; returns (pip_calls, constraints, env, exit)."""
    launch_utils.reset()
    launch_utils.fail_pip.update(fail)
    if pin_file is None:
        monkeypatch.setenv("REQS_FILE", os.path.join(FAKE, "no-such-pin-file.txt"))
    else:
        monkeypatch.setenv("REQS_FILE", str(pin_file))
    code = 0
    with launch_utils.fake_environment(packages) as env:
        try:
            runpy.run_path(INSTALL_PY, run_name="__main__")
        except SystemExit as e:
            code = e.code
    return list(launch_utils.pip_calls), list(launch_utils.constraints_seen), env, code


def targets(calls):
    return [c.split('"')[1] for c, _ in calls]


def test_install_on_webui_110_installs_missing_and_keeps_pins(monkeypatch, capsys):
    calls, constraints, env, code = run_install(A1111, monkeypatch)
    assert code == 0
    got = targets(calls)
    assert "diffusers==0.30.3" in got and "lycoris-lora==4.0.0" in got
    for name, version in A1111.items():  # nothing the host pins was asked for or changed
        assert not any(t.split("==")[0].lower() == name.lower() for t in got)
        assert env[name] == version
    assert all("torch==2.1.2+cu121" in c and "transformers==4.30.2" in c and "gradio==3.41.2" in c for c in constraints)
    assert len(constraints) == len(calls)
    out = capsys.readouterr().out
    assert "installed diffusers==0.30.3" in out


def test_install_on_forge_picks_diffusers_031(monkeypatch):
    calls, _, _, code = run_install({k: v for k, v in FORGE.items()}, monkeypatch)
    assert code == 0
    assert "diffusers==0.31.0" in targets(calls)


def test_install_replaces_lycoris_41_on_the_webui_torch(monkeypatch, capsys):
    calls, constraints, env, code = run_install({**A1111, "lycoris-lora": "4.1.3"}, monkeypatch)
    assert code == 0
    assert "lycoris-lora==4.0.0" in targets(calls) and env["lycoris-lora"] == "4.0.0"
    assert all("torch==2.1.2+cu121" in c for c in constraints)
    assert "installed lycoris-lora==4.0.0" in capsys.readouterr().out


def test_install_with_nothing_missing_calls_no_pip(monkeypatch, capsys):
    have = {**A1111, "diffusers": "0.30.3", "lycoris-lora": "4.0.0", "bitsandbytes": "0.45.3",
            "prodigyopt": "1.0", "lion-pytorch": "0.2.2", "tomli-w": "1.0.0", "tomli": "2.0.1"}
    calls, _, _, code = run_install(have, monkeypatch)
    assert calls == [] and code == 0
    assert "Installing" not in capsys.readouterr().out


def test_failed_optional_install_warns_and_goes_on(monkeypatch, capsys):
    calls, _, env, code = run_install(A1111, monkeypatch, fail={"bitsandbytes"})
    assert code == 0
    assert "bitsandbytes==0.45.3" in targets(calls)
    assert "bitsandbytes" not in env and env["diffusers"] == "0.30.3"   # the others still went in
    out = capsys.readouterr().out
    assert "WARNING: optional package bitsandbytes==0.45.3 could not be installed" in out


def test_failed_required_install_exits_nonzero_with_the_manual_command(monkeypatch, capsys):
    _, _, env, code = run_install(A1111, monkeypatch, fail={"diffusers"})
    assert code == 1
    assert env["lycoris-lora"] == "4.0.0"
    err = capsys.readouterr().err
    assert "could not install diffusers==0.30.3" in err and '-m pip install "diffusers==0.30.3"' in err


def test_host_pin_file_packages_are_held_too(monkeypatch, tmp_path):
    pin_file = tmp_path / "requirements_versions.txt"
    pin_file.write_text("spandrel==0.3.4\nkornia==0.6.7\ntorch\n", encoding="utf8")
    _, constraints, _, _ = run_install({**A1111, "spandrel": "0.3.4", "kornia": "0.6.7"}, monkeypatch, pin_file=pin_file)
    assert constraints and all("spandrel==0.3.4" in c and "kornia==0.6.7" in c for c in constraints)


def test_skip_install_makes_run_pip_a_noop(monkeypatch):
    launch_utils.reset()
    launch_utils.args.skip_install = True
    try:
        with launch_utils.fake_environment(A1111) as env:
            monkeypatch.setenv("REQS_FILE", "no-such-file")
            runpy.run_path(INSTALL_PY, run_name="__main__")
        assert launch_utils.pip_calls == [] and "diffusers" not in env
    finally:
        launch_utils.reset()


def test_install_py_as_a_subprocess_in_this_venv(tmp_path):
    """The WebUI's way: `python install.py`, PYTHONPATH = WebUI root, cwd = WebUI root. This venv has
    everything, so nothing is installed; and install.py must not import the extensions_lib package."""
    env = dict(os.environ, PYTHONPATH=FAKE, REQS_FILE=str(tmp_path / "none.txt"))
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
            "print('PKG', 'extensions_lib' in sys.modules); from modules import launch_utils; print('PIP', launch_utils.pip_calls)")
    proc = subprocess.run([sys.executable, "-c", code, INSTALL_PY], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PKG False" in proc.stdout
    assert "PIP []" in proc.stdout
