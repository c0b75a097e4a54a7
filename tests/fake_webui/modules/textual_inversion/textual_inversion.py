"""Fake of modules/textual_inversion/textual_inversion.py (1.10.1): the EmbeddingDatabase behind
sd_hijack.model_hijack.embedding_db, loading files the way the real one does.

load_textual_inversion_embeddings(force_reload=False): rescans only when a folder changed unless
force_reload; then reads every non-empty file: .pt/.bin through the WebUI's checked torch.load,
.safetensors with safetensors. A file is an embedding when it holds `string_to_param` with one
term (the WebUI's .pt layout), `clip_g` + `clip_l` (SDXL), or one tensor (a diffusers concept,
the .safetensors layout); anything else raises. Its width (last dimension) must equal the loaded
model's token-embedding width, else it goes to skipped_embeddings. A .pt the checked load refuses is
reported and left out with the real message; a file that raises is reported (errors.report) and
left out. word_embeddings maps name -> Embedding. Fake-only: load_calls records each call.
Not faked: embeddings inside images (.png/.webp/... are skipped, as the real one skips an image
carrying no embedding), the optimizer-state side files.

The checked torch.load (modules/safe.py: a restricted unpickler over an allow list of globals) is
stood in for by torch.load(weights_only=True), torch's own restricted unpickler: both refuse code.
"""
import os
import pickle
import sys

import safetensors.torch
import torch

from modules import devices, errors, hashes, shared

IMAGE_EXTENSIONS = (".png", ".webp", ".jxl", ".avif")


class Embedding:
    def __init__(self, vec, name, step=None):
        self.vec = vec
        self.name = name
        self.step = step
        self.shape = None          # the width of one vector
        self.vectors = 0           # how many vectors (tokens) it stands for
        self.sd_checkpoint = None
        self.sd_checkpoint_name = None
        self.filename = None
        self.hash = None
        self.shorthash = None

    def set_hash(self, v):
        self.hash = v
        self.shorthash = v[0:12]


def _single_term(param_dict, filename):
    if len(param_dict) != 1:
        raise AssertionError(f"{filename}: embedding file has multiple terms in it")
    return next(iter(param_dict.values()))


def create_embedding_from_data(data, name, filename="unknown embedding file", filepath=None):
    """An Embedding from a loaded file's contents; raises for contents that are none of the three layouts."""
    if "string_to_param" in data:                                   # the WebUI's own .pt layout
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)             # a pickled ParameterDict
        vec = _single_term(params, filename).detach().to(devices.device, dtype=torch.float32)
        width, vectors = vec.shape[-1], vec.shape[0]
    elif type(data) is dict and "clip_g" in data and "clip_l" in data:  # SDXL: two encoders' vectors
        vec = {k: v.detach().to(devices.device, dtype=torch.float32) for k, v in data.items()}
        width = data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
        vectors = data["clip_g"].shape[0]
    elif type(data) is dict and type(next(iter(data.values()), None)) is torch.Tensor:  # diffusers concept
        t = _single_term(data, filename)
        vec = (t.unsqueeze(0) if t.dim() == 1 else t).detach().to(devices.device, dtype=torch.float32)
        width, vectors = vec.shape[-1], vec.shape[0]
    else:
        raise Exception(f"Couldn't identify {filename} as neither textual inversion embedding nor diffuser concept.")

    embedding = Embedding(vec, name, step=data.get("step"))
    embedding.sd_checkpoint = data.get("sd_checkpoint")
    embedding.sd_checkpoint_name = data.get("sd_checkpoint_name")
    embedding.vectors, embedding.shape = vectors, width
    if filepath:
        embedding.filename = filepath
        embedding.set_hash(hashes.sha256(filepath, "textual_inversion/" + name) or "")
    return embedding


def checked_torch_load(path):
    """Like the WebUI's torch.load: a file its check refuses is reported and gives None, not an exception."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        errors.report(f"Error verifying pickled file from {path}: {type(e).__name__}: {e}")
        return None


class DirWithTextualInversionEmbeddings:
    def __init__(self, path):
        self.path = path
        self.mtime = None

    def has_changed(self):
        if not os.path.isdir(self.path):
            return False
        return self.mtime is None or os.path.getmtime(self.path) > self.mtime

    def update(self):
        if os.path.isdir(self.path):
            self.mtime = os.path.getmtime(self.path)


class EmbeddingDatabase:
    def __init__(self):
        self.ids_lookup = {}
        self.word_embeddings = {}
        self.skipped_embeddings = {}
        self.expected_shape = -1
        self.embedding_dirs = {}
        self.previously_displayed_embeddings = ()
        self.load_calls = []

    def add_embedding_dir(self, path):
        self.embedding_dirs[path] = DirWithTextualInversionEmbeddings(path)

    def clear_embedding_dirs(self):
        self.embedding_dirs.clear()

    def register_embedding(self, embedding, model):
        """Indexed by the first token of its name, longest token sequence first (prompt parsing looks there)."""
        ids = model.cond_stage_model.tokenize([embedding.name])[0]
        lookup = [x for x in self.ids_lookup.get(ids[0], []) if x[1].name != embedding.name]
        lookup.append((ids, embedding))
        self.ids_lookup[ids[0]] = sorted(lookup, key=lambda x: len(x[0]), reverse=True)
        self.word_embeddings[embedding.name] = embedding
        return embedding

    def get_expected_shape(self):
        return shared.sd_model.cond_stage_model.encode_embedding_init_text(",", 1).shape[1]

    def load_from_file(self, path, filename):
        name, ext = os.path.splitext(filename)
        ext = ext.lower()
        if ext in IMAGE_EXTENSIONS:
            return
        if ext in (".pt", ".bin"):
            data = checked_torch_load(path)
        elif ext == ".safetensors":
            data = safetensors.torch.load_file(path, device="cpu")
        else:
            return
        if data is None:
            print(f"Unable to load Textual inversion embedding due to data issue: '{name}'.", file=sys.stderr)
            return
        embedding = create_embedding_from_data(data, name, filename=filename, filepath=path)
        if self.expected_shape == -1 or self.expected_shape == embedding.shape:
            self.register_embedding(embedding, shared.sd_model)
        else:
            self.skipped_embeddings[name] = embedding

    def load_from_dir(self, embdir):
        if not os.path.isdir(embdir.path):
            return
        for root, _, files in os.walk(embdir.path, followlinks=True):
            for fn in files:
                try:
                    full = os.path.join(root, fn)
                    if os.stat(full).st_size == 0:
                        continue
                    self.load_from_file(full, fn)
                except Exception:
                    errors.report(f"Error loading embedding {fn}", exc_info=True)

    def load_textual_inversion_embeddings(self, force_reload=False):
        self.load_calls.append(force_reload)
        if not force_reload and not any(d.has_changed() for d in self.embedding_dirs.values()):
            return
        self.ids_lookup.clear()
        self.word_embeddings.clear()
        self.skipped_embeddings.clear()
        self.expected_shape = self.get_expected_shape()
        for embdir in self.embedding_dirs.values():
            self.load_from_dir(embdir)
            embdir.update()
        ordered = sorted(self.word_embeddings.values(), key=lambda e: e.name.lower())
        self.word_embeddings.clear()  # same dict object: others hold a reference to it, as in the real one
        self.word_embeddings.update({e.name: e for e in ordered})
