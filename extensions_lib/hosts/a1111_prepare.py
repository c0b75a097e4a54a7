"""Preparing a dataset with the AUTOMATIC1111 WebUI's (1.10) own tools.

- captioners / captioner: BLIP (`shared.interrogator`, the caption alone, without the CLIP
  flavours its interrogate() appends), DeepBooru (`modules.deepbooru.model`, tags formatted by the
  WebUI's own interrogate options) and, when that extension is installed and loaded, the WD14 tagger
  (`tagger.utils.interrogators`). A loader that fails (weights not downloadable offline, …)
  becomes a HostError carrying the WebUI's own message.
- focal_crop: `modules.textual_inversion.autocrop` (the Extras tab's "Auto focal point crop").
- prepare_job: the WebUI's GPU queue (`call_queue.queue_lock`) and a `shared.state` job, so its
  progress bar counts the units and its Interrupt button stops the step.
- generate_images: class images with the WebUI's own txt2img on the loaded checkpoint.

Every `modules.*` import happens inside a function: importing this file needs no WebUI.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from .a1111_progress import webui_job
from .base import CAPTIONERS, HostError, ImageRequest, PrepareProgress

JOB_NAME = "trainer_prepare"

# The Extras tab's defaults for its "Auto focal point crop" (postprocessing_focal_crop.py)
FACE_WEIGHT, ENTROPY_WEIGHT, EDGES_WEIGHT = 0.9, 0.15, 0.5

# WD14 tagger (toriato's extension and its forks, e.g. picobyte's): models in the order we prefer
# them; the key spelling differs between the forks
WD14_PREFERRED = ("wd14-vit-v2", "wd14-vit.v2", "wd14-convnext-v2", "wd14-convnext.v2",
                  "wd14-convnextv2-v2", "wd14-convnextv2.v1", "wd14-swinv2-v2", "wd14-swinv2-v1")
WD14_THRESHOLD = 0.35
WD14_MISSING = ("install the WD14 tagger extension (Extensions tab: stable-diffusion-webui-wd14-tagger) "
                "and restart the WebUI to tag with WD14")

# <lora:name:1> and the like: class images come from the base model alone
EXTRA_NETWORK = re.compile(r"<\w+:[^<>]+>")


# -- the job ------------------------------------------------------------------------------------------
class WebUIPrepareProgress(PrepareProgress):
    """Counts into `shared.state` while the job is ours; the WebUI's Interrupt (or the
    stop-generating button) reads as stopped()."""

    def __init__(self, label: str, total: int, state):
        super().__init__(label, total)
        self._state = state
        self.active = True           # False once prepare_job has ended: the state is not ours

    def advance(self, text: str = "") -> None:
        super().advance(text)
        if not self.active:
            return
        state = self._state
        # absolute, not +1: process_images already counted its own image with state.nextjob()
        state.job_no = self.done
        state.sampling_step = 0
        state.job = JOB_NAME
        state.textinfo = f"{self.label}: {self.done}/{self.total}" + (f" ({text})" if text else "")

    def set_total(self, total: int) -> None:
        super().set_total(total)
        if self.active:
            self._state.job_count = max(1, self.total)

    def stopped(self) -> bool:
        if super().stopped():
            return True
        state = self._state
        return self.active and bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))

    def request_stop(self) -> None:
        super().request_stop()
        if self.active:
            self._state.interrupted = True      # also ends a txt2img sampling in progress early


@contextmanager
def prepare_job(label: str, total: int, training_lock, busy: str) -> Iterator[WebUIPrepareProgress]:
    """Hold the GPU queue and a WebUI job of `total` units (a1111_progress.webui_job); refuse while a
    training runs (`training_lock` is held for the whole of a training)."""
    if training_lock.locked():
        raise HostError(busy)
    # the progress bar shows only when job_count > 0
    with webui_job(JOB_NAME, max(1, int(total)), f"{label}: 0/{int(total)}") as state:
        progress = WebUIPrepareProgress(label, total, state)
        try:
            yield progress
        finally:
            progress.active = False


# -- captions ---------------------------------------------------------------------------------------
def captioners() -> dict[str, str]:
    return {"blip": _blip_refusal(), "deepbooru": _deepbooru_refusal(), "wd14": _wd14()[1]}


@contextmanager
def captioner(name: str) -> Iterator[Callable]:
    if name not in CAPTIONERS:
        raise HostError(f"unknown captioner {name!r}; expected one of {', '.join(CAPTIONERS)}")
    reason = captioners()[name]
    if reason:
        raise HostError(reason)
    loaders = {"blip": _blip, "deepbooru": _deepbooru, "wd14": _wd14_tagger}
    with loaders[name]() as caption:
        yield caption


def _message(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _blip_refusal() -> str:
    try:
        from modules import shared
    except ImportError as e:
        return f"BLIP: the WebUI's modules cannot be imported ({e})"
    if getattr(shared, "interrogator", None) is None:
        return "BLIP: the WebUI has no interrogator (shared.interrogator is not set up): restart the WebUI"
    return ""


@contextmanager
def _blip() -> Iterator[Callable]:
    """BLIP only, loaded as InterrogateModels.load() loads it (half precision on a GPU unless
    --no-half) but without the CLIP model, which a caption does not need and which is a second
    download; afterwards send_blip_to_ram() (which keeps it in VRAM when the WebUI's setting
    "Keep models in VRAM" is on)."""
    from modules import devices, shared

    interrogator = shared.interrogator
    _models_to_cpu_if_lowvram()
    try:
        if interrogator.blip_model is None:
            model = interrogator.load_blip_model()
            if not getattr(shared.cmd_opts, "no_half", False) and not interrogator.running_on_cpu:
                model = model.half()
            interrogator.blip_model = model
        interrogator.blip_model = interrogator.blip_model.to(devices.device_interrogate)
        interrogator.dtype = next(interrogator.blip_model.parameters()).dtype
    except Exception as e:  # noqa: BLE001 - the WebUI's loader: download, file, memory errors
        raise HostError(f"BLIP: the WebUI could not load its BLIP model: {_message(e)} (it downloads "
                        "model_base_caption_capfilt_large.pth into models/BLIP on first use: connect to the "
                        "internet once, or put that file there)") from None
    try:
        yield lambda image: str(interrogator.generate_caption(image.convert("RGB"))).strip()
    finally:
        interrogator.send_blip_to_ram()
        devices.torch_gc()


def _deepbooru_refusal() -> str:
    try:
        from modules import deepbooru
    except Exception as e:  # noqa: BLE001 - any import failure means: not here
        return f"DeepBooru: the WebUI's modules.deepbooru cannot be imported ({_message(e)})"
    if getattr(deepbooru, "model", None) is None:
        return "DeepBooru: the WebUI has no DeepBooru model object (modules.deepbooru.model)"
    return ""


@contextmanager
def _deepbooru() -> Iterator[Callable]:
    """model.start() loads (downloading on first use) and moves it to the GPU; tag_multi formats
    the tags by the WebUI's settings (threshold, sort, spaces, escape, filter); ranks are left out
    since they do not belong in a caption file; model.stop() moves it back unless "Keep models in
    VRAM" is on."""
    from modules import deepbooru

    model = deepbooru.model
    # The WebUI's load() builds the network before it reads the weights file, so a failed load (ours, or
    # its own Interrogate button's) leaves an untrained network that the next start() would tag with at
    # random. Without the file on disk any network held is such a leftover: drop it, load again.
    if getattr(model, "model", None) is not None and not _deepbooru_weights_on_disk():
        model.model = None
    _models_to_cpu_if_lowvram()
    try:
        model.start()
    except Exception as e:  # noqa: BLE001 - the WebUI's loader: download, file, memory errors
        model.model = None      # never leave the half-loaded network for the next try
        raise HostError(f"DeepBooru: the WebUI could not load its DeepBooru model: {_message(e)} (it downloads "
                        "model-resnet_custom_v3.pt into models/torch_deepdanbooru on first use: connect to the "
                        "internet once, or put that file there)") from None
    try:
        yield lambda image: str(model.tag_multi(image, force_disable_ranks=True))
    finally:
        model.stop()


def _deepbooru_weights_on_disk() -> bool:
    """Whether models/torch_deepdanbooru holds a .pt file, where the WebUI's loader reads its weights."""
    from modules import paths

    return any((Path(paths.models_path) / "torch_deepdanbooru").glob("*.pt"))


def _wd14() -> tuple[Optional[object], str]:
    """(interrogator, '') when the WD14 tagger extension is loaded in this WebUI and can run
    without installing anything, else (None, reason). Only a module the WebUI already imported is
    used: importing the extension ourselves could run its installers."""
    utils = sys.modules.get("tagger.utils")
    if utils is None or not hasattr(utils, "interrogators"):
        return None, f"WD14: {WD14_MISSING}"
    interrogators = getattr(utils, "interrogators", None) or {}
    if not interrogators and callable(getattr(utils, "refresh_interrogators", None)):
        try:
            utils.refresh_interrogators()          # toriato's version fills the dict only here
        except Exception as e:  # noqa: BLE001 - an extension's own failure
            return None, f"WD14: the WD14 tagger extension could not list its models: {_message(e)}"
        interrogators = getattr(utils, "interrogators", None) or {}
    chosen = next((interrogators[k] for k in WD14_PREFERRED if k in interrogators), None)
    if chosen is None:
        chosen = next((v for k, v in sorted(interrogators.items())
                       if type(v).__name__ == "WaifuDiffusionInterrogator"), None)
    if chosen is None:
        return None, "WD14: the WD14 tagger extension offers no WD14 model here; pick one in its Tagger tab once"
    if not _importable("onnxruntime"):
        # the extension would pip-install it on first use; we install nothing
        return None, ("WD14: the WD14 tagger extension needs onnxruntime, which is not installed in the WebUI's "
                      "Python: open the Tagger tab once (it installs it), or pip install onnxruntime-gpu")
    return chosen, ""


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextmanager
def _wd14_tagger() -> Iterator[Callable]:
    """The extension's Interrogator: interrogate(image) -> (ratings, tags), each name -> confidence;
    load() (downloads from the Hugging Face hub on first use) and unload()."""
    tagger, reason = _wd14()
    if tagger is None:
        raise HostError(reason)
    try:
        if getattr(tagger, "model", None) is None:
            tagger.load()
    except Exception as e:  # noqa: BLE001 - the extension's loader: download, file, memory errors
        raise HostError(f"WD14: the WD14 tagger extension could not load its model: {_message(e)} (it downloads "
                        "from huggingface.co on first use: connect to the internet once)") from None

    def tag(image) -> str:
        _, confidences = tagger.interrogate(image.convert("RGB"))
        return wd14_caption(confidences)

    try:
        yield tag
    finally:
        tagger.unload()


def wd14_caption(confidences: dict, threshold: float = WD14_THRESHOLD) -> str:
    """Tags at or above the threshold, most confident first, underscores as spaces."""
    kept = sorted(((str(t), float(c)) for t, c in confidences.items() if float(c) >= threshold),
                  key=lambda tc: -tc[1])
    return ", ".join(t.replace("_", " ") for t, _ in kept)


def _models_to_cpu_if_lowvram() -> None:
    """With --lowvram/--medvram a part of the checkpoint may sit in VRAM: the WebUI's own
    interrogate moves it out first (a no-op otherwise)."""
    try:
        from modules import lowvram
    except ImportError:
        return
    send = getattr(lowvram, "send_everything_to_cpu", None)
    if send is not None:
        send()


# -- focal-point crop -------------------------------------------------------------------------------
def focal_crop() -> Optional[Callable]:
    try:
        from modules.textual_inversion import autocrop
    except Exception:  # noqa: BLE001 - e.g. opencv missing: the caller crops the centre
        return None
    face_model = [_face_model(autocrop)]     # None: the faces term is left out (weight 0)

    def crop(image, width: int, height: int):
        width, height = int(width), int(height)
        if image.mode != "RGB":
            image = image.convert("RGB")        # face detection wants 3 channels
        scaled = _cover(image, width, height)
        try:
            out = _crop(autocrop, scaled, width, height, face_model[0])
        except Exception as e:  # noqa: BLE001 - a bad face model file (cv2.error): crop without faces
            if face_model[0] is None:
                raise
            print(f"[trainer] the WebUI's face detection model failed ({_message(e)}); focal-point crops "
                  "go on without faces", file=sys.stderr)
            face_model[0] = None
            out = _crop(autocrop, scaled, width, height, None)
        return out if out.size == (width, height) else out.resize((width, height))

    return crop


def _face_model(autocrop) -> Optional[str]:
    path = getattr(autocrop, "model_file_path", None)
    if path and os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    try:
        return autocrop.download_and_cache_models()
    except Exception as e:  # noqa: BLE001 - offline: crop without faces
        # (not the WebUI's fallback to OpenCV's Haar cascades: in 1.10 that path raises as soon as it finds a face)
        print(f"[trainer] the WebUI's face detection model could not be had ({_message(e)}); focal-point "
              "crops go on without faces", file=sys.stderr)
        return None


def _cover(image, width: int, height: int):
    """The smallest resize that covers width x height (one side exact)."""
    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if size == image.size:
        return image
    from PIL import Image

    return image.resize(size, Image.LANCZOS)


def _crop(autocrop, image, width: int, height: int, face_model: Optional[str]):
    settings = autocrop.Settings(crop_width=width, crop_height=height,
                                 face_points_weight=FACE_WEIGHT if face_model else 0.0,
                                 entropy_points_weight=ENTROPY_WEIGHT, corner_points_weight=EDGES_WEIGHT,
                                 annotate_image=False, dnn_model_path=face_model)
    if _webui_keeps_size(image.width, image.height, width, height):
        return autocrop.crop_image(image, settings)[0]
    # crop_image would shrink a covering image that is wider (taller) than the target but not by
    # enough, and pad its crop with black: place the window on the same focal point ourselves
    focus = autocrop.focal_point(image.copy(), settings)
    x = min(max(int(focus.x) - width // 2, 0), image.width - width)
    y = min(max(int(focus.y) - height // 2, 0), image.height - height)
    return image.crop((x, y, x + width, y + height))


def _webui_keeps_size(w: int, h: int, tw: int, th: int) -> bool:
    """Whether autocrop.crop_image leaves a w x h image at its size: it scales a landscape image to the
    target height, a portrait one to the target width, a square one by the target's longer side."""
    if w > h:
        return h == th
    if h > w:
        return w == tw
    return w == max(tw, th)


# -- class images -----------------------------------------------------------------------------------
def generate_images(requests: list[ImageRequest], progress: PrepareProgress) -> Iterator:
    if not isinstance(progress, WebUIPrepareProgress) or not progress.active:
        raise HostError("class images: generate_images must run inside prepare_job (it needs the WebUI's GPU queue)")
    return _generate(list(requests), progress)


def _generate(requests: list[ImageRequest], progress: WebUIPrepareProgress) -> Iterator:
    from modules import processing, shared

    for i, req in enumerate(requests):
        if progress.stopped():
            return
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model,
            prompt=_plain(req.prompt), negative_prompt=_plain(req.negative_prompt),
            width=int(req.width), height=int(req.height), steps=int(req.steps), cfg_scale=float(req.cfg_scale),
            seed=int(req.seed), sampler_name=req.sampler_name, batch_size=1, n_iter=1,
            do_not_save_samples=True, do_not_save_grid=True)
        # no scripts (p.scripts stays None). Extra networks stay enabled on purpose: with an empty
        # list their activation unloads the LoRAs the last generation used, which would otherwise
        # still be applied (disable_extra_networks=True skips that step)
        try:
            processed = processing.process_images(p)
        finally:
            p.close()
        if progress.stopped():
            return     # an interrupted sampler returns a half-denoised image: not a class image
        if not processed.images:
            raise HostError(f"class images: the WebUI's txt2img returned no image for {req.prompt!r}")
        progress.advance(f"class image {i + 1}/{len(requests)}")
        yield processed.images[0]


def _plain(prompt: str) -> str:
    return EXTRA_NETWORK.sub("", prompt or "").strip()
