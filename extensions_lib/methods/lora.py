"""LoRA / LoCon / LoHa / LoKr through lycoris-lora, with kohya key names the WebUI loads.

lycoris keeps its target lists as class attributes of LycorisNetworkKohya (global state). We set
them for one construction under a lock and put the previous values back at once, so two runs in
one process (or a user's other lycoris use) never see each other's settings.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config import ConfigError, ConfigProblem, TrainConfig
from ..export.atomic import save_safetensors
from ..export.hashes import with_hashes
from ..export.metadata import lora_metadata
from ..hosts.base import HostError
from ..model.bundle import ModelBundle
from .base import Method, SaveInfo
from .initial_weights import InitialWeightsError, adopt, load_into
from .lora_bypass import use_lean_bypass
from .merged_forward import use_merged_forward

# Which module classes each method reaches (kohya's defaults).
ATTENTION_BLOCKS = ["Transformer2DModel"]
CONV_BLOCKS = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
TEXT_BLOCKS = ["CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"]

NETWORK_MODULE = "lycoris.kohya"   # ss_network_module: what sd-scripts / the WebUI expect for LyCORIS files

_preset_lock = threading.Lock()
_PRESET_ATTRS = ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME",
                 "TEXT_ENCODER_TARGET_REPLACE_MODULE", "TEXT_ENCODER_TARGET_REPLACE_NAME",
                 "MODULE_ALGO_MAP", "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")


@contextmanager
def _lycoris_preset(cls, **values):
    with _preset_lock:
        saved = {a: getattr(cls, a) for a in _PRESET_ATTRS if hasattr(cls, a)}
        try:
            for k, v in values.items():
                setattr(cls, k, v)
            yield
        finally:
            for k, v in saved.items():
                setattr(cls, k, v)


def lora_targets(method: str, conv_dim: int) -> dict:
    """lycoris class attributes for one method: plain LoRA touches attention/feed-forward/1x1 proj
    linears only; LoCon/LoHa/LoKr add the resnet and sampler convs unless conv_dim is 0."""
    with_conv = method != "lora" and conv_dim > 0
    return dict(
        ENABLE_CONV=with_conv,
        UNET_TARGET_REPLACE_MODULE=list(CONV_BLOCKS if with_conv else ATTENTION_BLOCKS),
        UNET_TARGET_REPLACE_NAME=[],
        TEXT_ENCODER_TARGET_REPLACE_MODULE=list(TEXT_BLOCKS),
        TEXT_ENCODER_TARGET_REPLACE_NAME=[],
        MODULE_ALGO_MAP={}, NAME_ALGO_MAP={}, USE_FNMATCH=False, TARGET_EXCLUDE_NAME=[],
    )


def _lycoris_network_class():
    """lycoris' kohya network class, or a message saying which lycoris-lora this torch needs."""
    try:
        from lycoris.kohya import LycorisNetworkKohya
    except (ImportError, AttributeError) as e:  # 4.1 on torch < 2.4 fails inside its import
        raise HostError(
            f"lycoris-lora could not be imported ({type(e).__name__}: {e}). lycoris-lora 4.1 needs torch 2.4 or "
            f"newer; this is torch {torch.__version__}. Restart the WebUI so this extension's install.py puts in "
            "the version that fits, or run: pip install \"lycoris-lora==4.0.0\" (torch < 2.4) / "
            "\"lycoris-lora==4.1.3\" (torch >= 2.4).") from e
    return LycorisNetworkKohya


def build_network(cfg: TrainConfig, text_encoder, unet):
    """A LycorisNetworkKohya over the given modules (not yet applied)."""
    import logging

    LycorisNetworkKohya = _lycoris_network_class()

    n = cfg.network
    extra = {}
    if n.method == "lokr":
        extra["factor"] = n.lokr_factor
    if n.method in ("lora", "locon"):
        # x -> down -> up instead of rebuilding the full delta weight and running a second
        # full-size matmul per layer: the low-rank path is what makes a LoRA step cheap
        extra["bypass_mode"] = True
    logging.getLogger("LyCORIS").setLevel(logging.WARNING)
    with _lycoris_preset(LycorisNetworkKohya, **lora_targets(n.method, n.conv_dim)):
        network = LycorisNetworkKohya(
            text_encoder if n.train_text_encoder else None,
            unet,
            multiplier=n.multiplier,
            lora_dim=n.dim,
            alpha=n.alpha,
            conv_lora_dim=n.conv_dim if n.method != "lora" else 0,
            conv_alpha=n.conv_alpha,
            dropout=n.dropout,
            rank_dropout=n.rank_dropout,
            module_dropout=n.module_dropout,
            network_module=n.method,  # lycoris algo names match ours
            warn_on_unmatched=False,
            **extra,
        )
    return network


class LoraMethod(Method):
    kind = "lora"

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.network = None
        # a file to continue sets the network's shapes: adopted now (before the model is touched, as
        # this runs in the start checks) so the save plan and metadata see them; notes for the user
        self.notes: list[str] = []
        if cfg.network.initial_weights.strip():
            try:
                self.notes = adopt(cfg)
            except InitialWeightsError as e:
                raise ConfigError([ConfigProblem("network.initial_weights", cfg.network.initial_weights,
                                                 str(e))]) from e

    def attach(self, bundle: ModelBundle) -> None:
        n = self.cfg.network
        self.bundle = bundle
        net = build_network(self.cfg, bundle.text_encoder, bundle.unet)
        self._own_forward = {id(m) for root in (bundle.unet, bundle.text_encoder) for m in root.modules()
                             if "forward" in m.__dict__}
        net.apply_to(bundle.text_encoder, bundle.unet, apply_text_encoder=n.train_text_encoder,
                     apply_unet=n.train_unet)
        # the network's parameters live where the base weights live, in fp32 (trained precision)
        device = next(bundle.unet.parameters()).device
        net.to(device=device, dtype=torch.float32)
        net.requires_grad_(True)
        self.network = net
        if n.initial_weights.strip():
            try:
                load_into(net, n.initial_weights, bundle, n.method)
            except InitialWeightsError as e:
                self.detach()   # the model must be left as it was lent
                raise ConfigError([ConfigProblem("network.initial_weights", n.initial_weights, str(e))]) from e
        use_lean_bypass(net.loras)
        use_merged_forward(net.loras)

    def adapter_modules(self) -> list[torch.nn.Module]:
        return [self.network] if self.network is not None else []

    def detach(self) -> None:
        if self.network is None:
            return
        wrapped = [lora.org_module[0] for lora in self.network.loras]
        self.network.restore()
        # lycoris' restore leaves the original forward as an instance attribute: drop it so the
        # module is exactly as before (its class forward), unless it had its own before we came
        for module in wrapped:
            if id(module) not in self._own_forward:
                module.__dict__.pop("forward", None)
        self.network = None

    def param_groups(self) -> list[dict]:
        groups = []
        te_lr, unet_lr = self.cfg.text_encoder_lr, self.cfg.unet_lr
        te = [p for m in self.network.text_encoder_loras for p in m.parameters()]
        un = [p for m in self.network.unet_loras for p in m.parameters()]
        if te and te_lr > 0:
            groups.append({"params": te, "lr": te_lr, "name": "text_encoder"})
        if un and unet_lr > 0:
            groups.append({"params": un, "lr": unet_lr, "name": "unet"})
        # parts with lr 0 are frozen rather than updated with zero steps
        for p in (te if te_lr <= 0 else []) + (un if unet_lr <= 0 else []):
            p.requires_grad_(False)
        return groups

    @property
    def trains_text_encoder(self) -> bool:
        return bool(self.network and self.network.text_encoder_loras and self.cfg.text_encoder_lr > 0)

    def train_mode(self, training: bool) -> None:
        self.network.train(training)

    def set_enabled(self, enabled: bool) -> None:
        self.network.set_multiplier(self.cfg.network.multiplier if enabled else 0.0)

    def state_dict(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in self.network.state_dict().items():
            out[k] = v.detach().to("cpu", dtype=dtype).contiguous()
        return out

    def network_args(self) -> dict:
        n = self.cfg.network
        args = {"algo": n.method, "preset": "attn-mlp" if n.method == "lora" else "attn-mlp+conv"}
        if n.method != "lora":
            args.update(conv_dim=str(n.conv_dim), conv_alpha=str(n.conv_alpha))
        if n.dropout:
            args["dropout"] = str(n.dropout)
        if n.rank_dropout:
            args["rank_dropout"] = str(n.rank_dropout)
        if n.module_dropout:
            args["module_dropout"] = str(n.module_dropout)
        if n.method == "lokr":
            args["factor"] = str(n.lokr_factor)
        return args

    def save(self, path: Path, info: SaveInfo, *, overwrite: bool) -> Path:
        cfg, b = self.cfg, self.bundle
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.output.save_precision]
        tensors = self.state_dict(dtype)
        t, d, n = cfg.training, cfg.data, cfg.network
        # a part without modules in the file has no learning rate to report
        te_lr = cfg.text_encoder_lr if getattr(self.network, "text_encoder_loras", None) else None
        unet_lr = cfg.unet_lr if getattr(self.network, "unet_loras", None) else None
        meta = lora_metadata(
            output_name=cfg.output_name,
            network_module="networks.lora" if n.method == "lora" else NETWORK_MODULE,
            dim=n.dim, alpha=n.alpha, network_args=self.network_args(),
            base_model_version=b.base_model_version, v2=b.version == "sd2", v_prediction=b.v_prediction,
            sd_model_name=b.model_name, sd_model_hash=b.model_hash, sd_new_model_hash=b.model_sha256,
            vae_name=b.vae_name, resolution=(d.resolution, d.resolution),
            num_train_images=info.extra.get("num_train_images", 0),
            num_reg_images=info.extra.get("num_reg_images", 0),
            # the epochs this run trains (max steps may end it before max_train_epochs)
            num_epochs=info.extra.get("num_epochs", t.max_train_epochs), epoch=info.epoch, steps=info.step,
            learning_rate=t.learning_rate, unet_lr=unet_lr, text_encoder_lr=te_lr,
            optimizer=t.optimizer, lr_scheduler=t.lr_scheduler,
            lr_warmup_steps=info.extra.get("warmup_steps", 0),
            clip_skip=info.extra.get("clip_skip", 1), max_token_length=d.max_token_length,
            mixed_precision=t.mixed_precision, noise_offset=t.noise_offset, min_snr_gamma=t.min_snr_gamma,
            seed=t.seed, tag_frequency=info.extra.get("tag_frequency", {}),
            dataset_dirs=info.extra.get("dataset_dirs", {}),
            training_started_at=info.started_at, training_finished_at=info.finished_at,
            comment=cfg.output.comment, architecture=b.modelspec_architecture,
            title=cfg.output_name, validation_loss=info.extra.get("validation_loss"),
        )
        save_safetensors(tensors, path, with_hashes(tensors, meta), overwrite=overwrite)
        return path

    def prompt_usage(self, name: str) -> str:
        return f"<lora:{name}:{self.cfg.output.preferred_weight:g}>"


