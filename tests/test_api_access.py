"""Who reaches the REST routes: inside the WebUI only with an API switched on (--api, --nowebui,
--trainer-api; never with --trainer-disable-api) and behind the WebUI's logins; the standalone
server behind --auth / --auth-file, and never open to other computers without a login."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from extensions_lib.ui.access import AccessError, is_loopback, parse_credentials, read_credentials_file
from extensions_lib.ui.standalone import server_logins
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 240.0      # a loaded machine is slow; the waits below are on conditions with this bound


# --- credentials and addresses ---------------------------------------------------------------------

def test_credentials_are_read_as_the_webui_reads_them(tmp_path):
    assert parse_credentials(" a:1 , b:x:y ,,", "--auth") == {"a": "1", "b": "x:y"}
    path = tmp_path / "logins.txt"
    path.write_text("me:secret,you:pw\n\n  them:3  \n", encoding="utf-8")
    assert read_credentials_file(path, "--auth-file") == {"me": "secret", "you": "pw", "them": "3"}


@pytest.mark.parametrize("text, where", [("me:1,secret", "--auth, entry 2: no ':'"),
                                         ("me:1\n:pw", "--auth, line 2, entry 1: the user name")])
def test_a_bad_entry_is_named_by_place_without_repeating_it(text, where):
    with pytest.raises(AccessError, match=where) as e:
        parse_credentials(text, "--auth")
    assert "secret" not in str(e.value) and "pw" not in str(e.value)


def test_a_missing_or_empty_credentials_file_is_refused(tmp_path):
    with pytest.raises(AccessError, match="missing.txt: cannot be read"):
        read_credentials_file(tmp_path / "missing.txt", "--auth-file")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(AccessError, match="no user:password entry"):
        read_credentials_file(tmp_path / "empty.txt", "--auth-file")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("myserver", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def _ui_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"host": "127.0.0.1", "auth": [], "auth_file": "", "insecure": False, **kw})


def test_the_standalone_server_needs_a_login_or_insecure_on_a_reachable_address(tmp_path):
    assert server_logins(_ui_args()) == {}
    with pytest.raises(SystemExit, match="--host 0.0.0.0 lets other computers reach") as e:
        server_logins(_ui_args(host="0.0.0.0"))
    assert "--auth USER:PASSWORD" in str(e.value) and "--insecure" in str(e.value)
    assert server_logins(_ui_args(host="0.0.0.0", insecure=True)) == {}
    assert server_logins(_ui_args(host="0.0.0.0", auth=["a:1,b:2", "c:3"])) == {"a": "1", "b": "2", "c": "3"}
    (tmp_path / "logins").write_text("d:4\n", encoding="utf-8")
    assert server_logins(_ui_args(host="0.0.0.0", auth_file=str(tmp_path / "logins"))) == {"d": "4"}
    with pytest.raises(SystemExit, match="--auth-file .*cannot be read"):
        server_logins(_ui_args(auth_file=str(tmp_path / "nope")))
    with pytest.raises(SystemExit, match="--auth, entry 1: no ':'"):
        server_logins(_ui_args(host="0.0.0.0", auth=["justapassword"]))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")


def test_ui_on_every_interface_without_a_login_refuses_to_start(tmp_path):
    r = subprocess.run([sys.executable, "-m", "extensions_lib", "ui", "--checkpoint", "tiny", "--host", "0.0.0.0",
                        "--port", str(free_port())], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=DEADLINE)
    assert r.returncode != 0 and "no login is set" in r.stderr and "--insecure" in r.stderr, r.stdout + r.stderr
    assert "Trainer UI on" not in r.stdout


# --- the standalone server with --auth ---------------------------------------------------------------

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))    # never through a proxy


def _status(url: str, *, auth: tuple | None = None, form: dict | None = None) -> int:
    headers = {}
    if auth:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with _opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_standalone_server_with_auth_guards_the_rest_routes_and_the_page(tmp_path):
    port = free_port()
    logins = tmp_path / "logins.txt"
    logins.write_text("you:filepw\n", encoding="utf-8")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "extensions_lib", "ui", "--checkpoint", "tiny", "--port", str(port),
                             "--output-root", str(tmp_path / "out"), "--auth", "me:s3cret", "--auth-file", str(logins)],
                            cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    text = lambda: (tmp_path / "server.log").read_text(errors="replace")     # noqa: E731
    try:
        deadline = time.time() + DEADLINE
        while "REST API under" not in text():
            assert proc.poll() is None, text()
            assert time.time() < deadline, text()
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        assert _status(base + "/trainer/v1/status") == 401
        assert _status(base + "/trainer/v1/status", auth=("me", "wrong")) == 401
        assert _status(base + "/trainer/v1/status", auth=("nobody", "s3cret")) == 401
        assert _status(base + "/trainer/v1/status", auth=("me", "s3cret")) == 200
        assert _status(base + "/trainer/v1/status", auth=("you", "filepw")) == 200
        # the page's login (gradio's) knows the same users
        assert _status(base + "/login", form={"username": "me", "password": "wrong"}) == 400
        assert _status(base + "/login", form={"username": "you", "password": "filepw"}) == 200
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# --- inside the (fake) WebUI ----------------------------------------------------------------------

def test_webui_routes_need_an_api_flag_and_honour_the_webui_logins(tmp_path):
    """scripts/train_tab.py loaded as the WebUI loads it (a subprocess: the fake WebUI's modules must
    not leak into other tests), once per command line."""
    auth_file = tmp_path / "gradio_auth.txt"
    auth_file.write_text("me:secret,other:pw\nthird:x:y\n", encoding="utf-8")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'tests' / 'fake_webui')!r})
        import fake_webui_control as fw
        from modules import script_callbacks, shared
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        def client(argv, **cmd_opts):
            fw.reset({str(tmp_path / 'webui')!r}, argv=argv)
            for name, value in cmd_opts.items():   # WebUI options the fake's parser does not have
                setattr(shared.cmd_opts, name, value)
            fw.load_extension_scripts({str(ROOT)!r})
            app = FastAPI()
            script_callbacks.app_started_callback(None, app)
            return TestClient(app)

        url = "/trainer/v1/status"
        assert client([]).get(url).status_code == 404
        assert client(["--api"]).get(url).status_code == 200
        assert client(["--trainer-api"]).get(url).status_code == 200
        assert client(["--nowebui"]).get(url).status_code == 200
        assert client(["--api", "--trainer-disable-api"]).get(url).status_code == 404
        assert client(["--trainer-api", "--trainer-disable-api"]).get(url).status_code == 404

        c = client(["--api"], gradio_auth=None, gradio_auth_path={str(auth_file)!r})
        assert c.get(url).status_code == 401
        assert c.get(url, auth=("me", "wrong")).status_code == 401
        for user, password in [("me", "secret"), ("other", "pw"), ("third", "x:y")]:
            assert c.get(url, auth=(user, password)).status_code == 200, user
        c = client(["--trainer-api"], gradio_auth="a:1", gradio_auth_path={str(auth_file)!r})
        assert c.get(url, auth=("a", "1")).status_code == 200 and c.get(url, auth=("me", "secret")).status_code == 200
        # --api-auth is the API's own login: it replaces the page logins for the routes
        c = client(["--api", "--api-auth", "api:key"], gradio_auth="a:1")
        assert c.get(url, auth=("api", "key")).status_code == 200 and c.get(url, auth=("a", "1")).status_code == 401
        # logins that cannot be read leave the routes out, never open
        assert client(["--api", "--api-auth", "justapassword"]).get(url).status_code == 404
        assert client(["--api"], gradio_auth_path={str(tmp_path / 'missing.txt')!r}).get(url).status_code == 404
        print("ACCESS OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert "ACCESS OK" in r.stdout, r.stdout + r.stderr
    assert "Trainer: REST API not added: --api-auth, entry 1: no ':'" in r.stderr, r.stderr
    assert "justapassword" not in r.stderr
    assert "--gradio-auth-path" in r.stderr and "missing.txt: cannot be read" in r.stderr, r.stderr
