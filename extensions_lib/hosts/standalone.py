"""Standalone host: a checkpoint file (or an already built bundle) outside the WebUI."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..config import TrainConfig
from ..model.bundle import ModelBundle
from .base import CAPTIONERS, Host, HostError

FOLDERS = {"lora": "Lora", "embedding": "embeddings", "hypernetwork": "hypernetworks"}


class StandaloneHost(Host):
    """Trains on `bundle` if one is given, else on the file named by model.checkpoint.

    A given bundle belongs to the caller: it is cast to the training precision for the run and
    handed back bit-identical (same tensors, dtype and device) afterwards. A bundle this host loaded
    itself stays in the precision of the last run, to save reloading it; a later run that needs more
    precision than that reloads the file rather than training on rounded weights."""
    name = "standalone"
    model_from_config = True

    def __init__(self, bundle: Optional[ModelBundle] = None, *, output_root: Path | str = "output",
                 device: Optional[str] = None):
        self._bundle = bundle
        self._owned = bundle is None          # True once this host loads the file itself
        self.output_root = Path(output_root)
        self._device = torch.device(device) if device else None

    def device(self):
        if self._device is None:
            self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return self._device

    def check_ready(self, cfg: TrainConfig) -> None:
        if self._bundle is None and not cfg.model.checkpoint:
            raise HostError("model.checkpoint is empty: give a .safetensors/.ckpt checkpoint or a diffusers folder")

    @contextmanager
    def borrow_bundle(self, cfg: TrainConfig):
        dtype = TRAIN_DTYPES[cfg.training.mixed_precision]
        if self._owned and self._bundle is not None and _held_dtype(self._bundle) not in (dtype, torch.float32):
            self._bundle = None          # held rounded to another precision: the file is the truth
        if self._bundle is None:
            self._bundle = self._load(cfg)
        bundle = self._bundle
        bundle.freeze()
        # The frozen UNet/text encoder run in the training precision (bf16 halves memory and spares
        # autocast a weight cast per layer per step, as sd-scripts does); the VAE stays fp32 for
        # clean latents.
        targets = [(bundle.unet, dtype), (bundle.text_encoder, dtype), (bundle.vae, torch.float32)]
        if self._owned:
            for module, want in targets:
                _cast(module, self.device(), want)
            yield bundle
            return
        originals = [t for module, want in targets for t in _cast(module, self.device(), want)]
        try:
            yield bundle
        finally:
            for tensor, data in originals:      # the caller's own tensors, untouched by the run
                tensor.data = data

    def _load(self, cfg: TrainConfig) -> ModelBundle:
        from ..model.checkpoint import load_bundle

        ckpt = Path(cfg.model.checkpoint)
        if not ckpt.exists():
            raise HostError(f"model.checkpoint: {ckpt} does not exist")
        return load_bundle(ckpt, tokenizer_dir=cfg.model.tokenizer or None,
                           vae_path=cfg.model.vae or None, v_prediction=cfg.model.v_prediction)

    def output_dir(self, kind: str, cfg: TrainConfig) -> Path:
        if cfg.output.output_dir:
            return Path(cfg.output.output_dir)
        return self.output_root / FOLDERS[kind]

    # -- preparing a dataset: the captioners, the focal crop and txt2img are the WebUI's own ------
    def captioners(self) -> dict[str, str]:
        return {name: STANDALONE_CAPTION_REFUSAL.format(name=CAPTIONER_TITLES.get(name, name)) for name in CAPTIONERS}

    def image_generation_refusal(self) -> str:
        return STANDALONE_CLASS_IMAGES_REFUSAL

    def generate_images(self, requests, progress):
        raise HostError(STANDALONE_CLASS_IMAGES_REFUSAL)


CAPTIONER_TITLES = {"blip": "BLIP captions", "deepbooru": "DeepBooru tags", "wd14": "WD14 tags"}
STANDALONE_CAPTION_REFUSAL = ("{name} need the AUTOMATIC1111 WebUI: run Prepare from the Trainer tab, or caption "
                              "with another tool and put a .txt file of the same name next to each image")
STANDALONE_CLASS_IMAGES_REFUSAL = ("class images need the WebUI's txt2img: run Prepare from the Trainer tab, or "
                                   "generate them elsewhere and point the class folder at them")

TRAIN_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _held_dtype(bundle: ModelBundle) -> torch.dtype:
    return next(bundle.unet.parameters()).dtype


def _cast(module: torch.nn.Module, device, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move the floating-point parameters and buffers of `module` to device/dtype in place; returns
    (tensor, previous data) for each one changed, so the caller can put them back exactly."""
    changed = []
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point() and (t.device != device or t.dtype != dtype):
            changed.append((t, t.data))
            t.data = t.data.to(device, dtype)
    return changed
