"""Fake of modules/hashes.py (1.10.1) without the on-disk cache: sha256(filename, title,
use_addnet_hash=False) hashes the whole file, or with use_addnet_hash the bytes after a
safetensors header (kohya's sshs_model_hash); None under --no-hashing."""
import hashlib

from modules import shared


def calculate_sha256(filename):
    h = hashlib.sha256()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def addnet_hash_safetensors(b):
    h = hashlib.sha256()
    b.seek(0)
    n = int.from_bytes(b.read(8), "little")
    b.seek(n + 8)
    for chunk in iter(lambda: b.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    return None  # no cache in the fake


def sha256(filename, title, use_addnet_hash=False):
    if shared.cmd_opts.no_hashing:
        return None
    if use_addnet_hash:
        with open(filename, "rb") as f:
            return addnet_hash_safetensors(f)
    return calculate_sha256(filename)
