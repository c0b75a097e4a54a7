"""Fake of extensions-builtin/Lora/network.py (1.10.1): SdVersion and NetworkOnDisk, the entry the
Lora page lists for each file.

NetworkOnDisk(name, filename): metadata from the safetensors header, alias = ss_output_name or the
file name, hash = sshs_model_hash (the real one also uses a hash cache), sd_version from
ss_base_model_version "sdxl_*" -> SDXL, ss_v2 == "True" -> SD2, any other metadata -> SD1, none ->
Unknown (files whose version differs from the loaded model are hidden unless opts.lora_show_all).
Network and NetworkWeights: what networks.load_network builds from a file.
"""
import enum
import os

from modules import errors, sd_models


class SdVersion(enum.Enum):
    Unknown = 1
    SD1 = 2
    SD2 = 3
    SDXL = 4


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.metadata = {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if self.is_safetensors:
            try:
                self.metadata = sd_models.read_metadata_from_safetensors(filename)
            except Exception as e:
                errors.display(e, f"reading lora {filename}")
        self.alias = self.metadata.get('ss_output_name', self.name)
        self.hash = self.metadata.get('sshs_model_hash') or ''
        self.shorthash = self.hash[0:12]
        self.sd_version = self.detect_version()

    def detect_version(self):
        if str(self.metadata.get('ss_base_model_version', "")).startswith("sdxl_"):
            return SdVersion.SDXL
        elif str(self.metadata.get('ss_v2', "")) == "True":
            return SdVersion.SD2
        elif len(self.metadata):
            return SdVersion.SD1
        return SdVersion.Unknown


class NetworkWeights:
    """The tensors of one module of a network file, grouped by the WebUI layer they belong to."""

    def __init__(self, network_key, sd_key, w, sd_module):
        self.network_key = network_key   # the file's module name, e.g. lora_unet_..._proj_in
        self.sd_key = sd_key             # the WebUI layer name it was matched to
        self.w = w                       # suffix (lora_up.weight, hada_w1_a, alpha, ...) -> tensor
        self.sd_module = sd_module


class Network:
    def __init__(self, name, network_on_disk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.keys_failed_to_match = {}   # fake-only: the real one only logs them (at DEBUG level)
