"""Real-host checks of the Prepare step and of training states, over the REST API of a running WebUI 1.10
(see test_realhost.py for the environment; skipped unless TRAINER_REALHOST_WEBUI is set).

- crop (the WebUI's focal-point crop) + split + flip of raw pictures into <repeats>_<token> <class>/;
- BLIP and DeepBooru reach the WebUI's own loaders: offline they cannot download their weights, and the
  answer is a 400 carrying the WebUI's message, with nothing written;
- class images from the WebUI's txt2img land in reg/1_<class>/ with captions, nothing in outputs/;
- ?wait=false prepares in the background and reports through GET /trainer/v1/prepare/status;
- the prepared folders train, and the LoRA is listed at once;
- a run with output.save_state adds nothing but the LoRA itself to the WebUI's Lora list.
"""
import os
import tempfile
import time
from pathlib import Path

import pytest

WEBUI = os.environ.get("TRAINER_REALHOST_WEBUI", "")
if not WEBUI:
    pytest.skip("real-host suite: set TRAINER_REALHOST_WEBUI", allow_module_level=True)

from PIL import Image, ImageDraw  # noqa: E402

from test_realhost import http  # noqa: E402

STAMP = time.strftime("%H%M%S")
SIZE = 128


@pytest.fixture(scope="module")
def work():
    root = Path(tempfile.mkdtemp(prefix="rh_prepare_"))
    raw = root / "raw"
    raw.mkdir()
    for i, (w, h) in enumerate([(640, 480), (480, 640), (1500, 500), (512, 512)]):
        img = Image.new("RGB", (w, h), (40 * i, 120, 200))
        ImageDraw.Draw(img).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(240, 200, 160))
        img.save(raw / f"p{i}.jpg")
    (raw / "p0.txt").write_text("a man with a beard, facial hair", encoding="utf-8")
    (raw / "broken.png").write_bytes(b"not a picture")
    return root


def _lora_names() -> set:
    code, body = http("GET", "/sdapi/v1/loras")
    assert code == 200, body
    return {entry["name"] for entry in body}


def _wait_done(job_id: str, timeout: float = 1800) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, st = http("GET", "/trainer/v1/status?losses=false")
        if code == 200 and st.get("job_id") == job_id and st.get("state") in ("done", "stopped", "error"):
            return st
        time.sleep(3)
    pytest.fail(f"training {job_id} did not end within {timeout} s")


def test_focal_crop_split_and_flip(work):
    body = {"source_dir": str(work / "raw"), "dataset_dir": str(work / "dataset"), "token": "sks",
            "class_word": "man", "repeats": 5, "width": SIZE, "height": SIZE, "mode": "focal",
            "split_oversized": True, "flip": True}
    code, report = http("POST", "/trainer/v1/prepare", body)
    assert code == 200, report
    print("\nprepare:", report["summary"])
    folder = Path(report["folder"])
    assert folder == work / "dataset" / "5_sks man"
    pngs = sorted(folder.glob("*.png"))
    # 3 pictures + 4 tiles of the 3:1 one, each with its mirror image
    assert report["images"] == len(pngs) == 14
    assert all(Image.open(p).size == (SIZE, SIZE) for p in pngs)
    assert [Path(p).name for p, _ in report["skipped"]] == ["broken.png"]
    assert (folder / "p0.txt").read_text(encoding="utf-8").startswith("sks, a man with a beard")


@pytest.mark.parametrize("captioner", ["blip", "deepbooru"])
def test_captioners_reach_the_webui_loader(work, captioner):
    """Offline the WebUI cannot fetch the weights: its own message comes back, and nothing is written.
    (With the weights in place this returns 200 with the captions.)"""
    target = work / f"captions_{captioner}"
    body = {"source_dir": str(work / "raw"), "dataset_dir": str(target), "token": "sks", "class_word": "man",
            "width": SIZE, "height": SIZE, "captioner": captioner}
    for attempt in (1, 2):      # a failed load must fail again, not leave a half-loaded model to caption with
        code, answer = http("POST", "/trainer/v1/prepare", body)
        print(f"\n{captioner} ({attempt}): {code} {answer if code != 200 else answer['summary']}")
        if code == 200:
            assert answer["captioned"] == answer["images"]
            return
        assert code == 400 and "could not load" in answer["error"], answer
        assert "Traceback" not in answer["error"]
        assert not target.exists()


def _prepare_ended(timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        code, st = http("GET", "/trainer/v1/prepare/status")
        assert code == 200, st
        if st["state"] != "running":
            return st
        time.sleep(0.5)
    pytest.fail(f"the background preparation did not end within {timeout} s")


def test_prepare_in_the_background_reports_through_its_status(work):
    """?wait=false answers 202 at once; the status ends with the report, or with the WebUI's own message
    when a captioner cannot load (nothing written)."""
    body = {"source_dir": str(work / "raw"), "dataset_dir": str(work / "background"), "token": "sks",
            "class_word": "man", "width": SIZE, "height": SIZE, "flip": True}
    code, answer = http("POST", "/trainer/v1/prepare?wait=false", body)
    assert code == 202 and answer["status"]["state"] in ("running", "done"), answer
    st = _prepare_ended()
    print("\nbackground prepare:", st["state"], st["report"] and st["report"]["summary"])
    assert st["state"] == "done" and st["report"]["images"] == 8, st
    assert len(list((work / "background" / "10_sks man").glob("*.png"))) == 8

    target = work / "background_tags"
    code, answer = http("POST", "/trainer/v1/prepare?wait=false", dict(body, dataset_dir=str(target),
                                                                      captioner="deepbooru"))
    assert code == 202, answer
    st = _prepare_ended()
    print("background deepbooru:", st["state"], st["error"][:200])
    if not any((Path(WEBUI) / "models" / "torch_deepdanbooru").glob("*.pt")):      # offline: no weights
        assert st["state"] == "error" and "could not load" in st["error"] and not target.exists(), st
    else:
        assert st["state"] == "done" and st["report"]["captioned"] == 8, st


def test_class_images_from_txt2img_then_the_prepared_folders_train(work):
    outputs = Path(WEBUI) / "outputs"
    before = {p for p in outputs.rglob("*") if p.is_file()} if outputs.exists() else set()
    body = {"source_dir": str(work / "raw"), "dataset_dir": str(work / "train"), "token": "sks",
            "class_word": "man", "repeats": 2, "width": SIZE, "height": SIZE, "make_class_images": True, "class_images": 2,
            "class_steps": 3, "class_prompt": "a photo of a man"}
    code, report = http("POST", "/trainer/v1/prepare", body)
    assert code == 200, report
    reg = Path(report["class_dir"])
    assert reg == work / "reg" / "1_man" and report["class_images_made"] == 2
    made = sorted(reg.glob("*.png"))
    assert len(made) == 2 and all(Image.open(p).size == (SIZE, SIZE) for p in made)
    assert all(p.with_suffix(".txt").read_text(encoding="utf-8").strip() == "a photo of a man" for p in made)
    after = {p for p in outputs.rglob("*") if p.is_file()} if outputs.exists() else set()
    assert after == before, "class images must not be saved to the WebUI's outputs/"

    name = f"rhprep_{STAMP}"
    listed_before = _lora_names()
    cfg = {"data": {"train_dir": str(work / "train"), "reg_dir": str(work / "reg"), "resolution": SIZE,
                    "enable_buckets": False},
           "network": {"method": "lora", "dim": 4, "alpha": 4},
           "training": {"max_train_steps": 4, "mixed_precision": "no"},
           "output": {"name": name, "save_state": True, "save_every_n_steps": 2}}
    code, started = http("POST", "/trainer/v1/train", cfg)
    assert code == 200, started
    st = _wait_done(started["job_id"])
    assert st["state"] == "done", st.get("error")
    out = Path(st["output_path"])
    assert out.is_file() and (out.parent / f"{name}-state" / "weights.state").is_file()
    new = _lora_names() - listed_before
    print(f"\nnew Lora list entries: {sorted(new)}")
    # the LoRA and its step-2 save; nothing from the state folder
    assert new == {name, f"{name}-step00000002"}, new
