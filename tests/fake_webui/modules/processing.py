"""Fake of modules/processing.py (1.10.1): the prompt-conditioning caches and a fake txt2img.

Real: `StableDiffusionProcessing` (a dataclass) keeps `cached_uc` and `cached_c` as plain class
attributes, each a 2-item list `[key, conditioning]` shared by every request; `setup_conds()`
reuses the cached conditioning when the key (prompts, steps, styles, checkpoint, extra-network
data, ...) is unchanged. The key does not cover the embedding database or hypernetwork files, so a
rewritten embedding keeps its old conditioning until someone resets the lists to `[None, None]`.
`StableDiffusionProcessingTxt2Img` adds `cached_hr_uc` / `cached_hr_c` for the hires pass.

txt2img: `StableDiffusionProcessingTxt2Img(**fields)` takes the real dataclass's init fields (an unknown
keyword is a TypeError, as with the dataclass), `scripts` None, `close()`; `process_images(p)` returns a
`Processed` whose `.images` holds one generated image per batch item, with the real order of effects
on shared.state: interrupted / stopping_generation before the batch -> no image; `state.job` becomes
"Batch 1 out of 1", sampling_step runs to `steps`, `state.nextjob()` after the batch; with
job_count == -1 it becomes n_iter. Extra networks: `<name:args>` is removed from the prompt and,
unless `disable_extra_networks`, the networks are activated (here: recorded).
Fake sampler: a flat image whose colour comes from (prompt, seed); seed -1 picks a random seed as
the real get_fixed_seed does. Fake-only: `calls` (one dict per process_images: the fields, whether
`call_queue.queue_lock` was held, state.job_count, extra networks activated),
`during_sampling` (a callable run mid-sampling, e.g. to press Interrupt: the real sampler then stops
early and the half-denoised image is still returned), `reset()` empties the caches and these.
"""
import random
import re
import zlib

from PIL import Image


calls: list = []
during_sampling = None

# init fields of the real dataclass and their defaults
PROCESSING_FIELDS = {
    "sd_model": None, "outpath_samples": None, "outpath_grids": None, "prompt": "", "prompt_for_display": None,
    "negative_prompt": "", "styles": None, "seed": -1, "subseed": -1, "subseed_strength": 0,
    "seed_resize_from_h": -1, "seed_resize_from_w": -1, "seed_enable_extras": True, "sampler_name": None,
    "scheduler": None, "batch_size": 1, "n_iter": 1, "steps": 50, "cfg_scale": 7.0, "width": 512, "height": 512,
    "restore_faces": None, "tiling": None, "do_not_save_samples": False, "do_not_save_grid": False,
    "extra_generation_params": None, "overlay_images": None, "eta": None, "do_not_reload_embeddings": False,
    "denoising_strength": None, "ddim_discretize": None, "s_min_uncond": None, "s_churn": None, "s_tmax": None,
    "s_tmin": None, "s_noise": None, "override_settings": None, "override_settings_restore_afterwards": True,
    "sampler_index": None, "refiner_checkpoint": None, "refiner_switch_at": None, "token_merging_ratio": 0,
    "token_merging_ratio_hr": 0, "disable_extra_networks": False, "firstpass_image": None,
}
TXT2IMG_FIELDS = {
    "enable_hr": False, "denoising_strength": 0.75, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2.0,
    "hr_upscaler": None, "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
    "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": '', "hr_negative_prompt": '', "force_task_id": None,
}
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


class StableDiffusionProcessing:
    cached_uc = [None, None]
    cached_c = [None, None]
    _fields = PROCESSING_FIELDS

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise TypeError(f"__init__() got an unexpected keyword argument '{sorted(unknown)[0]}'")
        for name, default in self._fields.items():
            if name != "sd_model":          # a property over shared.sd_model, as in the real one
                setattr(self, name, kwargs.get(name, default))
        self.styles = self.styles or []
        self.override_settings = self.override_settings or {}
        self.extra_generation_params = self.extra_generation_params or {}
        self.scripts = None
        self.script_args = None
        self.closed = False

    @property
    def sd_model(self):
        from modules import shared

        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    def close(self):
        # real: also empties cached_c/cached_uc unless opts.persistent_cond_cache (default True)
        self.closed = True


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]
    _fields = {**PROCESSING_FIELDS, **TXT2IMG_FIELDS}


class Processed:
    def __init__(self, p, images_list, seed=-1, info=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.info = info
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps


def process_images(p):
    from modules import call_queue, shared

    state = shared.state
    sd_model = shared.sd_model
    if sd_model is None:
        raise AttributeError("'NoneType' object has no attribute 'sd_checkpoint_info'")
    seed = int(p.seed) if int(p.seed) != -1 else int(random.randrange(4294967294))
    prompt = EXTRA_NETWORK.sub("", p.prompt)
    networks = EXTRA_NETWORK.findall(p.prompt)
    calls.append({"prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": seed, "width": p.width,
                  "height": p.height, "steps": p.steps, "cfg_scale": p.cfg_scale, "sampler_name": p.sampler_name,
                  "do_not_save_samples": p.do_not_save_samples, "do_not_save_grid": p.do_not_save_grid,
                  "scripts": p.scripts, "extra_networks_activated": None if p.disable_extra_networks else networks,
                  "queue_lock_held": call_queue.queue_lock.locked(), "job_count": state.job_count,
                  "job_no": state.job_no})
    if state.job_count == -1:
        state.job_count = p.n_iter
    images = []
    for n in range(p.n_iter):
        if state.skipped:
            state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        state.job = f"Batch {n + 1} out of {p.n_iter}"
        state.sampling_steps = p.steps
        for step in range(p.steps):
            state.sampling_step = step
            if step == p.steps // 2 and during_sampling is not None:
                during_sampling()
            if state.interrupted:
                break           # real: the sampler stops early; the image is still decoded
        for i in range(p.batch_size):
            images.append(_fake_image(prompt, seed + n * p.batch_size + i, p.width, p.height))
        state.nextjob()
    return Processed(p, images, seed=seed)


def _fake_image(prompt, seed, width, height):
    h = zlib.crc32(f"{prompt}|{seed}".encode())
    return Image.new("RGB", (int(width), int(height)), (h & 255, (h >> 8) & 255, (h >> 16) & 255))


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    pass


def reset():
    global during_sampling
    calls.clear()
    during_sampling = None
    StableDiffusionProcessing.cached_uc = [None, None]
    StableDiffusionProcessing.cached_c = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
