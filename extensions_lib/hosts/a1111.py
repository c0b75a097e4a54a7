"""The AUTOMATIC1111 WebUI (1.10) as a host: train on the checkpoint it already holds.

- check_ready: refuses Forge (it holds its models another way; see a1111_model.FORGE), refuses, before any work, what cannot be trained on (see a1111_model.refusal) and a
  second training while one runs.
- exclusive: holds the WebUI's GPU queue (`modules.call_queue.queue_lock`, the lock txt2img,
  img2img and the API take) so generations wait instead of colliding, and runs the training as a
  WebUI job in `shared.state` (begin/end, job_count 1) so its progress bar and Interrupt work.
- borrow_bundle: undoes the LoRA the built-in Lora support left merged in the weights, then builds
  the diffusers view of the live tensors (no copy, no disk read; FP8 layers use their kept FP16
  originals) with the WebUI's own tokenizer; afterwards checks and restores the model (ModelGuard).
- progress(commands): callbacks mirroring the run into `shared.state` and turning the WebUI's
  Interrupt into `commands.request_stop()`.
- output_dir / refresh: the WebUI's model folders, and the reloads that make a new file usable at
  once (Lora list, embeddings, hypernetworks; the cached prompt conditioning is dropped too).

Every `modules.*` import happens inside a method: importing this file needs no WebUI.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..config import TrainConfig
from ..model.errors import TokenizerError, UnsupportedModelError
from ..train.events import Commands
from . import a1111_model as webui_model
from .a1111_guard import ModelGuard, WebUIModelChanged
from .a1111_progress import METHOD_LABELS, WebUIProgress, webui_job
from .base import KINDS, Host, HostError

# One training per process, whichever host object or job manager starts it.
_TRAINING = threading.Lock()
BUSY = "a training is already running: wait for it to finish or stop it first"
JOB_NAME = "train"


class A1111Host(Host):
    name = "a1111"

    def __init__(self):
        self._holding = False             # True while this host holds queue_lock and owns shared.state
        self._label = "LoRA"
        self._sd2_tokenizer = None

    # -- refusals ------------------------------------------------------------------------------
    def check_ready(self, cfg: TrainConfig) -> None:
        if webui_model.running_on_forge():
            raise HostError(webui_model.FORGE)
        if _TRAINING.locked() and not self._holding:
            raise HostError(BUSY)
        sd_model = webui_model.loaded_model()
        reason = (webui_model.refusal(sd_model)
                  or webui_model.precision_refusal(sd_model, cfg.training.mixed_precision))
        if reason:
            raise HostError(reason)
        limit = getattr(_cmd_opts(), "trainer_max_resolution", None)
        if limit and cfg.data.resolution > limit:
            raise HostError(f"data.resolution = {cfg.data.resolution}: this WebUI was started with "
                            f"--trainer-max-resolution {limit}; pick {limit} or less")
        self._tokenizer(sd_model, cfg)       # refuse now if prompts cannot be tokenized (SD2: open_clip)

    def work_dir(self) -> Optional[Path]:
        """--trainer-output-dir: where the on-disk latent cache goes (its latent_cache/ folder)."""
        folder = getattr(_cmd_opts(), "trainer_output_dir", None)
        return Path(folder) if folder else None

    # -- the GPU queue and the WebUI job -------------------------------------------------------
    @contextmanager
    def exclusive(self):
        if not _TRAINING.acquire(blocking=False):
            raise HostError(BUSY)
        try:
            with webui_job(JOB_NAME, 1, "Training: preparing…"):
                self._holding = True
                try:
                    yield
                finally:
                    self._holding = False
        finally:
            _TRAINING.release()

    def progress(self, commands: Optional[Commands] = None) -> WebUIProgress:
        """Callbacks for run_training that show the run in the WebUI's progress display and stop it
        (after the current step, saving) when the WebUI's Interrupt is pressed. Pass the Commands
        object given to run_training; without one, a new one is made: pass `.commands` on."""
        return WebUIProgress(commands, owns_state=lambda: self._holding, label=lambda: self._label)

    # -- the model -----------------------------------------------------------------------------
    @contextmanager
    def borrow_bundle(self, cfg: TrainConfig):
        from ..model.ldm import bundle_from_ldm

        self._label = METHOD_LABELS.get(cfg.network.method, cfg.network.method)
        sd_model = webui_model.loaded_model()
        reason = webui_model.refusal(sd_model)     # again: the model may have changed since check_ready
        if reason:
            raise HostError(reason)
        # a LoRA merged by the last generation must not become part of the base we train on
        webui_model.restore_merged_networks(sd_model)
        guard = ModelGuard(sd_model)
        try:
            facts = webui_model.checkpoint_facts(sd_model)
            v_pred = getattr(sd_model, "parameterization", "eps") == "v" or bool(cfg.model.v_prediction)
            try:
                bundle = bundle_from_ldm(webui_model.live_state_dict(sd_model), self._tokenizer(sd_model, cfg),
                                         v_prediction=v_pred, model_name=facts["model_name"],
                                         model_hash=facts["model_hash"])
            except (UnsupportedModelError, TokenizerError) as e:
                raise HostError(f"'{facts['title']}': {e}") from None
            bundle.model_sha256 = facts["model_sha256"]
            bundle.vae_name = facts["vae_name"]
            bundle.extra.update(path=facts["path"], webui_title=facts["title"],
                                fp8_originals=bool(webui_model.fp8_modules(sd_model)))
            yield bundle
        finally:
            problems = guard.restore()
            if problems:
                message = ("The WebUI's model changed during training: " + "; ".join(problems) + ". To be "
                           "safe, load another checkpoint and then this one again (or restart the WebUI) "
                           "before generating.")
                if sys.exc_info()[0] is None:
                    raise WebUIModelChanged(message)
                print(f"[trainer] {message}", file=sys.stderr)

    def _tokenizer(self, sd_model, cfg: TrainConfig):
        if not getattr(sd_model, "is_sd2", False):
            return webui_model.sd1_tokenizer(sd_model)
        if self._sd2_tokenizer is None:
            self._sd2_tokenizer = webui_model.sd2_tokenizer()
        return self._sd2_tokenizer

    # -- files -----------------------------------------------------------------------------------
    def output_dir(self, kind: str, cfg: TrainConfig) -> Path:
        """cfg.output.output_dir, else the WebUI's folder for the kind (--lora-dir, --embeddings-dir,
        --hypernetwork-dir). The extension's --trainer-output-dir holds working files only (work_dir)."""
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}; expected one of {KINDS}")
        if cfg.output.output_dir:
            return Path(cfg.output.output_dir)
        from modules import paths, shared

        opts = shared.cmd_opts
        if kind == "lora":
            folder = getattr(opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora")
        elif kind == "embedding":
            folder = getattr(opts, "embeddings_dir", None) or os.path.join(paths.data_path, "embeddings")
        else:
            folder = getattr(opts, "hypernetwork_dir", None) or os.path.join(paths.models_path, "hypernetworks")
        return Path(folder)

    def refresh(self, kind: str, path: Path) -> None:
        """Make the new file usable without a restart. A failure here never fails the training:
        the file is written; the WebUI's refresh button or the next start picks it up."""
        try:
            if kind == "lora":
                self._refresh_loras(Path(path))
            elif kind == "embedding":
                from modules import sd_hijack

                sd_hijack.model_hijack.embedding_db.load_textual_inversion_embeddings(force_reload=True)
            elif kind == "hypernetwork":
                self._refresh_hypernetworks(Path(path))
        except Exception as e:  # noqa: BLE001 - see docstring
            print(f"[trainer] saved {path}, but refreshing the WebUI's {kind} list failed: {e!r}; "
                  "use the refresh button of the Extra networks tab", file=sys.stderr)
        try:
            self._forget_cached_conditioning()
        except Exception as e:  # noqa: BLE001 - see docstring
            print(f"[trainer] saved {path}, but clearing the WebUI's cached prompt conditioning failed: "
                  f"{e!r}; change the prompt once (or reload the checkpoint) before comparing images",
                  file=sys.stderr)

    @staticmethod
    def _forget_cached_conditioning() -> None:
        """The WebUI reuses the last prompt's conditioning while prompt, steps, styles, checkpoint and
        extra-network data are unchanged; its cache key knows nothing of embedding or hypernetwork
        files, so a file rewritten under the same name would be ignored by the next identical prompt."""
        from modules import processing

        processing.StableDiffusionProcessing.cached_c = [None, None]
        processing.StableDiffusionProcessing.cached_uc = [None, None]
        txt2img = getattr(processing, "StableDiffusionProcessingTxt2Img", None)
        for name in ("cached_hr_c", "cached_hr_uc"):      # the hires pass keeps its own pair
            if txt2img is not None and hasattr(txt2img, name):
                setattr(txt2img, name, [None, None])

    @staticmethod
    def _refresh_loras(path: Path) -> None:
        networks = webui_model._networks_module()
        if networks is None:
            return        # the built-in Lora extension is disabled: nothing lists LoRAs
        # an overwritten file must not be served from the in-memory cache (it also checks mtime)
        getattr(networks, "networks_in_memory", {}).pop(path.stem, None)
        networks.list_available_networks()

    @staticmethod
    def _refresh_hypernetworks(path: Path) -> None:
        from modules import shared

        shared.reload_hypernetworks()
        loaded = shared.loaded_hypernetworks
        # a loaded hypernetwork of the same name is a stale copy of an overwritten file
        stale = [h for h in loaded if getattr(h, "name", None) == path.stem
                 or os.path.abspath(str(getattr(h, "filename", "") or "")) == os.path.abspath(str(path))]
        for h in stale:
            loaded.remove(h)

    # -- facts -----------------------------------------------------------------------------------
    def clip_skip(self, cfg: TrainConfig) -> int:
        if cfg.model.clip_skip:
            return int(cfg.model.clip_skip)
        from modules import shared

        return max(1, int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1))

    def device(self) -> torch.device:
        sd_model = webui_model.loaded_model()
        if sd_model is not None and hasattr(sd_model, "model"):
            return webui_model.unet_device(sd_model)
        from modules import devices

        return torch.device(devices.device)

    def describe(self) -> dict:
        sd_model = webui_model.loaded_model()
        out = {"host": self.name, "busy": _TRAINING.locked()}
        if sd_model is None:
            return dict(out, model=None, ready=False, problem=webui_model.refusal(None))
        facts = webui_model.checkpoint_facts(sd_model)
        dtype = next((t.dtype for t in webui_model.unet_of(sd_model).parameters()), None)
        problem = webui_model.refusal(sd_model)
        return dict(out, model=facts["title"], model_name=facts["model_name"], vae=facts["vae_name"],
                    version=webui_model.model_version(sd_model),
                    v_prediction=getattr(sd_model, "parameterization", "eps") == "v",
                    device=str(self.device()), dtype=str(dtype).replace("torch.", "") if dtype else None,
                    fp8=bool(webui_model.fp8_modules(sd_model)), ready=problem is None, problem=problem)

    # -- preparing a dataset: the WebUI's captioners, focal crop and txt2img (a1111_prepare) ---------
    def captioners(self) -> dict:
        from . import a1111_prepare

        return a1111_prepare.captioners()

    @contextmanager
    def captioner(self, name: str):
        from . import a1111_prepare

        with a1111_prepare.captioner(name) as caption:
            yield caption

    def focal_crop(self):
        from . import a1111_prepare

        return a1111_prepare.focal_crop()

    @contextmanager
    def prepare_job(self, label: str, total: int):
        """The WebUI's GPU queue and a job in its progress bar; refused while a training runs."""
        from . import a1111_prepare

        with a1111_prepare.prepare_job(label, total, _TRAINING, BUSY) as progress:
            yield progress

    def image_generation_refusal(self) -> str:
        return webui_model.FORGE if webui_model.running_on_forge() else ""

    def generate_images(self, requests, progress):
        from . import a1111_prepare

        return a1111_prepare.generate_images(requests, progress)


def _cmd_opts():
    from modules import shared

    return shared.cmd_opts
