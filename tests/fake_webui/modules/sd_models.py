"""Fake of modules/sd_models.py (1.10.1): checkpoint info, the loaded-model registry and the calls
an extension may make around the model. Nothing here reads a checkpoint.

- CheckpointInfo(filename): name (relative to models/Stable-diffusion or basename), name_for_extra,
  model_name, hash (legacy 8 hex), sha256, shorthash (sha256[:10]), title "name [shorthash]",
  short_title, ids, metadata (safetensors __metadata__), is_safetensors.
- model_data (SdModelData): sd_model, loaded_sd_models, was_loaded_at_least_once, get/set_sd_model.
  Reading shared.sd_model before any model was loaded makes the real WebUI load one; the fake calls
  load_model(), which records the request in load_model_calls and builds a model only if a test set
  `fake_loader` (a callable returning a model).
- send_model_to_cpu / send_model_to_device / unload_model_weights / reload_model_weights: record the
  call in model_moves and move the fake's tensors like the real ones.
"""
import json
import os
import threading

from modules import devices, hashes, paths, script_callbacks, shared, sd_vae

model_path = os.path.abspath(os.path.join(paths.models_path, "Stable-diffusion"))
checkpoints_list = {}
checkpoint_aliases = {}

load_model_calls: list = []
model_moves: list = []
fake_loader = None


def model_hash(filename):
    """Legacy short hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits ('NOFILE' if missing)."""
    import hashlib
    try:
        with open(filename, "rb") as file:
            m = hashlib.sha256()
            file.seek(0x100000)
            m.update(file.read(0x10000))
            return m.hexdigest()[0:8]
    except FileNotFoundError:
        return 'NOFILE'


def read_metadata_from_safetensors(filename):
    """The safetensors __metadata__ dict; string values that start with '{' are JSON-decoded."""
    with open(filename, mode="rb") as file:
        n = int.from_bytes(file.read(8), "little")
        start = file.read(2)
        assert n > 2 and start in (b'{"', b"{'"), f"{filename} is not a safetensors file"
        header = json.loads(start + file.read(n - 2))
    res = {}
    for k, v in header.get("__metadata__", {}).items():
        res[k] = v
        if isinstance(v, str) and v[0:1] == '{':
            try:
                res[k] = json.loads(v)
            except Exception:
                pass
    return res


class CheckpointInfo:
    def __init__(self, filename, sha256=None):
        self.filename = filename
        abspath = os.path.abspath(filename)
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        if abspath.startswith(model_path):
            name = abspath.replace(model_path, '')
        else:
            name = os.path.basename(filename)
        if name.startswith("\\") or name.startswith("/"):
            name = name[1:]
        self.metadata = {}
        if self.is_safetensors and os.path.isfile(filename):
            self.metadata = read_metadata_from_safetensors(filename)
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = model_hash(filename)
        if sha256 is None and os.path.isfile(filename):
            sha256 = hashes.sha256(filename, f"checkpoint/{name}")
        self.sha256 = sha256
        self.shorthash = self.sha256[0:10] if self.sha256 else None
        self.title = name if self.shorthash is None else f'{name} [{self.shorthash}]'
        self.short_title = self.name_for_extra if self.shorthash is None else f'{self.name_for_extra} [{self.shorthash}]'
        self.ids = [self.hash, self.model_name, self.title, name, self.name_for_extra, f'{name} [{self.hash}]']
        if self.shorthash:
            self.ids += [self.shorthash, self.sha256, f'{self.name} [{self.shorthash}]', f'{self.name_for_extra} [{self.shorthash}]']

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self

    def calculate_shorthash(self):
        return self.shorthash


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False
        self.lock = threading.Lock()

    def get_sd_model(self):
        if self.was_loaded_at_least_once:
            return self.sd_model
        if self.sd_model is None:
            with self.lock:
                if self.sd_model is not None or self.was_loaded_at_least_once:
                    return self.sd_model
                load_model()
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if already_loaded:
            sd_vae.loaded_vae_file = getattr(v, "loaded_vae_file", None)
            sd_vae.checkpoint_info = v.sd_checkpoint_info
        try:
            self.loaded_sd_models.remove(v)
        except ValueError:
            pass
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    """Real: builds the model from a checkpoint, hijacks it, runs model_loaded callbacks."""
    load_model_calls.append(checkpoint_info)
    if fake_loader is None:
        return None
    sd_model = fake_loader()
    model_data.set_sd_model(sd_model)
    model_data.was_loaded_at_least_once = True
    sd_vae.checkpoint_info = getattr(sd_model, "sd_checkpoint_info", None)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def send_model_to_cpu(m):
    model_moves.append(("cpu", m))
    if m is not None:
        m.to(devices.cpu)
    devices.torch_gc()


def send_model_to_device(m):
    model_moves.append(("device", m))
    m.to(devices.device)


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    model_moves.append(("reload", sd_model))
    m = sd_model or shared.sd_model
    if m is not None:
        send_model_to_device(m)
    return m


def reset():
    """Fake-only."""
    global model_data, fake_loader
    model_data = SdModelData()
    fake_loader = None
    load_model_calls.clear()
    model_moves.clear()
    checkpoints_list.clear()
    checkpoint_aliases.clear()
