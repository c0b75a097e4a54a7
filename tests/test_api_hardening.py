"""Hostile bodies and paths sent to the REST API, and config files that cannot be read as text."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import make_images, quick_config, tiny_bundle

from extensions_lib.cli import main
from extensions_lib.config import TrainConfig
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.ui.job import TrainingJob

JSON = {"content-type": "application/json"}
NaN_MARK = "__nan__"
MAX_BODY_BYTES = 1 << 20     # the documented limit of a request body


@pytest.fixture
def client():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui.api import register_routes

    app = FastAPI()
    job = TrainingJob()
    register_routes(app, job, lambda: StandaloneHost(tiny_bundle()))
    # a 500 comes back as a response, not an exception, so the status code is what is asserted
    return TestClient(app, raise_server_exceptions=False), job


def _body(tmp_path: Path) -> dict:
    return quick_config(tmp_path / "data", tmp_path / "out").to_dict()


@pytest.mark.parametrize("route", ["/trainer/v1/train", "/trainer/v1/dataset"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused_by_field(client, tmp_path, route, literal):
    c, job = client
    text = json.dumps(_body(tmp_path)).replace('"learning_rate": 0.001', f'"learning_rate": {literal}')
    assert literal in text
    r = c.post(route, content=text.encode(), headers=JSON)
    assert r.status_code == 422, r.text
    assert "training.learning_rate" in r.json()["error"]
    assert r.json()["problems"][0]["field"] == "training.learning_rate"
    assert job.status()["state"] == "idle"


def test_a_non_finite_number_in_a_list_is_named(client, tmp_path):
    c, _ = client
    body = json.dumps({"sample": {"prompts": ["a", NaN_MARK]}}).replace(f'"{NaN_MARK}"', "NaN")
    r = c.post("/trainer/v1/train", content=body.encode(), headers=JSON)
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "sample.prompts[1]"


@pytest.mark.parametrize("route", ["/trainer/v1/train", "/trainer/v1/dataset"])
@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_bodies_are_refused(client, route, depth):
    """40 levels parse but are far beyond a config; 100 000 exceed the parser's recursion limit."""
    c, _ = client
    body = '{"data": ' + "[" * depth + "]" * depth + "}"
    r = c.post(route, content=body.encode(), headers=JSON)
    assert r.status_code == 422, r.text[:500]
    assert "nested" in r.json()["error"]


@pytest.mark.parametrize("route", ["/trainer/v1/train", "/trainer/v1/dataset"])
def test_a_body_over_the_limit_is_413(client, route):
    c, _ = client
    body = json.dumps({"data": {"caption_extension": "x" * MAX_BODY_BYTES}})
    r = c.post(route, content=body.encode(), headers=JSON)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["error"], r.text[:300]


def test_a_body_over_the_limit_without_a_length_is_413(client):
    """A chunked body carries no Content-Length: the size is counted while it is read."""
    c, _ = client

    def chunks():
        for _ in range(MAX_BODY_BYTES // 4096 + 2):
            yield b" " * 4096
    r = c.post("/trainer/v1/train", content=chunks(), headers=JSON)
    assert r.status_code == 413


@pytest.mark.parametrize("folder", ["/etc", "/root"])
def test_dataset_names_nothing_inside_a_folder_that_is_not_a_dataset(client, folder):
    c, _ = client
    if not Path(folder).is_dir():
        pytest.skip(f"{folder} is not a folder here")
    r = c.post("/trainer/v1/dataset", json={"data": {"train_dir": folder}})
    assert r.status_code == 200
    out = r.json()
    assert "exists but is not a dataset" in out["error"]
    assert out["rows"] == [] and out["problems"] == []
    names = [p.name for p in Path(folder).iterdir()]
    text = out["error"].replace(folder, "")
    assert not [n for n in names if len(n) > 2 and n in text], text


def test_train_refusal_names_nothing_inside_a_folder_that_is_not_a_dataset(client, tmp_path):
    c, job = client
    home = tmp_path / "home"
    (home / "secret_project").mkdir(parents=True)
    (home / "passwords.txt").write_text("x")
    body = quick_config(home, tmp_path / "out").to_dict()
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert "exists but is not a dataset" in error and "secret_project" not in error and "passwords" not in error
    r = c.post("/trainer/v1/dataset", json=body)
    assert "exists but is not a dataset" in r.json()["error"] and "secret_project" not in r.text
    assert job.status()["state"] == "idle"


def test_missing_folder_says_it_does_not_exist(client, tmp_path):
    c, _ = client
    r = c.post("/trainer/v1/dataset", json={"data": {"train_dir": str(tmp_path / "nowhere")}})
    assert "does not exist" in r.json()["error"]


def test_dataset_lists_only_its_subfolders(client, tmp_path):
    """A dataset with other things beside it: the rows and problems are about the <n>_<name>
    subfolders only, never the other folders or loose files next to them."""
    c, _ = client
    root = tmp_path / "mixed"
    make_images(root / "3_sks", n=3)
    (root / "3_sks" / "broken.png").write_bytes(b"not a png")
    (root / "private_notes").mkdir()
    (root / "diary.txt").write_text("x")
    make_images(root / "loose", n=1)
    (root / "loose" / "img0.png").rename(root / "holiday.png")
    r = c.post("/trainer/v1/dataset", json={"data": {"train_dir": str(root), "resolution": 64,
                                                     "min_bucket_reso": 64, "max_bucket_reso": 128}})
    out = r.json()
    assert r.status_code == 200 and out["error"] == ""
    assert [row["folder"] for row in out["rows"]] == ["3_sks"] and out["rows"][0]["images"] == 3
    assert out["totals"]["images"] == 3
    assert any(p.startswith("3_sks/broken.png") for p in out["problems"]), out["problems"]
    for name in ("private_notes", "diary", "holiday", "loose", str(tmp_path)):
        assert name not in r.text, name


def test_an_ordinary_config_still_trains_and_summarises(client, tmp_path):
    c, job = client
    make_images(tmp_path / "data" / "2_sks", n=4, size=64)
    body = _body(tmp_path)
    r = c.post("/trainer/v1/dataset", json=body)
    assert r.status_code == 200 and r.json()["totals"]["total_steps"] == 16
    assert c.post("/trainer/v1/train", content=b"{not json", headers=JSON).status_code == 400
    assert c.post("/trainer/v1/train", json=[1]).status_code == 422
    body["training"]["max_train_steps"] = 1
    r = c.post("/trainer/v1/train", json=body)
    assert r.status_code == 200, r.text
    job.wait(120)
    assert job.status()["state"] == "done"


# -- config files that are not readable text ------------------------------------------------------------

def _assert_one_line_error(capsys, path: Path, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(path) in err
    for w in words:
        assert w in err, err


def test_cli_config_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[output]\nname = "caf\u00e9"\n'.encode("latin-1"))
    assert main(["train", str(path)]) == 2
    _assert_one_line_error(capsys, path, "UTF-8", "save it as UTF-8")


def test_cli_config_unreadable(tmp_path, capsys, monkeypatch):
    path = tmp_path / "secret.toml"
    TrainConfig().save_toml(path)
    real = Path.read_text

    def denied(self, *a, **kw):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)
    monkeypatch.setattr(Path, "read_text", denied)
    assert main(["train", str(path)]) == 2
    _assert_one_line_error(capsys, path, "permission denied", "chmod")


def test_cli_config_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "configs"
    folder.mkdir()
    assert main(["train", str(folder), "--check"]) == 2
    _assert_one_line_error(capsys, folder, "is a folder", ".toml")


def test_cli_config_missing_still_says_not_found(tmp_path, capsys):
    path = tmp_path / "missing.toml"
    assert main(["train", str(path)]) == 2
    _assert_one_line_error(capsys, path, "not found")
