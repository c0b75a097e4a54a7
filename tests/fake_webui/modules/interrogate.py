"""Fake of modules/interrogate.py (1.10.1): the BLIP + CLIP interrogator behind shared.interrogator.

Same names as the real `InterrogateModels(content_dir)`: `blip_model`, `clip_model`, `dtype`,
`running_on_cpu`; `load_blip_model()` (real: downloads model_base_caption_capfilt_large.pth into
models/BLIP through modelloader on first use), `load_clip_model()`, `load()` (both, moved to
devices.device_interrogate), `send_blip_to_ram()` / `send_clip_to_ram()` (unless
opts.interrogate_keep_models_in_memory), `unload()` (both + torch_gc), `generate_caption(pil)` (the
BLIP sentence), `interrogate(pil)` (its own shared.state job: begin()/end(); the caption plus ", "
and the best CLIP matches; an error is reported and "<error>" appended, never raised).

Fake models: tiny torch modules; the caption names the image's mean colour ("a photo of a red
square"), the CLIP part is ", flat colour". Fake-only: `offline` (True: load_blip_model /
load_clip_model raise urllib's URLError as torch.hub's download does without a network),
`events` (what happened, in order), `reset()`.
"""
import urllib.error

import torch

from modules import devices, errors, shared

offline = False
events: list = []

OFFLINE_REASON = "[Errno -3] Temporary failure in name resolution"

COLOUR_NAMES = {
    (255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue", (255, 255, 255): "white",
    (0, 0, 0): "black", (255, 255, 0): "yellow", (128, 128, 128): "grey",
}


def colour_name(pil_image) -> str:
    """The name of the reference colour nearest to the image's mean colour."""
    rgb = pil_image.convert("RGB").resize((8, 8))
    pixels = list(rgb.getdata())
    mean = [sum(p[i] for p in pixels) / len(pixels) for i in range(3)]
    best = min(COLOUR_NAMES, key=lambda c: sum((c[i] - mean[i]) ** 2 for i in range(3)))
    return COLOUR_NAMES[best]


class _FakeBlip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)


class InterrogateModels:
    blip_model = None
    clip_model = None
    clip_preprocess = None
    dtype = None
    running_on_cpu = None

    def __init__(self, content_dir):
        self.loaded_categories = None
        self.skip_categories = []
        self.content_dir = content_dir
        self.running_on_cpu = devices.device_interrogate == torch.device("cpu")

    def load_blip_model(self):
        events.append("load_blip_model")
        if offline:
            raise urllib.error.URLError(OFFLINE_REASON)
        model = _FakeBlip()
        model.eval()
        return model

    def load_clip_model(self):
        events.append("load_clip_model")
        if offline:
            raise urllib.error.URLError(OFFLINE_REASON)
        model = _FakeBlip().eval().to(devices.device_interrogate)
        return model, (lambda image: torch.zeros(3, 8, 8))

    def load(self):
        if self.blip_model is None:
            self.blip_model = self.load_blip_model()
            if not shared.cmd_opts.no_half and not self.running_on_cpu:
                self.blip_model = self.blip_model.half()
        self.blip_model = self.blip_model.to(devices.device_interrogate)
        if self.clip_model is None:
            self.clip_model, self.clip_preprocess = self.load_clip_model()
            if not shared.cmd_opts.no_half and not self.running_on_cpu:
                self.clip_model = self.clip_model.half()
        self.clip_model = self.clip_model.to(devices.device_interrogate)
        self.dtype = next(self.clip_model.parameters()).dtype

    def send_clip_to_ram(self):
        if not shared.opts.interrogate_keep_models_in_memory:
            if self.clip_model is not None:
                events.append("send_clip_to_ram")
                self.clip_model = self.clip_model.to(devices.cpu)

    def send_blip_to_ram(self):
        if not shared.opts.interrogate_keep_models_in_memory:
            if self.blip_model is not None:
                events.append("send_blip_to_ram")
                self.blip_model = self.blip_model.to(devices.cpu)

    def unload(self):
        self.send_clip_to_ram()
        self.send_blip_to_ram()
        devices.torch_gc()

    def generate_caption(self, pil_image):
        # the real one runs BLIP on the image converted to self.dtype: both must be set by now
        if self.blip_model is None or self.dtype is None:
            raise AttributeError("'NoneType' object has no attribute 'generate'")
        events.append("generate_caption")
        return f"a photo of a {colour_name(pil_image)} square"

    def interrogate(self, pil_image):
        res = ""
        shared.state.begin(job="interrogate")
        try:
            self.load()
            caption = self.generate_caption(pil_image)
            self.send_blip_to_ram()
            devices.torch_gc()
            res = caption
            res += ", flat colour"
        except Exception:
            errors.report("Error interrogating", exc_info=True)
            res += "<error>"
        self.unload()
        shared.state.end()
        return res


def reset():
    """Fake-only: online again, no events."""
    global offline
    offline = False
    events.clear()
