"""Tests of extensions_lib.export: files are read back with independent readers (raw bytes,
safetensors, torch.load, zipfile, pickletools, PIL), never only with our own code."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickletools
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
import safetensors.torch

from extensions_lib.export import (
    OutputExistsError,
    atomic_write,
    autov2_hash,
    embedding_metadata,
    existing_previews,
    file_sha256,
    legacy_hash,
    lora_metadata,
    model_hash_sha256,
    output_path,
    safetensors_data_sha256,
    save_safetensors,
    save_torch_legacy,
    validate_output_name,
    with_hashes,
    write_lora_sidecar,
    write_preview_png,
)

SS_KEYS = {
    "ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
    "ss_base_model_version", "ss_v2", "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash",
    "ss_vae_name", "ss_resolution", "ss_num_train_images", "ss_num_reg_images", "ss_num_epochs", "ss_epoch",
    "ss_steps", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr", "ss_optimizer", "ss_lr_scheduler",
    "ss_lr_warmup_steps", "ss_clip_skip", "ss_max_token_length", "ss_mixed_precision", "ss_noise_offset",
    "ss_min_snr_gamma", "ss_seed", "ss_tag_frequency", "ss_dataset_dirs", "ss_training_started_at",
    "ss_training_finished_at", "ss_training_comment",
}
MODELSPEC_KEYS = {
    "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation", "modelspec.title",
    "modelspec.resolution", "modelspec.date", "modelspec.prediction_type", "modelspec.encoder_layer",
    "modelspec.description",
}
# globals the WebUI's RestrictedUnpickler (modules/safe.py, v1.10.1) lets a .pt use
WEBUI_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    *{("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")},
}


def lora_kwargs(**over):
    kw = dict(
        output_name="my_lora", network_module="networks.lora", dim=8, alpha=4.0,
        network_args={"conv_dim": 4, "algo": "locon"}, base_model_version="sd_v1", v2=False, v_prediction=False,
        sd_model_name="v1-5-pruned.safetensors", sd_model_hash="e1441589", sd_new_model_hash="a" * 64,
        vae_name=None, resolution=(512, 768), num_train_images=40, num_reg_images=0, num_epochs=10, epoch=2,
        steps=500, learning_rate=1e-4, unet_lr=1e-4, text_encoder_lr=5e-5, optimizer="torch.optim.AdamW",
        lr_scheduler="cosine", lr_warmup_steps=0, clip_skip=2, max_token_length=None, mixed_precision="bf16",
        noise_offset=None, min_snr_gamma=5.0, seed=1234,
        tag_frequency={"10_cat": {"cat": 10, "sitting": 3}}, dataset_dirs={"10_cat": {"n_repeats": 10, "img_count": 4}},
        training_started_at=1700000000.5, training_finished_at=1700003600.25, comment="hello",
        description="A cat LoRA",
    )
    kw.update(over)
    return kw


def tiny_tensors(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, n, generator=g),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(n, 4, generator=g),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }


def read_raw(path):
    """Split a safetensors file by hand: 8-byte little-endian header length, JSON header, data."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return raw, header, raw[8 + n:]


def files_in(folder):
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------- metadata

def test_lora_metadata_exact_keys_all_str_and_sd_scripts_values():
    meta = lora_metadata(**lora_kwargs())
    assert set(meta) == (SS_KEYS | MODELSPEC_KEYS) - {"ss_vae_name", "ss_max_token_length", "ss_noise_offset"}
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_v2"] == "False"
    # unknown values (no separate VAE, default token length) leave their keys out: no "None" placeholders
    assert "ss_vae_name" not in meta and "ss_max_token_length" not in meta and "ss_noise_offset" not in meta
    assert meta["ss_resolution"] == "(512, 768)" and meta["modelspec.resolution"] == "512x768"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": 4, "algo": "locon"}
    assert json.loads(meta["ss_tag_frequency"]) == {"10_cat": {"cat": 10, "sitting": 3}}
    assert json.loads(meta["ss_dataset_dirs"])["10_cat"]["img_count"] == 4
    assert float(meta["ss_training_started_at"]) == 1700000000.5
    assert meta["ss_training_comment"] == "hello"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"  # sd-scripts' choice for SD1/SD2 LoRA
    assert meta["modelspec.title"] == "my_lora"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.encoder_layer"] == "2"
    assert meta["modelspec.description"] == "A cat LoRA"
    date = datetime.datetime.fromisoformat(meta["modelspec.date"])
    assert date.timestamp() == 1700003600  # save time, whole seconds


def test_lora_metadata_optional_modelspec_keys_left_out_and_variants():
    meta = lora_metadata(**lora_kwargs(clip_skip=None, description=None, training_finished_at=None))
    assert set(meta) == (SS_KEYS | MODELSPEC_KEYS) - {"modelspec.encoder_layer", "modelspec.description",
                                                      "ss_clip_skip", "ss_training_finished_at", "ss_vae_name",
                                                      "ss_max_token_length", "ss_noise_offset"}

    v2 = lora_metadata(**lora_kwargs(base_model_version="sd_v2_v", v2=True, v_prediction=True))
    assert v2["ss_v2"] == "True"  # the WebUI compares this string to "True"
    assert v2["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert v2["modelspec.prediction_type"] == "v"

    xl = lora_metadata(**lora_kwargs(base_model_version="sdxl_base_v1-0", resolution=(1024, 1024)))
    assert xl["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert xl["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"


@pytest.mark.parametrize(
    "over, field",
    [
        (dict(base_model_version="sd_v2", v2=False), "v2"),
        (dict(base_model_version="sd_v1", v_prediction=True), "v_prediction"),
        (dict(base_model_version="sd_v3"), "base_model_version"),
        (dict(prediction_type="v"), "prediction_type"),
        (dict(resolution=(512,)), "resolution"),
        (dict(extra={"modelspec.x": 1}), "extra"),
    ],
)
def test_lora_metadata_rejects_inconsistent_input(over, field):
    with pytest.raises(ValueError, match=field):
        lora_metadata(**lora_kwargs(**over))


def test_lora_metadata_extra_keys_are_str():
    meta = lora_metadata(**lora_kwargs(extra={"ss_network_dropout": None, "ss_cache_latents": True}))
    assert "ss_network_dropout" not in meta and meta["ss_cache_latents"] == "True"


def test_metadata_never_writes_a_placeholder_for_an_unknown_value():
    """sd-scripts writes str(None); a reader (Civitai, the WebUI's metadata view) then shows "None" as if
    it were the model's hash. Unknown values and empty strings leave their key out."""
    unknown = dict(sd_model_name=None, sd_model_hash=None, sd_new_model_hash=None, vae_name=None, seed=None,
                   clip_skip=None, max_token_length=None, noise_offset=None, min_snr_gamma=None,
                   learning_rate=None, unet_lr=None, text_encoder_lr=None, training_finished_at=None,
                   comment="", extra={"ss_network_dropout": None, "ss_note": ""})
    meta = lora_metadata(**lora_kwargs(**unknown))
    assert not [k for k, v in meta.items() if v.strip() in ("", "None")], meta
    for key in ("ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_vae_name", "ss_seed",
                "ss_unet_lr", "ss_training_finished_at", "ss_training_comment", "ss_network_dropout", "ss_note"):
        assert key not in meta, key
    assert meta["ss_output_name"] == "my_lora" and meta["ss_num_epochs"] == "10"
    emb = embedding_metadata(name="e", step=1, sd_checkpoint=None, sd_checkpoint_name=None, num_vectors_per_token=1,
                             init_text="*", architecture="stable-diffusion-v1", resolution=(64, 64), saved_at=0.0)
    assert "sd_checkpoint" not in emb and "sd_checkpoint_name" not in emb


def test_embedding_metadata_keys_all_str():
    meta = embedding_metadata(
        name="my_emb", step=300, sd_checkpoint="6ce0161689", sd_checkpoint_name="v1-5-pruned",
        num_vectors_per_token=4, init_text="cat", architecture="stable-diffusion-v1", resolution=(512, 512),
        saved_at=1700000000.0, clip_skip=1,
    )
    assert set(meta) == {"name", "step", "sd_checkpoint", "sd_checkpoint_name", "num_vectors_per_token", "init_text",
                         *(MODELSPEC_KEYS - {"modelspec.description"})}
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["step"] == "300" and meta["num_vectors_per_token"] == "4"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.title"] == "my_emb"


def test_metadata_round_trips_through_safetensors(tmp_path):
    tensors = tiny_tensors()
    meta = with_hashes(tensors, lora_metadata(**lora_kwargs()))
    path = save_safetensors(tensors, tmp_path / "my_lora.safetensors", meta, overwrite=False)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == meta
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(loaded[k], tensors[k])


# ---------------------------------------------------------------- hashes

def test_model_hash_is_sha256_of_data_section_and_ignores_metadata(tmp_path):
    tensors = tiny_tensors()
    meta = with_hashes(tensors, lora_metadata(**lora_kwargs()))
    path = save_safetensors(tensors, tmp_path / "a.safetensors", meta, overwrite=False)
    raw, header, data = read_raw(path)
    assert header["__metadata__"]["sshs_model_hash"] == hashlib.sha256(data).hexdigest()
    assert meta["sshs_model_hash"] == model_hash_sha256(tensors, meta) == safetensors_data_sha256(path)

    # metadata changes (different lengths, different keys) leave the data section and the hash alone
    other = with_hashes(tensors, lora_metadata(**lora_kwargs(output_name="x" * 90, comment="a much longer comment")))
    assert other["sshs_model_hash"] == meta["sshs_model_hash"]
    path2 = save_safetensors(tensors, tmp_path / "b.safetensors", {"only": "this"}, overwrite=False)
    assert hashlib.sha256(read_raw(path2)[2]).hexdigest() == meta["sshs_model_hash"]
    # ... while different weights change it
    assert model_hash_sha256(tiny_tensors(seed=1)) != meta["sshs_model_hash"]


def test_legacy_hash_matches_additional_networks_definition(tmp_path):
    # > 1 MiB of tensor data so the 64 KiB window at offset 1 MiB is real data
    tensors = {"big.lora_down.weight": torch.arange(400_000, dtype=torch.float32), **tiny_tensors()}
    meta = with_hashes(tensors, {**lora_metadata(**lora_kwargs()), "user_note": "not hashed"})
    path = save_safetensors(tensors, tmp_path / "big.safetensors", meta, overwrite=False)

    # independent recomputation: reload, keep ss_* metadata only, re-serialize, hash [1 MiB, 1 MiB + 64 KiB)
    with safe_open(path, framework="pt") as f:
        file_meta = f.metadata()
    reserialized = safetensors.torch.save(load_file(path), {k: v for k, v in file_meta.items() if k.startswith("ss_")})
    expected = hashlib.sha256(reserialized[0x100000:0x110000]).hexdigest()[:8]
    assert file_meta["sshs_legacy_hash"] == expected == legacy_hash(tensors, meta)
    assert expected != hashlib.sha256(b"").hexdigest()[:8]

    # non-ss_ keys do not enter it; a different-length ss_ value shifts the window and does
    assert legacy_hash(tensors, {**meta, "modelspec.title": "t" * 500}) == expected
    assert legacy_hash(tensors, {**meta, "ss_output_name": "longer_name_here"}) != expected


def test_legacy_hash_of_small_file_is_hash_of_nothing():
    # sd-scripts reads past the end of a < 1 MiB file and hashes b""
    assert legacy_hash(tiny_tensors(), {}) == hashlib.sha256(b"").hexdigest()[:8] == "e3b0c442"


def test_file_sha256_and_autov2(tmp_path):
    p = tmp_path / "blob.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # spans several read chunks
    p.write_bytes(payload)
    assert file_sha256(p) == hashlib.sha256(payload).hexdigest()
    assert autov2_hash(p) == hashlib.sha256(payload).hexdigest()[:10]


def test_with_hashes_rejects_non_str_metadata():
    with pytest.raises(TypeError, match="ss_network_dim"):
        with_hashes(tiny_tensors(), {"ss_network_dim": 8})


# ---------------------------------------------------------------- atomic writes

def test_failed_write_leaves_earlier_file_identical_and_no_temp_files(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"earlier content")
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail, overwrite=True)
    assert target.read_bytes() == b"earlier content"
    assert files_in(tmp_path) == ["model.safetensors"]
    # the temporary file was hidden, in the same folder, with an extension the WebUI does not list
    tmp_name = os.path.basename(seen[0])
    assert os.path.dirname(seen[0]) == str(tmp_path)
    assert tmp_name.startswith(".model.safetensors.tmp-")


def test_interrupt_during_write_cleans_up(tmp_path):
    def interrupted(tmp):
        open(tmp, "wb").write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "m.pt", interrupted, overwrite=False)
    assert files_in(tmp_path) == []


def test_no_overwrite_without_flag(tmp_path):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"user's file")
    calls = []
    with pytest.raises(OutputExistsError) as err:
        atomic_write(target, calls.append, overwrite=False)
    assert calls == []  # refused before doing any work
    assert str(target) in str(err.value) and "overwrite" in str(err.value)
    assert isinstance(err.value, FileExistsError)
    assert target.read_bytes() == b"user's file"

    with pytest.raises(OutputExistsError):
        save_safetensors(tiny_tensors(), target, {}, overwrite=False)
    assert target.read_bytes() == b"user's file"
    assert files_in(tmp_path) == ["mine.safetensors"]


def test_overwrite_replaces_and_creates_folders(tmp_path):
    target = tmp_path / "sub" / "dir" / "m.safetensors"
    save_safetensors(tiny_tensors(seed=0), target, {"v": "1"}, overwrite=False)
    save_safetensors(tiny_tensors(seed=1), target, {"v": "2"}, overwrite=True)
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata() == {"v": "2"}
    assert torch.equal(load_file(str(target))["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"],
                       tiny_tensors(seed=1)["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"])
    assert files_in(target.parent) == ["m.safetensors"]


def test_save_safetensors_rejects_non_str_metadata_naming_key(tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(TypeError, match="ss_epoch"):
        save_safetensors(tiny_tensors(), target, {"ss_output_name": "a", "ss_epoch": 3}, overwrite=False)
    with pytest.raises(TypeError, match="'w'"):
        save_safetensors({"w": [1, 2]}, target, {}, overwrite=False)
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------- legacy .pt

def pickle_globals(path) -> set[tuple[str, str]]:
    """Globals referenced by the 5 pickles at the start of a legacy torch file (read with pickletools)."""
    found = set()
    with open(path, "rb") as f:
        for _ in range(5):
            for op, arg, _pos in pickletools.genops(f):
                if op.name == "GLOBAL":
                    module, name = arg.split(" ", 1)
                    found.add((module, name))
                assert op.name not in ("STACK_GLOBAL", "INST", "OBJ"), op.name
    return found


def test_legacy_pt_is_not_zip_loads_weights_only_and_passes_webui_allow_list(tmp_path):
    vec = torch.randn(2, 768)
    base = torch.zeros(100_000)
    obj = {
        "string_to_param": {"*": torch.nn.Parameter(vec.clone())},
        "string_to_token": {"*": 265},
        "name": "my_emb",
        "step": 300,
        "sd_checkpoint": "6ce0161689",
        "sd_checkpoint_name": None,
        768: ({"linear.0.weight": torch.ones(2, 2, dtype=torch.float16)}, {"b": torch.ones(1, dtype=torch.bfloat16)}),
        "layer_structure": [1, 2, 1],
        "small_view": base[:4],
    }
    path = save_torch_legacy(obj, tmp_path / "my_emb.pt", overwrite=False)
    assert not zipfile.is_zipfile(path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["string_to_param"]["*"], vec)
    assert type(loaded["string_to_param"]["*"]) is torch.Tensor and not loaded["string_to_param"]["*"].requires_grad
    assert loaded["string_to_token"] == {"*": 265} and loaded["step"] == 300 and loaded["sd_checkpoint_name"] is None
    assert loaded[768][0]["linear.0.weight"].dtype == torch.float16
    assert loaded["layer_structure"] == [1, 2, 1]
    assert os.path.getsize(path) < 50_000  # the 4-element view did not drag its 400 KB base along
    assert pickle_globals(path) <= WEBUI_ALLOWED_GLOBALS
    assert files_in(tmp_path) == ["my_emb.pt"]


@pytest.mark.parametrize(
    "obj, where",
    [
        ({"string_to_param": {"*": torch.zeros(2, dtype=torch.bool)}}, r"obj\['string_to_param'\]\['\*'\]"),
        ({"a": [1, {"b": np.float32(1.0)}]}, r"obj\['a'\]\[1\]\['b'\].*numpy"),
        ({"f": lambda: 0}, r"obj\['f'\]"),
        ({("t",): 1}, r"key \('t',\)"),
        ({"s": {1, 2}}, r"obj\['s'\]"),
    ],
)
def test_legacy_pt_rejects_non_plain_values_naming_path(tmp_path, obj, where):
    with pytest.raises(TypeError, match=where):
        save_torch_legacy(obj, tmp_path / "x.pt", overwrite=False)
    assert files_in(tmp_path) == []


# ---------------------------------------------------------------- naming

@pytest.mark.parametrize("name", ["my_lora", "Cat v1.5 (style)", "ünïcödé-名前", "a" * 100, "con_artist", "v1.0"])
def test_valid_names(name):
    assert validate_output_name(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "a/b", "a\\b", "..", ".", ".hidden", "../x", "a:b", "a<b", 'a"b', "a|b", "a?b", "a*b", "a\x00b", "tab\tname",
     "CON", "nul", "com1", "LPT9", "con.backup", "name.", "name ", " name", "a" * 101, "lora.safetensors", "emb.pt"],
)
def test_invalid_names_are_refused_with_field_value_and_rule(name):
    msg = validate_output_name(name)
    assert msg is not None
    assert "output.name" in msg and repr(name) in msg and "no path separators" in msg


def test_non_str_name():
    assert "output.name" in validate_output_name(None)


def test_output_path(tmp_path):
    d = str(tmp_path)
    assert output_path(d, "cat") == os.path.join(d, "cat.safetensors")
    assert output_path(d, "cat", epoch=2) == os.path.join(d, "cat-000002.safetensors")
    assert output_path(d, "cat", step=500) == os.path.join(d, "cat-step00000500.safetensors")
    assert output_path(d, "cat", epoch=2, ext=".pt") == os.path.join(d, "cat-000002.pt")
    with pytest.raises(ValueError, match="output.name"):
        output_path(d, "../cat")
    assert output_path(d, "cat", best=True) == os.path.join(d, "cat-best.safetensors")
    for both in (dict(epoch=1, step=1), dict(epoch=1, best=True), dict(step=1, best=True)):
        with pytest.raises(ValueError, match="give one of epoch, step or best"):
            output_path(d, "cat", **both)
    with pytest.raises(ValueError, match="ext"):
        output_path(d, "cat", ext="pt")


# ---------------------------------------------------------------- sidecar and preview

def test_lora_sidecar_keys_and_encoding(tmp_path):
    lora = tmp_path / "cat.safetensors"
    path = write_lora_sidecar(lora, activation_text="catto, sitting", preferred_weight=0.8, sd_version="SD1",
                              notes="trained on 4 images", description="Chat été", overwrite=False)
    assert path == str(tmp_path / "cat.json")
    raw = open(path, "rb").read()
    assert "été".encode("utf-8") in raw  # written like the WebUI: UTF-8, not \u escapes
    data = json.loads(raw.decode("utf-8"))
    assert data == {
        "description": "Chat été", "sd version": "SD1", "activation text": "catto, sitting",
        "preferred weight": 0.8, "negative text": "", "notes": "trained on 4 images",
    }
    with pytest.raises(OutputExistsError):
        write_lora_sidecar(lora, notes="again", overwrite=False)
    assert json.loads(open(path, encoding="utf-8").read())["notes"] == "trained on 4 images"
    write_lora_sidecar(lora, notes="again", overwrite=True)
    assert json.loads(open(path, encoding="utf-8").read())["notes"] == "again"


@pytest.mark.parametrize("kw, field", [(dict(sd_version="SD1.5"), "sd_version"),
                                       (dict(preferred_weight=3.0), "preferred_weight"),
                                       (dict(preferred_weight=float("nan")), "preferred_weight")])
def test_lora_sidecar_rejects_values_the_webui_cannot_use(tmp_path, kw, field):
    with pytest.raises(ValueError, match=field):
        write_lora_sidecar(tmp_path / "cat.safetensors", overwrite=False, **kw)
    assert files_in(tmp_path) == []


def test_preview_png(tmp_path):
    lora = tmp_path / "cat.safetensors"
    img = Image.new("RGB", (32, 24), (200, 10, 30))
    path = write_preview_png(lora, img, overwrite=False, infotext="a cat, Steps: 20")
    assert path == str(tmp_path / "cat.png")  # the first name the WebUI's card looks up
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as back:
        assert back.size == (32, 24) and back.getpixel((0, 0)) == (200, 10, 30)
        assert back.info["parameters"] == "a cat, Steps: 20"
    with pytest.raises(OutputExistsError):
        write_preview_png(lora, img, overwrite=False)
    # CMYK has no PNG form: converted rather than failing
    write_preview_png(lora, Image.new("CMYK", (4, 4)), overwrite=True)
    assert existing_previews(lora) == [path]
    (tmp_path / "cat.preview.jpg").write_bytes(b"x")
    assert existing_previews(lora) == [path, str(tmp_path / "cat.preview.jpg")]
    assert files_in(tmp_path) == ["cat.png", "cat.preview.jpg"]


def test_legacy_file_hash_reads_the_same_window(tmp_path):
    from extensions_lib.export.hashes import legacy_file_hash

    data = bytes(range(256)) * (0x120000 // 256)
    path = tmp_path / "model.ckpt"
    path.write_bytes(data)
    assert legacy_file_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


# ---------------------------------------------------------------- diffusers reads a trained LoRA file

def _lora_outputs(bundle):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = bundle.tokenizer(["a photo of sks", "another picture"], padding="max_length", max_length=77,
                           truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx = bundle.text_encoder(ids).last_hidden_state
        return bundle.unet(latents, torch.tensor([100, 700]), ctx).sample, ctx


def _merge_peft_lora(root, peft_sd: dict, alphas: dict, is_unet: bool) -> int:
    """What a PEFT LoRA layer adds, merged: W += B @ A * lora_alpha / r, with r and lora_alpha taken from
    the LoraConfig arguments diffusers builds (get_peft_kwargs). Our files have one rank and one alpha,
    so no per-module pattern applies."""
    from diffusers.utils.peft_utils import get_peft_kwargs

    rank = {k: v.shape[1] for k, v in peft_sd.items() if "lora_B" in k}
    kw = get_peft_kwargs(rank, alphas, peft_sd, is_unet=is_unet)
    assert kw["rank_pattern"] == {} and kw["alpha_pattern"] == {}, kw
    modules = dict(root.named_modules())
    targets = sorted({k.split(".lora_")[0] for k in peft_sd})
    assert sorted(kw["target_modules"]) == targets
    with torch.no_grad():
        for name in targets:
            w = modules[name].weight
            a, b = peft_sd[f"{name}.lora_A.weight"], peft_sd[f"{name}.lora_B.weight"]
            w += (b.flatten(1) @ a.flatten(1)).reshape(w.shape) * kw["lora_alpha"] / kw["r"]
    return len(targets)


@pytest.mark.parametrize("method", ["lora", "locon"])
def test_diffusers_reads_a_trained_lora_onto_the_layers_we_trained(tmp_path, method):
    """diffusers' reading of our kohya-named file must change the UNet and text encoder outputs exactly
    as our own forward with that file does. Where diffusers has its PEFT backend (transformers >= 4.34
    and peft: the forge stack) StableDiffusionPipeline.load_lora_weights runs whole. Under the WebUI 1.10
    pins (transformers 4.30.2) load_lora_weights refuses to run at all, whatever peft is installed, so
    there the part of it that understands the file runs: lora_state_dict (kohya -> diffusers names and
    alphas) and the conversion to PEFT names that load_lora_into_unet / _text_encoder apply, and each
    converted module's update is merged as a PEFT LoRA layer computes it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import (USE_PEFT_BACKEND, convert_state_dict_to_diffusers, convert_state_dict_to_peft,
                                 convert_unet_state_dict_to_peft)

    from extensions_lib.hosts.standalone import StandaloneHost
    from extensions_lib.methods.base import make_method
    from extensions_lib.train.session import run_training
    from helpers import make_images, quick_config, tiny_bundle

    make_images(tmp_path / "data" / "5_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", method, training__max_train_steps=3,
                       training__learning_rate=2e-2, output__save_precision="fp32")
    cfg.network.alpha = cfg.network.conv_alpha = 2          # scale alpha/rank = 0.5: a wrong scale shows
    path = run_training(cfg, StandaloneHost(tiny_bundle())).output_path
    file = load_file(path)

    ours = tiny_bundle()
    base_unet, base_ctx = _lora_outputs(ours)
    m = make_method(cfg)
    m.attach(ours)
    m.network.load_state_dict(file, strict=True)
    our_unet, our_ctx = _lora_outputs(ours)
    m.detach()
    assert not torch.allclose(our_unet, base_unet, atol=1e-4) and not torch.allclose(our_ctx, base_ctx, atol=1e-4)
    n_modules = len({k.split(".")[0] for k in file})

    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path.parent), weight_name=path.name)
    part = lambda d, p: {k[len(p) + 1:]: v for k, v in d.items() if k.startswith(p + ".")}  # noqa: E731
    merged = tiny_bundle()
    n = _merge_peft_lora(merged.unet, convert_unet_state_dict_to_peft(part(state, "unet")),
                         convert_unet_state_dict_to_peft(part(alphas, "unet")), is_unet=True)
    n += _merge_peft_lora(merged.text_encoder,
                          convert_state_dict_to_peft(convert_state_dict_to_diffusers(part(state, "text_encoder"))),
                          part(alphas, "text_encoder"), is_unet=False)
    assert n == n_modules, "diffusers read every module of the file"
    for got, want in zip(_lora_outputs(merged), (our_unet, our_ctx)):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)

    if not USE_PEFT_BACKEND:
        return
    fresh = tiny_bundle()
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer,
                                   unet=fresh.unet, scheduler=fresh.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    for got, want in zip(_lora_outputs(fresh), (our_unet, our_ctx)):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)
