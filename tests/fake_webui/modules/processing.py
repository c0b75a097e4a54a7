"""Fake of modules/processing.py (1.10.1): only the prompt-conditioning caches.

Real: `StableDiffusionProcessing` (a dataclass) keeps `cached_uc` and `cached_c` as plain class
attributes, each a 2-item list `[key, conditioning]` shared by every request; `setup_conds()`
reuses the cached conditioning when the key (prompts, steps, styles, checkpoint, extra-network
data, ...) is unchanged. The key does not cover the embedding database or hypernetwork files, so a
rewritten embedding keeps its old conditioning until someone resets the lists to `[None, None]`.
`StableDiffusionProcessingTxt2Img` adds `cached_hr_uc` / `cached_hr_c` for the hires pass.

No image generation here. Fake-only: `reset()` empties every cache.
"""


class StableDiffusionProcessing:
    cached_uc = [None, None]
    cached_c = [None, None]


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    pass


def reset():
    StableDiffusionProcessing.cached_uc = [None, None]
    StableDiffusionProcessing.cached_c = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
