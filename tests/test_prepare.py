"""The Prepare step end to end (prepare/run.py and the tab's handlers) on the fake WebUI: raw pictures
become a training folder that trains with the loop, captions combine as chosen, class images land with
captions under the GPU queue lock, and what a user can get wrong is refused naming the field."""
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
from fake_webui_fixtures import model_loaded, webui  # noqa: E402,F401,I001  (first: the fake on sys.path)
from modules import shared  # noqa: E402,I001  (first: the fake shared module builds the interrogator)
from modules import interrogate, processing  # noqa: E402

from extensions_lib.data.folders import scan_dataset  # noqa: E402
from extensions_lib.hosts.a1111 import A1111Host  # noqa: E402
from extensions_lib.hosts.standalone import StandaloneHost  # noqa: E402
from extensions_lib.prepare.images import PrepareError  # noqa: E402
from extensions_lib.prepare.run import PrepareRequest, run_prepare  # noqa: E402
from extensions_lib.train.session import run_training  # noqa: E402
from extensions_lib.ui.prepare_tab import FORM_KEYS, PrepareHandlers  # noqa: E402

from helpers import quick_config, tiny_bundle  # noqa: E402


COLOURS = [(230, 20, 20), (20, 20, 230), (20, 200, 20), (230, 230, 20)]


def raw_pictures(folder: Path, captions: dict | None = None) -> Path:
    """Four pictures of different shapes (one wide), one broken file, optional captions."""
    folder.mkdir(parents=True)
    sizes = [(300, 200), (200, 300), (900, 300), (256, 256)]
    for i, (size, colour) in enumerate(zip(sizes, COLOURS)):
        noise = np.random.default_rng(i).integers(0, 20, (size[1], size[0], 3))
        Image.fromarray((np.array(colour) + noise).clip(0, 255).astype(np.uint8)).save(folder / f"p{i}.jpg")
    (folder / "broken.png").write_bytes(b"not a picture")
    for stem, text in (captions or {}).items():
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    return folder


def request(tmp_path: Path, **overrides) -> PrepareRequest:
    values = dict(source_dir=str(tmp_path / "raw"), dataset_dir=str(tmp_path / "dataset"), token="sks",
                  class_word="dog", repeats=5, width=128, height=128)
    values.update(overrides)
    return PrepareRequest(**values)


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def captions_of(folder: Path) -> dict:
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))}


def test_prepared_folder_trains_with_the_loop_and_the_originals_are_untouched(tmp_path):
    raw = raw_pictures(tmp_path / "raw")
    before = snapshot(raw)
    report = run_prepare(request(tmp_path, flip=True), StandaloneHost())
    assert report.folder == tmp_path / "dataset" / "5_sks dog"
    assert report.images == 8 and [p.name for p, _ in report.skipped] == ["broken.png"]
    assert report.preview() is not None and "broken.png" in report.summary()
    assert snapshot(raw) == before
    for image in report.folder.glob("*.png"):
        assert Image.open(image).size == (128, 128)

    scan = scan_dataset(tmp_path / "dataset")
    assert scan.num_train_images == 8 and scan.num_train_samples == 40 and not scan.skipped
    cfg = quick_config(tmp_path / "dataset", tmp_path / "out", "lora", training__max_train_steps=3,
                       data__resolution=128)
    result = run_training(cfg, StandaloneHost(tiny_bundle()))
    assert result.steps == 3 and result.output_path.is_file()


@pytest.mark.parametrize("mode, expected", [
    ("ignore", "a photo of a red square"),
    ("keep", "red dog, sitting"),
    ("prepend", "a photo of a red square, red dog, sitting"),
    ("append", "red dog, sitting, a photo of a red square"),
])
def test_blip_captions_combine_with_existing_ones_as_chosen(tmp_path, mode, expected):
    raw_pictures(tmp_path / "raw", captions={"p0": "red dog, sitting"})
    report = run_prepare(request(tmp_path, captioner="blip", existing_captions=mode, trigger_word_first=False),
                         A1111Host())
    made = captions_of(report.folder)
    assert made["p0"] == expected
    assert made["p1"] == "a photo of a blue square"          # no caption before: the captioner's
    assert report.captioned == 4
    assert interrogate.events[-1] == "send_blip_to_ram"     # the model is given back
    assert shared.state.job == "" and shared.state.job_count == 0


def test_trigger_word_goes_first_and_flipped_copies_share_their_caption(tmp_path):
    raw_pictures(tmp_path / "raw")
    report = run_prepare(request(tmp_path, captioner="deepbooru", flip=True), A1111Host())
    made = captions_of(report.folder)
    assert set(made) == {"p0", "p1", "p2", "p3", "p0-flipped", "p1-flipped", "p2-flipped", "p3-flipped"}
    assert all(text.split(", ")[0] == "sks" for text in made.values())
    assert all(made[f"{s}-flipped"] == made[s] for s in ("p0", "p1", "p2", "p3"))


def test_class_images_land_with_captions_under_the_queue_lock_and_existing_ones_are_reused(tmp_path,
                                                                                              model_loaded):
    raw_pictures(tmp_path / "raw")
    reg = tmp_path / "reg" / "1_dog"
    reg.mkdir(parents=True)
    Image.new("RGB", (128, 128), "white").save(reg / "mine.png")
    report = run_prepare(request(tmp_path, make_class_images=True, class_prompt="a photo of a dog",
                                 reg_dir=str(tmp_path / "reg")), A1111Host())
    assert report.class_dir == reg and report.class_images_reused == 1 and report.class_images_made == 3
    made = sorted(reg.glob("class_*.png"))
    assert len(made) == 3 and (reg / "mine.png").is_file()
    for image in made:
        assert image.with_suffix(".txt").read_text(encoding="utf-8").strip() == "a photo of a dog"
    calls = processing.calls
    assert len(calls) == 3 and all(c["queue_lock_held"] for c in calls)
    assert len({c["seed"] for c in calls}) == 3
    scan = scan_dataset(tmp_path / "dataset", reg_dir=tmp_path / "reg")
    assert scan.num_reg_images == 4


@pytest.mark.parametrize("overrides, field", [
    (dict(source_dir=""), "prepare.source_dir"),
    (dict(source_dir="/no/such/folder"), "prepare.source_dir"),
    (dict(dataset_dir=""), "prepare.dataset_dir"),
    (dict(token="a/b"), "prepare.token"),
    (dict(width=30), "prepare.width"),
    (dict(mode="zoom"), "prepare.mode"),
    (dict(captioner="clip"), "prepare.captioner"),
    (dict(existing_captions="merge"), "prepare.existing_captions"),
    (dict(make_class_images=True, class_word=""), "prepare.class_word"),
    (dict(make_class_images=True, class_images=-5), "prepare.class_images"),
    (dict(make_class_images=True, class_images=0), "prepare.class_images"),
    (dict(make_class_images=True, class_cfg_scale=0.0), "prepare.class_cfg_scale"),
    (dict(token="a,b"), "prepare.token"),
    (dict(source_dir="FILE"), "a file, not a folder"),
])
def test_bad_requests_are_refused_naming_the_field_before_any_file_is_written(tmp_path, overrides, field):
    raw_pictures(tmp_path / "raw")
    if overrides.get("source_dir") == "FILE":
        overrides = dict(source_dir=str(tmp_path / "raw" / "p0.jpg"))
    with pytest.raises(PrepareError, match=field.replace(".", r"\.")):
        run_prepare(request(tmp_path, **overrides), A1111Host())
    assert not (tmp_path / "dataset").exists()


def test_standalone_refuses_captions_class_images_and_focal_crop_before_any_work(tmp_path):
    raw_pictures(tmp_path / "raw")
    for overrides, says in ((dict(captioner="blip"), "need the AUTOMATIC1111 WebUI"),
                            (dict(make_class_images=True), "need the WebUI's txt2img"),
                            (dict(mode="focal"), "focal-point crop")):
        with pytest.raises(PrepareError, match=says):
            run_prepare(request(tmp_path, **overrides), StandaloneHost())
    assert not (tmp_path / "dataset").exists()


def test_an_existing_folder_is_never_overwritten(tmp_path):
    raw_pictures(tmp_path / "raw")
    target = tmp_path / "dataset" / "5_sks dog"
    target.mkdir(parents=True)
    (target / "keep.png").write_bytes(b"user's file")
    with pytest.raises(PrepareError, match="never overwritten"):
        run_prepare(request(tmp_path), StandaloneHost())
    assert snapshot(target) == {"keep.png": b"user's file"}


def test_a_stop_during_captioning_keeps_what_was_finished(tmp_path):
    raw_pictures(tmp_path / "raw")
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(list((tmp_path / "dataset" / "5_sks dog").glob("*.txt"))) >= 2

    report = run_prepare(request(tmp_path, captioner="blip", trigger_word_first=False), A1111Host(),
                         should_stop=stop_after_two)
    assert report.stopped and report.images == 4 and report.captioned == 2
    assert len(list(report.folder.glob("*.png"))) == 4 and len(captions_of(report.folder)) == 2
    assert shared.state.job == ""


def test_the_tab_prepares_fills_the_train_fields_and_edits_tags(tmp_path):
    raw_pictures(tmp_path / "raw")
    h = PrepareHandlers(A1111Host())
    choices, _ = h.captioner_choices()
    assert choices[:3] == ["none", "blip", "deepbooru"]
    form = dict(request(tmp_path, captioner="deepbooru").to_dict(), repeats=5.0)
    *running, (message, preview, tag_folder, train_dir, _, resolution) = h.prepare(*[form[k] for k in FORM_KEYS])
    assert all("trainer-running" in step[0] for step in running)
    assert "4 training image(s)" in message and preview is not None
    assert train_dir == str(tmp_path / "dataset") and tag_folder.endswith("5_sks dog") and resolution == 128

    rows, _ = h.tags(tag_folder)
    counts = dict((tag, n) for tag, n in rows)
    assert counts["sks"] == 4
    merged = [t for t in counts if t != "sks"][:2]
    before = captions_of(Path(tag_folder))
    rows, note = h.edit(tag_folder, "merge into", ", ".join(merged), "Smith")
    after = captions_of(Path(tag_folder))
    assert "changed" in note and dict((t, n) for t, n in rows).get("Smith")
    for stem, text in before.items():
        had = [t for t in text.split(", ") if t in merged]
        if had:
            assert "Smith" in after[stem].split(", ") and not set(merged) & set(after[stem].split(", "))
        else:
            assert after[stem] == text

    (message, *_), = h.prepare(*[form[k] for k in FORM_KEYS])     # the same folder again: refused, kept
    assert "never overwritten" in message and captions_of(Path(tag_folder)) == after
    _, note = h.edit(tag_folder, "merge into", "x", "")
    assert "prepare.merge_into" in note or "prepare.trigger_word" in note


def hold_deepbooru(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """(tagging, release): DeepBooru's first caption sets `tagging` and waits for `release`."""
    from modules import deepbooru

    tagging, release = threading.Event(), threading.Event()
    real_tag = deepbooru.model.tag_multi

    def held_tag(image, *args, **kwargs):
        tagging.set()
        assert release.wait(120)
        return real_tag(image, *args, **kwargs)

    monkeypatch.setattr(deepbooru.model, "tag_multi", held_tag)
    return tagging, release


def test_the_tab_shows_what_is_running_while_it_prepares(tmp_path, monkeypatch):
    raw_pictures(tmp_path / "raw")
    tagging, release = hold_deepbooru(monkeypatch)
    h = PrepareHandlers(A1111Host())
    h.poll_seconds = 0.01
    form = dict(request(tmp_path, captioner="deepbooru").to_dict(), repeats=5.0)
    steps = h.prepare(*[form[k] for k in FORM_KEYS])
    seen = [next(steps)[0]]         # the generator starts the job at its first step
    assert tagging.wait(120)
    while "Captioning" not in (step := next(steps))[0]:
        seen.append(step[0])
    assert "trainer-running" in step[0] and "(1/4)" in step[0], step[0]
    assert all("trainer-ok" not in text and "trainer-error" not in text for text in seen)
    release.set()
    *_, last = steps
    assert "trainer-ok" in last[0] and "4 caption(s) written" in last[0], last[0]


def test_rest_prepare_and_tags(tmp_path, model_loaded):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui.api import register_routes
    from extensions_lib.ui.job import TrainingJob

    app = FastAPI()
    register_routes(app, TrainingJob(), A1111Host)
    client = TestClient(app, raise_server_exceptions=False)
    raw_pictures(tmp_path / "raw", captions={"p1": "red dog, sitting"})
    body = dict(request(tmp_path, captioner="deepbooru", existing_captions="append", make_class_images=True,
                        class_images=2).to_dict())
    r = client.post("/trainer/v1/prepare", json=body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["images"] == 4 and report["captioned"] == 4 and report["class_images_made"] == 2
    assert report["skipped"][0][0].endswith("broken.png") and not report["stopped"]

    again = client.post("/trainer/v1/prepare", json=body)
    assert again.status_code == 422 and "never overwritten" in again.json()["error"]
    assert client.post("/trainer/v1/prepare", json=dict(body, colour="red")).status_code == 422
    assert client.post("/trainer/v1/prepare", json=[1]).status_code == 422
    wrong_type = client.post("/trainer/v1/prepare", json=dict(body, width="512", dataset_dir=str(tmp_path / "x")))
    assert wrong_type.status_code == 422 and "prepare.width" in wrong_type.json()["error"]

    folder = report["folder"]
    freq = client.post("/trainer/v1/tags", json={"folder": folder}).json()["tags"]
    assert ["sks", 4] in freq and ["red dog", 1] in freq
    merged = client.post("/trainer/v1/tags", json={"folder": folder, "action": "merge", "tags": ["red dog"],
                                                   "into": "Rex"}).json()
    assert [Path(p).name for p in merged["changed"]] == ["p1.txt"] and ["Rex", 1] in merged["tags"]
    assert client.post("/trainer/v1/tags", json={"folder": folder, "action": "merge", "tags": ["x"],
                                                 "into": ""}).status_code == 422
    assert client.post("/trainer/v1/tags", json={"folder": "/no/such"}).status_code == 422


def test_rest_prepares_in_the_background_one_at_a_time_with_the_tab_and_stops(tmp_path, model_loaded, monkeypatch):
    """?wait=false answers at once and the work goes on: the status shows it, a second preparation (REST or
    the tab sharing the job) is refused while it runs, /prepare/stop keeps what was finished."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui.api import register_routes
    from extensions_lib.ui.job import TrainingJob
    from extensions_lib.ui.prepare_job import PrepareJob

    job = PrepareJob()
    app = FastAPI()
    register_routes(app, TrainingJob(), A1111Host, prepare_job=job)
    client = TestClient(app, raise_server_exceptions=False)
    raw_pictures(tmp_path / "raw")
    tagging, release = hold_deepbooru(monkeypatch)      # the first caption waits until the test lets it go
    assert client.get("/trainer/v1/prepare/status").json()["state"] == "idle"
    body = request(tmp_path, captioner="deepbooru", trigger_word_first=False).to_dict()
    started = client.post("/trainer/v1/prepare?wait=false", json=body)
    assert started.status_code == 202 and started.json()["status"]["state"] == "running"
    assert tagging.wait(120)

    other = dict(body, dataset_dir=str(tmp_path / "other"))
    busy = client.post("/trainer/v1/prepare", json=other)
    assert busy.status_code == 409 and "already running" in busy.json()["error"]
    form = dict(other, repeats=5.0, captioner="none")
    (message, *_), = PrepareHandlers(A1111Host(), job).prepare(*[form[k] for k in FORM_KEYS])
    assert "already running" in message and not (tmp_path / "other").exists()

    assert client.post("/trainer/v1/prepare/stop").json()["stopping"]
    release.set()
    deadline = time.monotonic() + 120
    while (status := client.get("/trainer/v1/prepare/status").json())["state"] == "running":
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["state"] == "stopped" and status["report"]["stopped"], status
    assert status["report"]["images"] == 4 and status["report"]["captioned"] == 1
    assert len(captions_of(tmp_path / "dataset" / "5_sks dog")) == 1
    assert not client.post("/trainer/v1/prepare/stop").json()["stopping"]     # nothing runs now

    refused = client.post("/trainer/v1/prepare?wait=false", json=body)       # that folder is not empty now
    assert refused.status_code == 422 and "never overwritten" in refused.json()["error"]
    assert client.get("/trainer/v1/prepare/status").json()["state"] == "error"
    done = client.post("/trainer/v1/prepare?wait=false", json=other)
    assert done.status_code == 202
    while (status := client.get("/trainer/v1/prepare/status").json())["state"] == "running":
        assert time.monotonic() < deadline + 120, status
        time.sleep(0.05)
    assert status["state"] == "done" and status["report"]["captioned"] == 4, status


def test_inside_the_webui_the_tab_and_rest_share_one_prepare_job(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from extensions_lib.ui import webui as glue

    shared.cmd_opts.api = True
    (tab, _, _), = glue.on_ui_tabs()
    assert tab.trainer_prepare.job is glue.prepare_job()
    app = FastAPI()
    glue.on_app_started(None, app)
    raw_pictures(tmp_path / "raw")
    r = TestClient(app).post("/trainer/v1/prepare", json=request(tmp_path).to_dict())
    assert r.status_code == 200, r.text
    assert glue.prepare_job().status()["report"] == r.json()       # the REST run went through the tab's job


def test_cli_prepare_writes_the_folder_and_refuses_captioning_flags_it_does_not_have(tmp_path):
    import subprocess

    raw_pictures(tmp_path / "raw", captions={"p0": "red dog"})
    cmd = [sys.executable, "-m", "extensions_lib", "prepare", str(tmp_path / "raw"), str(tmp_path / "dataset"),
           "--token", "sks", "--class", "dog", "--repeats", "3", "--size", "64x96", "--flip"]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "8 training image(s) written" in r.stdout and "broken.png" in r.stdout
    folder = tmp_path / "dataset" / "3_sks dog"
    assert all(Image.open(p).size == (64, 96) for p in folder.glob("*.png"))
    assert captions_of(folder) == {"p0": "sks, red dog", "p0-flipped": "sks, red dog"}
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr


def test_a_captioner_that_cannot_load_leaves_nothing_behind_and_the_request_can_be_sent_again(tmp_path):
    """Offline, the WebUI cannot download BLIP: its own message is shown, no folder is written, and once
    the model is there the same request works."""
    from extensions_lib.hosts.base import HostError

    raw_pictures(tmp_path / "raw")
    interrogate.offline = True
    try:
        with pytest.raises(HostError, match="Temporary failure in name resolution"):
            run_prepare(request(tmp_path, captioner="blip"), A1111Host())
    finally:
        interrogate.offline = False
    assert not (tmp_path / "dataset").exists()
    assert shared.state.job == "" and not __import__("modules.call_queue").call_queue.queue_lock.locked()
    report = run_prepare(request(tmp_path, captioner="blip"), A1111Host())
    assert report.captioned == 4


def test_class_prompts_from_the_training_captions_leave_the_trigger_word_out(tmp_path, model_loaded):
    raw_pictures(tmp_path / "raw", captions={"p0": "red dog, sitting", "p1": "blue dog, running"})
    report = run_prepare(request(tmp_path, make_class_images=True, class_images=3, class_prompts_from_captions=True),
                         A1111Host())
    prompts = [c["prompt"] for c in processing.calls]
    assert prompts == ["dog, red dog, sitting", "dog, blue dog, running", "dog, red dog, sitting"]
    made = captions_of(report.class_dir)
    assert sorted(made.values()) == sorted(prompts) and not any("sks" in p for p in prompts)


def test_the_standalone_server_says_why_captions_and_class_images_need_the_webui(tmp_path):
    from extensions_lib.ui.standalone import CheckpointHost

    host = CheckpointHost(output_root=tmp_path)
    reasons = host.captioners()
    assert set(reasons) == {"blip", "deepbooru", "wd14"}
    assert all("need the AUTOMATIC1111 WebUI" in r for r in reasons.values())
    assert "need the WebUI's txt2img" in host.image_generation_refusal()
    _, note = PrepareHandlers(host).captioner_choices()
    assert note == "not available here: blip, deepbooru, wd14 (Prepare with one says why)"
    _, note = PrepareHandlers(A1111Host()).captioner_choices()      # the WebUI without the WD14 extension
    assert "wd14" in note.lower() and "install the WD14 tagger extension" in note
