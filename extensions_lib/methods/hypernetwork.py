"""Hypernetworks as the WebUI applies and stores them.

Every UNet attention gets its K and V inputs through a residual MLP picked by the context width:
the text context for cross-attention (768 SD1, 1024 SD2), the hidden states themselves for
self-attention (320, 640, 1280): context_k = c + mlp_k(c) * m, context_v = c + mlp_v(c) * m, the
MLPs run in fp32. We do it with an attention processor set on the attention modules whose K input
width has a hypernetwork layer; the original processors are put back on detach. The processor is a
plain object (not an nn.Module), so it never shows up in the UNet's parameters or state dict.

The file is the WebUI's .pt: {width: (state_dict_k, state_dict_v), "step", "name", ...}, written
with legacy serialization so the WebUI's safe unpickler and torch.load(weights_only=True) accept it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, ConfigProblem, TrainConfig
from ..export.atomic import save_torch_legacy
from ..model.attention_processor import SdpaAttnProcessor
from ..model.bundle import ModelBundle
from .base import Method, SaveInfo
from .hypernetwork_mlp import HypernetworkMLP, dropout_rates, init_weights

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SD_WIDTHS = {320, 640, 768, 1024, 1280}


class _Strength:
    """Shared by every processor of one method: 0 turns the hypernetwork off."""

    def __init__(self, value: float = 1.0):
        self.value = value


class HypernetworkAttnProcessor(SdpaAttnProcessor):
    """Scaled-dot-product attention (as diffusers' AttnProcessor2_0) with the hypernetwork on the
    K and V inputs."""

    def __init__(self, mlp_k: HypernetworkMLP, mlp_v: HypernetworkMLP, strength: _Strength):
        self.mlp_k, self.mlp_v, self.strength = mlp_k, mlp_v, strength

    def contexts(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.strength.value
        if m == 0:
            return context, context
        c = context.float()   # the WebUI runs hypernetworks in fp32 and casts back
        return self.mlp_k(c, m).to(context.dtype), self.mlp_v(c, m).to(context.dtype)


def attention_modules(unet) -> list[tuple[str, nn.Module]]:
    """(name, module) of every diffusers Attention in the UNet."""
    from diffusers.models.attention_processor import Attention

    return [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention)]


def context_width(attn) -> int:
    """Width of the K/V input: the text context for cross-attention, the channels for self-attention."""
    return int(attn.to_k.in_features)


def model_widths(unet) -> list[int]:
    return sorted({context_width(m) for _, m in attention_modules(unet)})


class HypernetworkMethod(Method):
    kind = "hypernetwork"
    file_suffix = ".pt"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        h = cfg.hypernetwork
        self.dropout = dropout_rates(h.layer_structure, h.use_dropout, h.last_layer_dropout, h.dropout_structure)
        self.layers: dict[int, tuple[HypernetworkMLP, HypernetworkMLP]] = {}
        self.modules = nn.ModuleDict()          # the same MLPs, for .to() / .train()
        self.strength = _Strength(1.0)
        self._saved_processors: dict[str, object] = {}
        self._attached_widths: list[int] = []

    # -- building ---------------------------------------------------------------------------
    def resolve_sizes(self, unet) -> list[int]:
        """The widths to build layers for. On an SD1/SD2 UNet: the configured sizes (those the model
        lacks are kept untrained in the file, as the WebUI does); at least one must exist in it. On a
        UNet with other widths (the tiny test models), SD sizes cannot exist: the configured sizes
        it has, or else all of its own attention widths."""
        widths = model_widths(unet)
        sizes = [int(w) for w in self.cfg.hypernetwork.sizes]
        if any(w in widths for w in sizes):
            return sizes
        if not set(widths) <= SD_WIDTHS:
            return widths
        raise ConfigError([ConfigProblem(
            "hypernetwork.sizes", self.cfg.hypernetwork.sizes,
            f"none of them is an attention width of this model ({', '.join(map(str, widths))}); "
            "SD1 uses 768 320 640 1280, SD2 1024 320 640 1280")])

    def build_layers(self, sizes: list[int], device=None) -> None:
        """Fresh MLP pairs for every width, seeded from training.seed."""
        h = self.cfg.hypernetwork
        self.layers, self.modules = {}, nn.ModuleDict()
        # fork_rng: a seeded init without touching the caller's random state (init functions take
        # no generator on torch 2.1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.training.seed)
            for width in sizes:
                pair = []
                for _ in range(2):
                    mlp = HypernetworkMLP(width, h.layer_structure, h.activation, h.layer_norm,
                                          h.activate_output, self.dropout)
                    init_weights(mlp.linear, h.weight_init, h.activation)
                    pair.append(mlp)
                self.layers[width] = (pair[0], pair[1])
                self.modules[f"{width}_k"], self.modules[f"{width}_v"] = pair
        self.modules.to(device=device, dtype=torch.float32)
        self.modules.eval()

    # -- lifecycle --------------------------------------------------------------------------
    def attach(self, bundle: ModelBundle) -> None:
        unet = bundle.unet
        sizes = self.resolve_sizes(unet)
        widths = model_widths(unet)
        used = [w for w in sizes if w in widths]
        self.bundle = bundle
        self.build_layers(sizes, device=next(unet.parameters()).device)
        for name, attn in attention_modules(unet):
            width = context_width(attn)
            if width not in self.layers:
                continue
            self._saved_processors[name] = attn.processor
            attn.set_processor(HypernetworkAttnProcessor(*self.layers[width], self.strength))
        self._attached_widths = used

    def detach(self) -> None:
        if self.bundle is None:
            return
        by_name = dict(attention_modules(self.bundle.unet))
        for name, processor in self._saved_processors.items():
            by_name[name].set_processor(processor)
        self._saved_processors = {}
        self.bundle = None

    def param_groups(self) -> list[dict]:
        # widths the model never uses get no gradient: they are saved as initialised (as the WebUI does)
        params = [p for w in self._attached_widths for mlp in self.layers[w] for p in mlp.parameters()]
        return [{"params": params, "lr": self.cfg.training.learning_rate, "name": "hypernetwork"}]

    def train_mode(self, training: bool) -> None:
        self.modules.train(training)

    def set_enabled(self, enabled: bool) -> None:
        self.strength.value = 1.0 if enabled else 0.0

    # -- output -----------------------------------------------------------------------------
    def state(self, name: str, step: int, dtype: torch.dtype = torch.float32) -> dict:
        """The WebUI's hypernetwork dict (tensors on the CPU in `dtype`, everything else plain)."""
        h, b = self.cfg.hypernetwork, self.bundle

        def weights(mlp: HypernetworkMLP):
            return {k: v.detach().to("cpu", dtype) for k, v in mlp.state_dict().items()}

        out: dict = {w: (weights(k), weights(v)) for w, (k, v) in self.layers.items()}
        sha = getattr(b, "model_sha256", None) if b is not None else None
        out.update({
            "step": int(step),
            "name": name,
            "layer_structure": list(h.layer_structure),
            "activation_func": h.activation,
            "is_layer_norm": bool(h.layer_norm),
            "weight_initialization": h.weight_init,
            "sd_checkpoint": sha[:10] if sha else (getattr(b, "model_hash", None) if b is not None else None),
            "sd_checkpoint_name": getattr(b, "model_name", None) or None,
            "activate_output": bool(h.activate_output),
            "use_dropout": bool(h.use_dropout),
            "dropout_structure": list(self.dropout),
            "last_layer_dropout": bool(len(self.dropout) >= 2 and self.dropout[-2] != 0),
            "optional_info": self.cfg.output.comment or None,
        })
        return out

    def save(self, path: Path, info: SaveInfo, *, overwrite: bool) -> Path:
        dtype = SAVE_DTYPES[self.cfg.output.save_precision]
        save_torch_legacy(self.state(Path(path).stem, info.step, dtype), path, overwrite=overwrite)
        return Path(path)

    def prompt_usage(self, name: str) -> str:
        return f"<hypernet:{name}:1>"
