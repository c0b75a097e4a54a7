"""Continuing a LoRA the user already has (network.initial_weights, kohya's --network_weights).

Two steps. Before the model is touched, `inspect` reads only the file's header and its `.alpha`
scalars: it is a safetensors LoRA in kohya's key names, of the kind network.method trains, for SD1/SD2,
with one rank and alpha for linear layers and one for 3x3 convs. `adopt` then puts the file's rank and
alpha into the config (what kohya's --dim_from_weights does): a file can only be continued with its
own shapes, and with its own alpha its effect is unchanged at step 0. After the network is built,
`load_into` copies every tensor, strictly: a module on one side only is an error, never skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

FIELD = "network.initial_weights"

# the tensor names of one module, per algorithm (LyCORIS' and kohya's names)
_ALGO_OF_SUFFIX = {
    "lora_down.weight": "lora", "lora_up.weight": "lora",
    "hada_w1_a": "loha", "hada_w1_b": "loha", "hada_w2_a": "loha", "hada_w2_b": "loha",
    "lokr_w1": "lokr", "lokr_w1_a": "lokr", "lokr_w1_b": "lokr",
    "lokr_w2": "lokr", "lokr_w2_a": "lokr", "lokr_w2_b": "lokr",
}
_UNSUPPORTED = {"lora_mid.weight": "LoCon with CP/Tucker decomposition", "hada_t1": "LoHa with Tucker decomposition",
                "hada_t2": "LoHa with Tucker decomposition", "lokr_t2": "LoKr with Tucker decomposition",
                "dora_scale": "DoRA", "diff": "a full-weight difference", "diff_b": "a full-weight difference",
                "oft_blocks": "OFT", "oft_diag": "OFT", "on_input": "IA3", "a1.weight": "GLoRA"}
KIND_NAMES = {"lora": "LoRA", "locon": "LoCon (LoRA with conv layers)", "loha": "LoHa", "lokr": "LoKr"}
# kohya names of SDXL files (two text encoders, LDM-style UNet blocks)
_SDXL_PREFIXES = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                  "lora_unet_output_blocks_")


class InitialWeightsError(ValueError):
    """The file cannot be continued; the message says why and what to do."""


@dataclass
class FileNetwork:
    """What a LoRA-family file holds, read from its header."""
    path: Path
    kind: str                          # lora | locon | loha | lokr
    modules: dict[str, str]            # module name -> algo
    dim: Optional[int]                 # rank of linear (and 1x1 conv) modules; None: none or not readable
    alpha: Optional[float]
    conv_dim: int                      # rank of 3x3 conv modules; 0: the file has none
    conv_alpha: Optional[float]
    has_text_encoder: bool
    has_unet: bool
    metadata: dict = field(default_factory=dict)

    @property
    def base(self) -> Optional[str]:
        """'sd1' / 'sd2' from kohya's metadata, None when the file does not say."""
        m = self.metadata
        version = m.get("ss_base_model_version", "")
        if version.startswith("sd_v1"):
            return "sd1"
        if version.startswith("sd_v2"):
            return "sd2"
        if m.get("ss_v2") in ("True", "False"):
            return "sd2" if m["ss_v2"] == "True" else "sd1"
        return None


def resolve(value: str) -> Path:
    return Path(value.strip()).expanduser()


def is_3x3_conv(module: str) -> bool:
    """UNet convs with a 3x3 kernel in kohya's names: the resnets' conv1/conv2 and the samplers' conv
    (conv_shortcut and proj_in are 1x1 and count as linear layers, as in LyCORIS)."""
    return module.startswith("lora_unet_") and (module.endswith(("_conv1", "_conv2")) or
                                                module.endswith("samplers_0_conv"))


def inspect(value: str) -> FileNetwork:
    """Read and check the file's header (no weights beyond the alpha scalars)."""
    from safetensors import safe_open

    path = resolve(value)
    if not path.exists():
        raise InitialWeightsError(f"no such file: {path}. Give the path of the .safetensors LoRA to continue")
    if not path.is_file():
        raise InitialWeightsError(f"{path} is not a file. Give the path of the .safetensors LoRA to continue")
    if path.suffix.lower() != ".safetensors":
        raise InitialWeightsError(f"{path.name} is not a .safetensors file (pickled .pt/.ckpt files can run code "
                                  "when loaded and are not read): use the LoRA's .safetensors file")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            alphas = {k: _scalar(f.get_tensor(k)) for k in f.keys() if k.endswith(".alpha") and shapes[k] in ((), (1,))}
    except Exception as e:  # safetensors raises its own error types for a damaged or foreign file
        raise InitialWeightsError(f"{path} could not be read as a safetensors file ({type(e).__name__}: {e}); "
                                  "give an intact .safetensors LoRA") from e
    return describe(path, shapes, alphas, metadata)


def _scalar(t: torch.Tensor) -> float:
    return float(t.float().reshape(-1)[0])


def describe(path: Path, shapes: dict[str, tuple], alphas: dict[str, float], metadata: dict) -> FileNetwork:
    """The file's kind, ranks and alphas from its tensor names and shapes."""
    if not shapes:
        raise InitialWeightsError(f"{path.name} holds no tensors: it is not a LoRA")
    sdxl = [k for k in shapes if k.startswith(_SDXL_PREFIXES)]
    if sdxl:
        raise InitialWeightsError(f"{path.name} is an SDXL LoRA (e.g. {sdxl[0]}); this Trainer trains SD1 and SD2 "
                                  "models: pick a LoRA made for SD1/SD2")
    foreign = [k for k in shapes if not k.startswith(("lora_te_", "lora_unet_"))]
    if foreign:
        raise InitialWeightsError(f"{path.name} is not a LoRA in kohya's key names (lora_unet_… / lora_te_…): "
                                  f"{_few(foreign)}. Convert it to kohya's format or pick another file")
    modules: dict[str, str] = {}
    for key in shapes:
        module, _, suffix = key.partition(".")
        if suffix in _UNSUPPORTED:
            raise InitialWeightsError(f"{path.name} is {_UNSUPPORTED[suffix]} ({key}), which this Trainer does "
                                      "not train: pick a plain LoRA, LoCon, LoHa or LoKr file")
        if suffix == "alpha":
            continue
        algo = _ALGO_OF_SUFFIX.get(suffix)
        if algo is None:
            raise InitialWeightsError(f"{path.name} holds a tensor this Trainer does not know: {key}")
        if modules.setdefault(module, algo) != algo:
            raise InitialWeightsError(f"{path.name} mixes {modules[module]} and {algo} tensors in {module}")
    algos = set(modules.values())
    if len(algos) != 1:
        raise InitialWeightsError(f"{path.name} mixes algorithms ({', '.join(sorted(algos))}): "
                                  "only files of one kind can be continued" if algos else
                                  f"{path.name} holds only alpha values, no LoRA weights")
    algo = algos.pop()
    linear = {m: _rank(m, algo, shapes, alphas) for m in modules if not is_3x3_conv(m)}
    conv = {m: _rank(m, algo, shapes, alphas) for m in modules if is_3x3_conv(m)}
    dim, alpha = _one_value(path, linear, "linear layers")
    conv_dim, conv_alpha = _one_value(path, conv, "3x3 conv layers")
    if algo == "lora":
        # kohya's LoCon puts modules on the resnets and samplers, not only on the attention blocks
        kind = "locon" if conv or any(_outside_attention(m) for m in modules) else "lora"
    else:
        kind = algo
    return FileNetwork(path=path, kind=kind, modules=modules, dim=dim, alpha=alpha, conv_dim=conv_dim or 0,
                       conv_alpha=conv_alpha, has_text_encoder=any(m.startswith("lora_te_") for m in modules),
                       has_unet=any(m.startswith("lora_unet_") for m in modules), metadata=metadata)


def _outside_attention(module: str) -> bool:
    return module.startswith("lora_unet_") and ("_resnets_" in module or "samplers_" in module)


def _rank(module: str, algo: str, shapes: dict, alphas: dict) -> tuple[Optional[int], Optional[float]]:
    """(rank, alpha) of one module; rank None where the shapes do not show it (LoKr without
    low-rank factors, whose alpha LyCORIS sets to the rank it was built with)."""
    if algo == "lora":
        rank = shapes[f"{module}.lora_down.weight"][0]
    elif algo == "loha":
        rank = shapes.get(f"{module}.hada_w1_b", (None,))[0]
    else:
        b = shapes.get(f"{module}.lokr_w2_b") or shapes.get(f"{module}.lokr_w1_b")
        rank = b[0] if b else None
    alpha = alphas.get(f"{module}.alpha")
    if algo == "lokr" and rank is None:
        rank = int(alpha) if alpha is not None and alpha == int(alpha) and alpha > 0 else None
        alpha = None   # full-matrix LoKr uses scale 1 whatever the alpha
    elif alpha is None and rank is not None:
        alpha = float(rank)   # no alpha stored: kohya and LyCORIS then use alpha = rank
    return rank, alpha


def _one_value(path: Path, ranks: dict, what: str) -> tuple[Optional[int], Optional[float]]:
    """The single rank and alpha of a group of modules; files with per-block ranks are refused."""
    dims = {r for r, _ in ranks.values() if r is not None}
    alphas = {round(a, 4) for _, a in ranks.values() if a is not None}
    for values, name in ((dims, "ranks"), (alphas, "alphas")):
        if len(values) > 1:
            shown = ", ".join(f"{v:g}" for v in sorted(values)[:6])
            raise InitialWeightsError(f"{path.name} has {what} of different {name} ({shown}): continuing a file "
                                      "with per-block values is not supported; pick a file with one rank and alpha")
    alpha = next((a for _, a in ranks.values() if a is not None), None)
    return (dims.pop() if dims else None), alpha


def problems(cfg) -> list[str]:
    """Why cfg cannot continue network.initial_weights (empty when it can): the checks that need the
    file but not the model."""
    n = cfg.network
    try:
        net = inspect(n.initial_weights)
    except InitialWeightsError as e:
        return [str(e)]
    out = []
    if not kind_fits(net.kind, n.method):
        out.append(f"{net.path.name} is a {KIND_NAMES[net.kind]} file but network.method is {n.method}: "
                   f"set network.method = {net.kind} to continue it, or pick a {KIND_NAMES[n.method]} file")
    for part, has, flag in (("text-encoder", net.has_text_encoder, "train_text_encoder"),
                            ("UNet", net.has_unet, "train_unet")):
        if has != bool(getattr(n, flag)):
            out.append(f"{net.path.name} {'has' if has else 'has no'} {part} modules but network.{flag} is "
                       f"{'off' if has else 'on'}: set network.{flag} = {'true' if has else 'false'} to continue "
                       "it as it is")
    return out


def kind_fits(kind: str, method: str) -> bool:
    """A plain LoRA file continues as LoCon too (with no conv layers); everything else must match."""
    return kind == method or (kind == "lora" and method == "locon")


def adopt(cfg) -> list[str]:
    """Put the file's rank and alpha into cfg.network (kohya's --dim_from_weights). Returns a line
    per changed value for the user; cfg is changed in place so the save plan, the file's metadata
    and the card notes all report the shapes actually trained."""
    n = cfg.network
    net = inspect(n.initial_weights)
    wanted = {"dim": net.dim, "alpha": net.alpha}
    if n.method != "lora":
        wanted.update(conv_dim=net.conv_dim, conv_alpha=net.conv_alpha)
    notes = []
    for name, value in wanted.items():
        if value is None:
            continue
        value = type(getattr(n, name))(value)
        if not math.isclose(getattr(n, name), value, rel_tol=1e-3):
            notes.append(f"network.{name}: {getattr(n, name):g} -> {value:g} (the value in {net.path.name})")
            setattr(n, name, value)
    if notes:
        notes.insert(0, "network.initial_weights: continuing the file with its own rank and alpha:")
    return notes


def load_into(network: torch.nn.Module, value: str, bundle, method: str) -> None:
    """Copy the file's tensors into the built network, checking that both hold the same modules with
    the same shapes; alpha must agree too (it sets the scale the network was built with)."""
    from safetensors.torch import load_file

    path = resolve(value)
    info = inspect(value)
    if info.base and info.base != bundle.version:
        raise InitialWeightsError(f"{path.name} was trained on {info.base.upper()} (its metadata says so) but the "
                                  f"loaded model is {bundle.version.upper()}: load the model family the file was "
                                  "made for, or pick a LoRA made for this one")
    own = network.state_dict()
    theirs = load_file(str(path))
    missing = [k for k in own if k not in theirs and not k.endswith(".alpha")]
    extra = [k for k in theirs if k not in own]
    if missing or extra:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensor(s) in the file that this network does not have ({_few(extra)})")
        if missing:
            parts.append(f"{len(missing)} tensor(s) of this network missing from the file ({_few(missing)})")
        raise InitialWeightsError(f"{path.name} does not fit the network network.method = "
                                  f"{method} builds on this model: " + "; ".join(parts)
                                  + ". Check network.method, network.train_unet / train_text_encoder and that the "
                                  "file was made for this model family")
    wrong = [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    if wrong:
        k = wrong[0]
        raise InitialWeightsError(f"{path.name}: {len(wrong)} tensor(s) have other shapes than this model's "
                                  f"network, e.g. {k}: {tuple(theirs[k].shape)} in the file, {tuple(own[k].shape)} "
                                  f"here ({_few(wrong[1:])}). The file was made for another model (SD1 vs SD2 "
                                  "widths) or with another network.lokr_factor")
    for k, t in own.items():
        if k.endswith(".alpha") and k in theirs and not _alpha_ok(k, own, theirs):
            raise InitialWeightsError(f"{path.name}: {k} is {_scalar(theirs[k]):g} in the file but "
                                      f"{_scalar(t):g} in the network")
    params = dict(network.named_parameters())
    buffers = dict(network.named_buffers())
    with torch.no_grad():
        for k, t in theirs.items():
            target = params.get(k, buffers.get(k))
            if target is None:
                raise InitialWeightsError(f"{path.name}: {k} is not a weight of this network")
            target.copy_(t.to(target.dtype).reshape(target.shape))


def _alpha_ok(key: str, own: dict, theirs: dict) -> bool:
    module = key[: -len(".alpha")]
    if f"{module}.lokr_w1" in theirs and f"{module}.lokr_w2" in theirs:
        return True   # full-matrix LoKr: alpha is not used
    return math.isclose(_scalar(own[key]), _scalar(theirs[key]), rel_tol=1e-3)


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
