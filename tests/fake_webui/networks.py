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
"""
import os

import torch

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
