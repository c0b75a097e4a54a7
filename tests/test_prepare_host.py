"""The host side of "Prepare dataset": the WebUI's captioners, focal crop and txt2img (against the
fake AUTOMATIC1111 1.10.1 in tests/fake_webui), and the standalone host's refusals."""
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from fake_webui_fixtures import model_loaded, webui  # noqa: E402,F401,I001  (first: the fake on sys.path)
from modules import call_queue, deepbooru, interrogate, paths, processing, shared  # noqa: E402
from modules.textual_inversion import autocrop  # noqa: E402

from extensions_lib.hosts import a1111 as a1111_mod  # noqa: E402
from extensions_lib.hosts.a1111 import A1111Host  # noqa: E402
from extensions_lib.hosts.a1111_prepare import wd14_caption  # noqa: E402
from extensions_lib.hosts.base import HostError, ImageRequest, PrepareProgress  # noqa: E402
from extensions_lib.hosts.standalone import StandaloneHost  # noqa: E402


def red(size=(64, 48)):
    return Image.new("RGB", size, (250, 10, 10))


def idle(state) -> bool:
    return state.job == "" and state.job_count == 0 and not state.interrupted and not call_queue.queue_lock.locked()


# ------------------------------------------------------------------------------ captioners

def test_captioners_lists_blip_and_deepbooru_and_asks_for_the_wd14_extension():
    found = A1111Host().captioners()
    assert found["blip"] == "" and found["deepbooru"] == ""
    assert "install the WD14 tagger extension" in found["wd14"]
    with pytest.raises(HostError, match="install the WD14 tagger extension"):
        with A1111Host().captioner("wd14"):
            pass
    with pytest.raises(HostError, match="unknown captioner 'clip'"):
        with A1111Host().captioner("clip"):
            pass


def test_blip_caption_is_the_blip_sentence_loaded_then_sent_to_ram_inside_our_job():
    host = A1111Host()
    with host.prepare_job("Captions", 2) as progress:
        with host.captioner("blip") as caption:
            assert "load_blip_model" in interrogate.events and "send_blip_to_ram" not in interrogate.events
            texts = [caption(red()), caption(Image.new("RGB", (32, 32), (0, 0, 255)))]
            progress.advance("a.png")
            # the job stays ours: the WebUI's interrogate() would have begun and ended its own job
            assert shared.state.job == "trainer_prepare" and shared.state.job_count == 2
            assert shared.state.job_no == 1 and "1/2" in shared.state.textinfo
    assert texts == ["a photo of a red square", "a photo of a blue square"]      # no CLIP flavours
    assert interrogate.events[-1] == "send_blip_to_ram"
    assert "load_clip_model" not in interrogate.events      # a caption needs no CLIP download
    assert idle(shared.state)


def test_deepbooru_tags_follow_the_webui_options_and_the_model_is_stopped():
    host = A1111Host()
    with host.captioner("deepbooru") as tag:
        assert deepbooru.events == ["load", "start"]
        default = tag(red())
        shared.opts.deepbooru_use_spaces = False
        shared.opts.deepbooru_escape = False
        shared.opts.deepbooru_sort_alpha = False
        shared.opts.interrogate_return_ranks = True        # ranks never go into a caption file
        by_score = tag(red())
    assert default == r"no humans, red background, simple background, smile \(expression\)"
    assert by_score == "red_background, simple_background, no_humans, smile_(expression)"
    assert deepbooru.events[-1] == "stop"


@pytest.mark.parametrize("name, module", [("blip", interrogate), ("deepbooru", deepbooru)])
def test_an_offline_loader_becomes_a_host_error_with_the_webui_message(name, module):
    module.offline = True
    with pytest.raises(HostError) as info:
        with A1111Host().captioner(name):
            pytest.fail("must not yield")
    text = str(info.value)
    assert module.OFFLINE_REASON in text and "Traceback" not in text
    assert "connect to the internet once" in text
    assert "stop" not in deepbooru.events          # nothing was started, nothing to stop


def test_a_failed_deepbooru_load_never_leaves_an_untrained_network_to_tag_with():
    """The WebUI's DeepDanbooru.load() sets its network before reading the weights file: after an offline
    failure its next start() tags at random (seen in the real WebUI: a second request 'succeeded')."""
    deepbooru.offline = True
    for _ in range(2):                             # the second try fails the same way, it does not tag
        with pytest.raises(HostError, match="could not load its DeepBooru model"):
            with A1111Host().captioner("deepbooru"):
                pytest.fail("must not yield")
    assert deepbooru.model.model is None           # nor is it left for the WebUI's own Interrogate button

    deepbooru.model.model = deepbooru._FakeDanbooruModel()     # left by the WebUI's own failed load
    deepbooru.model.model.untrained = True
    deepbooru.offline = False                      # and now the download works: loaded for real
    with A1111Host().captioner("deepbooru") as tag:
        assert tag(red()) != "untrained_guess"

    weights = Path(paths.models_path) / "torch_deepdanbooru" / "model-resnet_custom_v3.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    loaded = deepbooru.model.model
    with A1111Host().captioner("deepbooru"):       # with the file on disk, a loaded network is kept
        assert deepbooru.model.model is loaded


def test_wd14_tagger_extension_when_loaded(monkeypatch):
    class WaifuDiffusionInterrogator:        # the extension's interface: interrogate -> (ratings, tags)
        def __init__(self):
            self.model, self.loads, self.unloads = None, 0, 0

        def load(self):
            self.loads += 1
            self.model = object()

        def unload(self):
            self.unloads += 1
            self.model = None
            return True

        def interrogate(self, image):
            return {"general": 0.9}, {"solo": 0.5, "long_hair": 0.8, "blush": 0.2, "red_eyes": 0.35}

    tagger = WaifuDiffusionInterrogator()
    utils = types.ModuleType("tagger.utils")
    utils.interrogators = {}
    utils.refresh_interrogators = lambda: utils.interrogators.update({"wd14-vit.v2": tagger})
    monkeypatch.setitem(sys.modules, "tagger.utils", utils)
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert "needs onnxruntime" in A1111Host().captioners()["wd14"]     # we never install it

    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    assert A1111Host().captioners()["wd14"] == ""
    with A1111Host().captioner("wd14") as tag:
        assert tagger.loads == 1
        assert tag(red()) == "long hair, solo, red eyes"
    assert tagger.unloads == 1


def test_wd14_caption_threshold_order_and_spaces():
    assert wd14_caption({"a_b": 0.4, "c": 0.9, "d": 0.34}) == "c, a b"
    assert wd14_caption({"x": 0.1}) == ""


# ------------------------------------------------------------------------------ the job and txt2img

def test_generate_images_under_the_queue_lock_with_a_webui_job(model_loaded):
    host = A1111Host()
    requests = [ImageRequest("<lora:mine:1> a photo of a dog", negative_prompt="blurry", width=64, height=32,
                             steps=4, seed=s) for s in (1, 2, 3)]
    images, seen = [], []
    with host.prepare_job("Class images", 3) as progress:
        for image in host.generate_images(requests, progress):
            seen.append((shared.state.job_no, shared.state.job_count))
            assert call_queue.queue_lock.locked()
            images.append(image)
    assert [im.size for im in images] == [(64, 32)] * 3
    assert seen == [(1, 3), (2, 3), (3, 3)]          # one unit per image, not counted twice
    assert len(processing.calls) == 3
    for call, seed in zip(processing.calls, (1, 2, 3)):
        assert call["queue_lock_held"] and call["job_count"] == 3 and call["seed"] == seed
        assert call["do_not_save_samples"] and call["do_not_save_grid"] and call["scripts"] is None
        # the base model alone: the prompt's LoRA is dropped and the last generation's are unloaded
        assert call["prompt"] == "a photo of a dog" and call["extra_networks_activated"] == []
        assert call["sampler_name"] == "Euler a" and call["steps"] == 4 and call["negative_prompt"] == "blurry"
    assert images[0].getpixel((0, 0)) != images[1].getpixel((0, 0))      # different seeds
    assert idle(shared.state)


def test_interrupt_after_two_images_stops(model_loaded):
    host = A1111Host()
    got = []
    with host.prepare_job("Class images", 5) as progress:
        for image in host.generate_images([ImageRequest("a dog", seed=i, width=16, height=16) for i in range(5)],
                                          progress):
            got.append(image)
            if len(got) == 2:
                shared.state.interrupt()          # the WebUI's Interrupt button
        assert progress.stopped()
    assert len(got) == 2 and len(processing.calls) == 2
    assert idle(shared.state)                    # the flag does not leak into the next job


def test_interrupt_during_sampling_drops_the_half_done_image(model_loaded):
    host = A1111Host()
    processing.during_sampling = lambda: len(processing.calls) == 2 and shared.state.interrupt()
    with host.prepare_job("Class images", 3) as progress:
        got = list(host.generate_images([ImageRequest("a dog", seed=i, width=16, height=16) for i in range(3)],
                                        progress))
    assert len(got) == 1 and len(processing.calls) == 2


def test_request_stop_interrupts_the_webui_job(model_loaded):
    host = A1111Host()
    with host.prepare_job("Class images", 3) as progress:
        gen = host.generate_images([ImageRequest("a dog", seed=i, width=16, height=16) for i in range(3)], progress)
        next(gen)
        progress.request_stop()
        assert shared.state.interrupted
        assert list(gen) == []
    assert idle(shared.state)


def test_prepare_job_refused_while_a_training_runs():
    assert a1111_mod._TRAINING.acquire(blocking=False)
    try:
        with pytest.raises(HostError, match="training is already running"):
            with A1111Host().prepare_job("Captions", 1):
                pytest.fail("must not run")
        assert not call_queue.queue_lock.locked()
    finally:
        a1111_mod._TRAINING.release()


def test_generate_images_outside_prepare_job_is_refused(model_loaded):
    with pytest.raises(HostError, match="inside prepare_job"):
        A1111Host().generate_images([ImageRequest("a dog")], PrepareProgress("x", 1))
    with A1111Host().prepare_job("Class images", 1) as progress:
        pass
    with pytest.raises(HostError, match="inside prepare_job"):     # the job has ended
        A1111Host().generate_images([ImageRequest("a dog")], progress)


# ------------------------------------------------------------------------------ focal crop

def spot(size, at):
    im = Image.new("RGB", size, (40, 40, 40))
    im.putpixel(at, (255, 255, 255))
    return im


@pytest.mark.parametrize("size, target", [((300, 200), (128, 128)), ((200, 300), (128, 128)),
                                          ((333, 333), (96, 160)), ((300, 250), (256, 128)),
                                          ((250, 300), (128, 256)), ((100, 80), (200, 200))])
def test_focal_crop_gives_the_size_asked_without_padding(size, target):
    crop = A1111Host().focal_crop()
    out = crop(Image.new("RGB", size, (200, 180, 160)), *target)
    assert out.size == target
    assert out.getextrema() == ((200, 200), (180, 180), (160, 160))      # no black padding anywhere


@pytest.mark.parametrize("size, target", [((400, 100), (100, 100)), ((400, 300), (256, 128))])
def test_focal_crop_follows_the_focal_point(size, target):
    crop = A1111Host().focal_crop()
    out = crop(spot(size, (size[0] - 3, size[1] // 2)), *target)     # subject at the right edge
    assert out.size == target
    right = out.crop((out.width // 2, 0, out.width, out.height))
    assert max(right.convert("L").getdata()) > 100          # the crop sits on the right


def test_focal_crop_offline_face_model_means_face_weight_zero():
    A1111Host().focal_crop()(red((80, 60)), 32, 32)
    settings = [s for what, s in autocrop.calls if what == "crop_image"][-1]
    assert settings.face_points_weight == 0 and settings.dnn_model_path is None
    assert settings.entropy_points_weight == 0.15 and settings.corner_points_weight == 0.5


def test_focal_crop_uses_the_face_model_when_it_can_be_had(tmp_path):
    autocrop.face_model_online = True
    A1111Host().focal_crop()(red((80, 60)), 32, 32)
    settings = [s for what, s in autocrop.calls if what == "crop_image"][-1]
    assert settings.face_points_weight == 0.9 and settings.dnn_model_path == autocrop.model_file_path


def test_focal_crop_with_a_broken_face_model_file_goes_on_without_faces():
    Path(autocrop.model_file_path).parent.mkdir(parents=True, exist_ok=True)
    Path(autocrop.model_file_path).write_bytes(b"<html>")      # a failed download saved as the model
    crop = A1111Host().focal_crop()
    assert crop(red((80, 60)), 32, 32).size == (32, 32)
    assert crop(red((80, 60)), 32, 32).size == (32, 32)
    faces = [s.face_points_weight for what, s in autocrop.calls if what == "crop_image"]
    assert faces == [0.9, 0.0, 0.0]


# ------------------------------------------------------------------------------ standalone

def test_standalone_refusals_name_the_fix():
    host = StandaloneHost()
    reasons = host.captioners()
    assert set(reasons) == {"blip", "deepbooru", "wd14"}
    for name, reason in reasons.items():
        assert "need the AUTOMATIC1111 WebUI" in reason and "Trainer tab" in reason
        with pytest.raises(HostError, match="Trainer tab"):
            with host.captioner(name):
                pass
    assert host.focal_crop() is None
    with host.prepare_job("Class images", 2) as progress:
        progress.advance("a")
        assert progress.done == 1 and not progress.stopped()
        progress.request_stop()
        assert progress.stopped()
        with pytest.raises(HostError, match="class images need the WebUI's txt2img"):
            host.generate_images([ImageRequest("a dog")], progress)
