"""Fake of modules/sd_vae.py (1.10.1): which VAE is in shared.sd_model.first_stage_model.

loaded_vae_file None means the checkpoint's own VAE; otherwise the path of the VAE file the user
selected (opts.sd_vae / per-model preference).
"""
import os

from modules import hashes

vae_dict = {}
base_vae = None
loaded_vae_file = None
checkpoint_info = None


def get_loaded_vae_name():
    if loaded_vae_file is None:
        return None
    return os.path.basename(loaded_vae_file)


def get_loaded_vae_hash():
    if loaded_vae_file is None:
        return None
    sha256 = hashes.sha256(loaded_vae_file, 'vae')
    return sha256[0:10] if sha256 else None


def clear_loaded_vae():
    global loaded_vae_file
    loaded_vae_file = None
