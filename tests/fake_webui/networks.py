"""Fake of extensions-builtin/Lora/networks.py (1.10.1), importable as `networks` like the real one
(the WebUI leaves it in sys.modules after loading the Lora extension's scripts).

After a generation with <lora:...> the real Lora support leaves the LoRA MERGED into the weights:
each affected Linear/Conv2d/GroupNorm/LayerNorm/MultiheadAttention keeps
  network_weights_backup   copy of the original weight on the CPU (MHA: (in_proj_weight, out_proj.weight))
  network_bias_backup      copy of the original bias (None if no bias)
  network_current_names    tuple of (name, te_multiplier, unet_multiplier, dyn_dim) applied
  network_layer_name       set on every module by assign_network_names_to_compvis_modules
network_restore_weights_from_backup(m) copies the backups back IN PLACE (a None bias backup sets
the bias to None); network_reset_cached_weight(m) forgets backups and names, so the next
generation re-applies. fake_sd_model.apply_merged_lora() produces that state.

load_network(name, network_on_disk) reads a file as the real one does for SD1/SD2 models: each
module name (the part of a key before the first '.') is turned into the WebUI's layer name
(convert_diffusers_name_to_compvis: kohya's diffusers-style names -> the ldm layout, which assumes
SD's two resnets per UNet level), looked up in sd_model.network_layer_mapping (q/k/v_proj also by
their parent), and its tensors become a LoRA (lora_up/lora_down, optional lora_mid; or lora_A/lora_B),
LoHa (hada_w1_a/_b, hada_w2_a/_b) or LoKr (lokr_w1 or lokr_w1_a/_b, lokr_w2 or lokr_w2_a/_b) module.
A group no type accepts raises AssertionError; a module on a layer that is not a Linear or Conv2d
raises too. Keys that match no layer are kept in the fake-only Network.keys_failed_to_match (the
real one logs them at DEBUG level). NetworkModule.calc_updown(weight) gives the update the WebUI
adds to the layer's weight (the documented formulas, scaled by alpha/dim and the multiplier), and
raises when it cannot take the weight's shape. merged_deltas(net, sd_model) collects them by
parameter name, for fake_sd_model.apply_merged_lora. Not faked: SDXL, OFT/IA3/GLoRA/full/norm
modules, CP-decomposed LoHa/LoKr (hada_t1/t2, lokr_t2), DoRA, bundled embeddings, the SD2 text
encoder's fused attention (MultiheadAttention).
"""
import os
import re

import torch
from safetensors.torch import load_file

import network
from modules import devices, shared

available_networks = {}
available_network_aliases = {}
loaded_networks = []
networks_in_memory = {}
available_network_hash_lookup = {}
forbidden_network_aliases = {}
list_available_networks_calls = 0


def store_weights_backup(weight):
    if weight is None:
        return None
    return weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj, field, weight):
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    # No torch.no_grad() here, as in the real one: the WebUI calls it during no_grad inference. UNet
    # parameters of the real model have requires_grad=True (ldm freezes only the VAE and the text
    # encoder), so calling this outside no_grad raises "a leaf Variable that requires grad...".
    if weights_backup is not None:
        if isinstance(self, torch.nn.MultiheadAttention):
            restore_weights_backup(self, 'in_proj_weight', weights_backup[0])
            restore_weights_backup(self.out_proj, 'weight', weights_backup[1])
        else:
            restore_weights_backup(self, 'weight', weights_backup)
    if isinstance(self, torch.nn.MultiheadAttention):
        restore_weights_backup(self.out_proj, 'bias', bias_backup)
    else:
        restore_weights_backup(self, 'bias', bias_backup)


def network_reset_cached_weight(self):
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def assign_network_names_to_compvis_modules(sd_model):
    """Registered by the Lora extension as an on_model_loaded callback."""
    mapping = {}
    cond_stage_model = getattr(sd_model.cond_stage_model, 'wrapped', sd_model.cond_stage_model)
    for name, module in cond_stage_model.named_modules():
        network_name = name.replace(".", "_")
        mapping[network_name] = module
        module.network_layer_name = network_name
    for name, module in sd_model.model.named_modules():
        network_name = name.replace(".", "_")
        mapping[network_name] = module
        module.network_layer_name = network_name
    sd_model.network_layer_mapping = mapping


RESNET_LAYERS = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                 "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _unet_block(prefix: str, index: int, kind: str, rest: str) -> str:
    """A block's sub-layer: attentions sit at position 1 of the ldm block, resnets at 0 (renamed layers)."""
    if kind == "resnets":
        return f"{prefix}_{index}_0_{RESNET_LAYERS.get(rest, rest)}"
    return f"{prefix}_{index}_1_{rest}"


def convert_diffusers_name_to_compvis(key: str, is_sd2: bool) -> str:
    """kohya module name -> the WebUI's layer name; other names come back unchanged."""
    m = re.match(r"lora_unet_conv_in(.*)", key)
    if m:
        return "diffusion_model_input_blocks_0_0" + m.group(1)
    m = re.match(r"lora_unet_conv_out(.*)", key)
    if m:
        return "diffusion_model_out_2" + m.group(1)
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", key)
    if m:
        return f"diffusion_model_time_embed_{int(m.group(1)) * 2 - 2}{m.group(2)}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:  # input_blocks: conv_in, then per level two layers and a downsampler
        return _unet_block("diffusion_model_input_blocks", 1 + 3 * int(m.group(1)) + int(m.group(3)), m.group(2), m.group(4))
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key)
    if m:  # middle_block: resnet, attention, resnet
        index = 1 if m.group(1) == "attentions" else 2 * int(m.group(2))
        part = m.group(3) if m.group(1) == "attentions" else RESNET_LAYERS.get(m.group(3), m.group(3))
        return f"diffusion_model_middle_block_{index}_{part}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key)
    if m:  # output_blocks: three per level
        return _unet_block("diffusion_model_output_blocks", 3 * int(m.group(1)) + int(m.group(3)), m.group(2), m.group(4))
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", key)
    if m:
        return f"diffusion_model_input_blocks_{3 + 3 * int(m.group(1))}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", key)
    if m:  # after the level's last resnet, and after its attention where the level has one (all but the first)
        level = int(m.group(1))
        return f"diffusion_model_output_blocks_{2 + 3 * level}_{2 if level > 0 else 1}_conv"
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        layer, rest = m.group(1), m.group(2)
        if is_sd2:  # OpenCLIP names
            rest = rest.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")
            return f"model_transformer_resblocks_{layer}_{rest}"
        return f"transformer_text_model_encoder_layers_{layer}_{rest}"
    return key


class NetworkModule:
    """One module of a loaded network: its tensors, the layer it changes, and the update it makes."""

    def __init__(self, net, weights, kind):
        self.network, self.kind = net, kind
        self.network_key, self.sd_key, self.sd_module = weights.network_key, weights.sd_key, weights.sd_module
        self.w = weights.w
        if not isinstance(self.sd_module, (torch.nn.Linear, torch.nn.Conv2d)):
            raise AssertionError(f"Lora layer {self.network_key} matched a layer with unsupported type: "
                                 f"{type(self.sd_module).__name__}")
        if any(k in self.w for k in ("hada_t1", "hada_t2", "lokr_t2", "dora_scale", "bias")):
            raise NotImplementedError(f"fake WebUI: {self.network_key} uses a form the fake does not load")
        self.shape = self.sd_module.weight.shape
        self.alpha = self.w["alpha"].item() if "alpha" in self.w else None
        self.scale = self.w["scale"].item() if "scale" in self.w else None
        if kind == "lora":
            self.dim = self.w["lora_down.weight"].shape[0]
            self._check_lora_conv()
        elif kind == "hada":
            self.dim = self.w["hada_w1_b"].shape[0]
        else:  # LoKr: the rank of a low-rank factor, none when both factors are full matrices
            self.dim = next((self.w[k].shape[0] for k in ("lokr_w2_b", "lokr_w1_b") if k in self.w), None)

    def _check_lora_conv(self):
        """The WebUI builds a Conv2d per factor: down with the layer's kernel (or 1x1), up always 1x1."""
        if not isinstance(self.sd_module, torch.nn.Conv2d):
            return
        down, up = self.w["lora_down.weight"], self.w["lora_up.weight"]
        if down.dim() == 4 and tuple(down.shape[2:]) not in ((1, 1), tuple(self.sd_module.kernel_size)):
            raise ValueError(f"{self.network_key}: lora_down kernel {tuple(down.shape[2:])} fits neither 1x1 nor "
                             f"the layer's {tuple(self.sd_module.kernel_size)}")
        if up.dim() == 4 and tuple(up.shape[2:]) != (1, 1):
            raise ValueError(f"{self.network_key}: lora_up must be 1x1, not {tuple(up.shape[2:])}")

    def multiplier(self):
        te = "transformer" in self.sd_key[:20]
        return self.network.te_multiplier if te else self.network.unet_multiplier

    def calc_scale(self):
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def _product(self, a, b, shape):
        return (a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1)).reshape(shape)

    def calc_updown(self, orig_weight):
        w = {k: v.to(orig_weight.device, dtype=torch.float32) for k, v in self.w.items()}
        if self.kind == "lora":
            up, down = w["lora_up.weight"], w["lora_down.weight"]
            shape = [up.shape[0], down.shape[1]]
            if "lora_mid.weight" in w:
                mid = w["lora_mid.weight"]
                updown = torch.einsum("nmkl,in,mj->ijkl", mid, up.flatten(1), down.flatten(1))
            else:
                shape += list(down.shape[2:]) if down.dim() == 4 else []
                updown = self._product(up, down, shape)
        elif self.kind == "hada":
            shape = [w["hada_w1_a"].shape[0], w["hada_w1_b"].shape[1]]
            shape += list(w["hada_w1_b"].shape[2:]) if w["hada_w1_b"].dim() == 4 else []
            updown = self._product(w["hada_w1_a"], w["hada_w1_b"], shape) * \
                self._product(w["hada_w2_a"], w["hada_w2_b"], shape)
        else:
            w1 = w["lokr_w1"] if "lokr_w1" in w else w["lokr_w1_a"] @ w["lokr_w1_b"]
            w2 = w["lokr_w2"] if "lokr_w2" in w else w["lokr_w2_a"] @ w["lokr_w2_b"]
            shape = list(orig_weight.shape) if orig_weight.dim() == 4 else \
                [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
            if w2.dim() == 4:
                w1 = w1[:, :, None, None]
            updown = torch.kron(w1, w2.contiguous()).reshape(shape)
        if updown.numel() != orig_weight.numel():
            raise ValueError(f"{self.network_key}: its update has shape {tuple(updown.shape)}, which cannot be "
                             f"added to {self.sd_key}'s weight of shape {tuple(orig_weight.shape)}")
        return updown.reshape(orig_weight.shape) * self.calc_scale() * self.multiplier()


def _module_kind(w) -> str:
    if "lora_up.weight" in w and "lora_down.weight" in w:
        return "lora"
    if "lora_A.weight" in w and "lora_B.weight" in w:  # PEFT names: the same factors
        w["lora_up.weight"], w["lora_down.weight"] = w.pop("lora_B.weight"), w.pop("lora_A.weight")
        return "lora"
    if all(k in w for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
        return "hada"
    has1 = "lokr_w1" in w or ("lokr_w1_a" in w and "lokr_w1_b" in w)
    has2 = "lokr_w2" in w or ("lokr_w2_a" in w and "lokr_w2_b" in w)
    if has1 and has2:
        return "lokr"
    raise AssertionError(f"Could not find a module type that would accept those keys: {', '.join(w)}")


def load_network(name, network_on_disk):
    net = network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    path = network_on_disk.filename
    sd = load_file(path) if path.lower().endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    model = shared.sd_model
    if not hasattr(model, "network_layer_mapping"):
        assign_network_names_to_compvis_modules(model)
    mapping = model.network_layer_mapping
    is_sd2 = "model_transformer_resblocks" in mapping
    matched = {}
    for key_network, weight in sd.items():
        base, _, part = key_network.partition(".")
        key = convert_diffusers_name_to_compvis(base, is_sd2)
        sd_module = mapping.get(key)
        if sd_module is None:
            m = re.match(r"(.*)_([qkv]_proj)$", key)
            sd_module = mapping.get(m.group(1)) if m else None
        if sd_module is None and "lora_unet" in base:
            key = base.replace("lora_unet", "diffusion_model")
            sd_module = mapping.get(key)
        if sd_module is None:
            net.keys_failed_to_match[key_network] = key
            continue
        if key not in matched:
            matched[key] = network.NetworkWeights(network_key=key_network, sd_key=key, w={}, sd_module=sd_module)
        matched[key].w[part] = weight
    for key, weights in matched.items():
        net.modules[key] = NetworkModule(net, weights, _module_kind(weights.w))
    return net


def merged_deltas(net, sd_model) -> dict:
    """{parameter name in sd_model: the update the WebUI adds to it} for every module of `net`."""
    names = {id(m): n for n, m in sd_model.named_modules()}
    return {f"{names[id(mod.sd_module)]}.weight": mod.calc_updown(mod.sd_module.weight.detach())
            for mod in net.modules.values()}


def process_network_files(names=None):
    candidates = list(shared.walk_files(shared.cmd_opts.lora_dir, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    candidates += list(shared.walk_files(shared.cmd_opts.lyco_dir_backcompat, allowed_extensions=[".pt", ".ckpt", ".safetensors"]))
    for filename in candidates:
        if os.path.isdir(filename):
            continue
        name = os.path.splitext(os.path.basename(filename))[0]
        if names and name not in names:
            continue
        entry = network.NetworkOnDisk(name, filename)
        available_networks[name] = entry
        if entry.alias in available_network_aliases:
            forbidden_network_aliases[entry.alias.lower()] = 1
        available_network_aliases[name] = entry
        available_network_aliases[entry.alias] = entry


def list_available_networks():
    global list_available_networks_calls
    list_available_networks_calls += 1
    available_networks.clear()
    available_network_aliases.clear()
    forbidden_network_aliases.clear()
    available_network_hash_lookup.clear()
    forbidden_network_aliases.update({"none": 1, "Addams": 1})
    os.makedirs(shared.cmd_opts.lora_dir, exist_ok=True)
    process_network_files()


def reset():
    """Fake-only."""
    global list_available_networks_calls
    for d in (available_networks, available_network_aliases, networks_in_memory,
              available_network_hash_lookup, forbidden_network_aliases):
        d.clear()
    loaded_networks.clear()
    list_available_networks_calls = 0
