"""Fake of modules/deepbooru.py (1.10.1): `DeepDanbooru` and the module-level `model`, `re_special`.

Same contract as the real one: `load()` (real: downloads model-resnet_custom_v3.pt into
models/torch_deepdanbooru through modelloader on first use, then builds the network on the CPU),
`start()` (load + move to devices.device), `stop()` (back to the CPU + torch_gc unless
opts.interrogate_keep_models_in_memory), `tag(pil)` (start, tag_multi, stop),
`tag_multi(pil, force_disable_ranks=False)` formats by the WebUI's options exactly as the real one:
drops tags under `interrogate_deepbooru_score_threshold` and every `rating:*` tag, sorts by name
(`deepbooru_sort_alpha`) or by score, drops `deepbooru_filter_tags`, then underscores -> spaces
(`deepbooru_use_spaces`), escapes ( ) \\ (`deepbooru_escape`), and writes `(tag:0.900)` when
`interrogate_return_ranks` is on and ranks are not disabled; joined with ", ".

As in the real one, load() builds the network before it reads the weights: offline the real
modelloader finds no file and `files[0]` raises IndexError with `self.model` already set to an
untrained network, which the next start() then uses as if loaded.

Fake network: the scores come from the image's mean colour (see `scores_for`); a network left by a
failed load tags everything "untrained_guess". Fake-only: `offline` (True: load() fails as the real
one does offline), `events`, `reset()`.
"""
import re

import torch

from modules import devices, shared

re_special = re.compile(r'([\\()])')

offline = False
events: list = []

OFFLINE_REASON = "list index out of range"     # what the real load() raises offline (files[0] of [])


def scores_for(pil_image) -> dict:
    """Deterministic fake scores: '<colour>_background' 0.9, 'simple_background' 0.8,
    'no_humans' 0.6, 'smile_(expression)' 0.55, 'solo' 0.3, 'rating:safe' 0.95."""
    from modules.interrogate import colour_name

    return {f"{colour_name(pil_image)}_background": 0.9, "simple_background": 0.8, "no_humans": 0.6,
            "smile_(expression)": 0.55, "solo": 0.3, "rating:safe": 0.95}


class _FakeDanbooruModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 6)
        self.untrained = False


class DeepDanbooru:
    def __init__(self):
        self.model = None

    def load(self):
        if self.model is not None:
            return
        events.append("load")
        self.model = _FakeDanbooruModel()
        if offline:
            self.model.untrained = True
            raise IndexError(OFFLINE_REASON)
        self.model.eval()
        self.model.to(devices.cpu, devices.dtype)

    def start(self):
        self.load()
        events.append("start")
        self.model.to(devices.device)

    def stop(self):
        if not shared.opts.interrogate_keep_models_in_memory:
            events.append("stop")
            self.model.to(devices.cpu)
            devices.torch_gc()

    def tag(self, pil_image):
        self.start()
        res = self.tag_multi(pil_image)
        self.stop()
        return res

    def tag_multi(self, pil_image, force_disable_ranks=False):
        if self.model is None:
            raise AttributeError("'NoneType' object is not callable")   # the real one calls self.model(x)
        events.append("tag_multi")
        if self.model.untrained:
            return "untrained_guess"
        threshold = shared.opts.interrogate_deepbooru_score_threshold
        use_spaces = shared.opts.deepbooru_use_spaces
        use_escape = shared.opts.deepbooru_escape
        alpha_sort = shared.opts.deepbooru_sort_alpha
        include_ranks = shared.opts.interrogate_return_ranks and not force_disable_ranks

        scores = {t: p for t, p in scores_for(pil_image).items() if p >= threshold and not t.startswith("rating:")}
        tags = sorted(scores) if alpha_sort else sorted(scores, key=lambda t: -scores[t])
        filtered = {x.strip().replace(' ', '_') for x in shared.opts.deepbooru_filter_tags.split(",")}
        out = []
        for tag in tags:
            if tag in filtered:
                continue
            text = tag.replace('_', ' ') if use_spaces else tag
            if use_escape:
                text = re_special.sub(r'\\\1', text)
            if include_ranks:
                text = f"({text}:{scores[tag]:.3f})"
            out.append(text)
        return ", ".join(out)


model = DeepDanbooru()


def reset():
    """Fake-only: a fresh unloaded model, online, no events."""
    global model, offline
    model = DeepDanbooru()
    offline = False
    events.clear()
