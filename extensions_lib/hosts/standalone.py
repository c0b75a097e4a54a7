"""Standalone host: a checkpoint file (or an already built bundle) outside the WebUI."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from ..config import TrainConfig
from ..model.bundle import ModelBundle
from .base import Host, HostError

FOLDERS = {"lora": "Lora", "embedding": "embeddings", "hypernetwork": "hypernetworks"}


class StandaloneHost(Host):
    name = "standalone"

    def __init__(self, bundle: Optional[ModelBundle] = None, *, output_root: Path | str = "output",
                 device: Optional[str] = None):
        self._bundle = bundle
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
        if self._bundle is None:
            from ..model.checkpoint import load_bundle

            ckpt = Path(cfg.model.checkpoint)
            if not ckpt.exists():
                raise HostError(f"model.checkpoint: {ckpt} does not exist")
            self._bundle = load_bundle(ckpt, tokenizer_dir=cfg.model.tokenizer or None,
                                       vae_path=cfg.model.vae or None, v_prediction=cfg.model.v_prediction)
        bundle = self._bundle
        bundle.freeze()
        # The host owns these weights, so it stores the frozen UNet/text encoder in the training
        # precision (bf16 halves memory and spares autocast a weight cast per layer per step, as
        # sd-scripts does); the VAE stays fp32 for clean latents.
        dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.training.mixed_precision]
        for module in (bundle.unet, bundle.text_encoder):
            p = next(module.parameters())
            if p.device != self.device() or p.dtype != dtype:
                module.to(self.device(), dtype)
        vae = next(bundle.vae.parameters())
        if vae.device != self.device() or vae.dtype != torch.float32:
            bundle.vae.to(self.device(), torch.float32)
        yield bundle

    def output_dir(self, kind: str, cfg: TrainConfig) -> Path:
        if cfg.output.output_dir:
            return Path(cfg.output.output_dir)
        return self.output_root / FOLDERS[kind]
