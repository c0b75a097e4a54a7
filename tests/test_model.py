"""Tests of extensions_lib.model: LDM state dict -> diffusers modules without copying.

Exactness is checked against the original diffusers modules, and the key mapping against
diffusers' own single-file converters (an independent implementation)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from extensions_lib.model import tiny
from extensions_lib.model.bundle import SD1, SD2
from extensions_lib.model.checkpoint import load_bundle, load_checkpoint
from extensions_lib.model.errors import CheckpointError, TokenizerError, UnsupportedModelError
from extensions_lib.model.ldm import bundle_from_ldm, detect_version, ldm_from_diffusers, split_ldm
from extensions_lib.model.tiny import tiny_ldm_state_dict
from extensions_lib.model import ldm_configs, ldm_keys


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return tiny.write_char_tokenizer(tmp_path_factory.mktemp("tok"))


_CACHE: dict = {}


def original(tok_dir, version, seed=0, fresh=False):
    """The tiny diffusers modules (the reference) and their LDM state dict, which shares their
    storage. Cached per module; pass fresh=True to a test that writes to the tensors."""
    key = (str(tok_dir), version, seed)
    if fresh or key not in _CACHE:
        b0 = tiny.build_tiny_bundle(tok_dir, version=version, seed=seed)
        value = b0, ldm_from_diffusers(b0.unet, b0.text_encoder, b0.vae, version)
        if fresh:
            return value
        _CACHE[key] = value
    b0, sd = _CACHE[key]
    return b0, dict(sd)


def storage_ptrs(sd) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in sd.values()}


def inputs(tokenizer, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = tokenizer(["a photo of sks", "dog"], padding="max_length", max_length=77,
                    truncation=True, return_tensors="pt").input_ids
    return dict(
        ids=ids,
        latents=torch.randn(2, 4, 8, 8, generator=g),
        t=torch.tensor([10, 700]),
        image=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
    )


@torch.no_grad()
def outputs(bundle, x) -> dict[str, torch.Tensor]:
    te = bundle.text_encoder(x["ids"], output_hidden_states=True)
    out = {f"te_hidden_{i}": h for i, h in enumerate(te.hidden_states)}
    out["te_last"] = te.last_hidden_state
    out["te_penultimate_normed"] = bundle.text_encoder.text_model.final_layer_norm(te.hidden_states[-2])
    out["unet"] = bundle.unet(x["latents"], x["t"], te.last_hidden_state).sample
    out["vae_mean"] = bundle.vae.encode(x["image"]).latent_dist.mean
    out["vae_decode"] = bundle.vae.decode(out["vae_mean"]).sample
    return out


def assert_same_outputs(a, b, x):
    oa, ob = outputs(a, x), outputs(b, x)
    assert oa.keys() == ob.keys()
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k


# ------------------------------------------------------------------------------ (a) zero copy

@pytest.mark.parametrize("version", [SD1, SD2])
def test_every_parameter_is_a_source_tensor(tok_dir, version):
    b0, sd = original(tok_dir, version, fresh=True)
    ptrs = storage_ptrs(sd)
    bundle = bundle_from_ldm(sd, b0.tokenizer)
    extra_bytes = 0
    for name, module in bundle.modules().items():
        for pname, p in module.named_parameters():
            assert not p.is_meta, f"{name}.{pname}"
            assert not p.requires_grad and not module.training
            if p.untyped_storage().data_ptr() not in ptrs:
                extra_bytes += p.untyped_storage().nbytes()
    assert extra_bytes == 0, "parameters allocated outside the source state dict"
    # aliasing, shown directly: writing the source changes the module
    src = sd["model.diffusion_model.out.2.bias"]
    before = bundle.unet.conv_out.bias.clone()
    src.add_(1.0)
    assert torch.equal(bundle.unet.conv_out.bias, before + 1.0)
    vae_q = sd["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert bundle.vae.encoder.mid_block.attentions[0].to_q.weight.data_ptr() == vae_q.data_ptr()


def test_sd2_qkv_are_views_of_in_proj(tok_dir):
    b0, sd = original(tok_dir, SD2)
    bundle = bundle_from_ldm(sd, b0.tokenizer)
    in_proj = sd["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    attn = bundle.text_encoder.text_model.encoder.layers[0].self_attn
    width = in_proj.shape[1]
    for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
        assert proj.weight.untyped_storage().data_ptr() == in_proj.untyped_storage().data_ptr()
        assert proj.weight.data_ptr() == in_proj.data_ptr() + i * width * width * in_proj.element_size()


def test_half_precision_source_stays_half_and_shared(tok_dir):
    b0, sd = original(tok_dir, SD1)
    sd16 = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    bundle = bundle_from_ldm(sd16, b0.tokenizer)
    ptrs = storage_ptrs(sd16)
    for module in bundle.modules().values():
        for p in module.parameters():
            assert p.dtype == torch.float16 and p.untyped_storage().data_ptr() in ptrs


def test_callers_parameters_are_not_touched(tok_dir):
    """The WebUI hands over its own nn.Parameters: their flags must stay as they were."""
    b0, sd = original(tok_dir, SD1)
    params = {k: torch.nn.Parameter(v.clone(), requires_grad=v.is_floating_point())
              for k, v in sd.items()}
    bundle = bundle_from_ldm(params, b0.tokenizer)
    assert all(p.requires_grad for p in params.values() if p.is_floating_point())
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    assert bundle.unet.conv_in.weight is not params["model.diffusion_model.input_blocks.0.0.weight"]


# ------------------------------------------------------------------------------ (b) exactness

@pytest.mark.parametrize("version", [SD1, SD2])
def test_round_trip_gives_identical_outputs(tok_dir, version):
    b0, sd = original(tok_dir, version)
    bundle = bundle_from_ldm(sd, b0.tokenizer)
    x = inputs(b0.tokenizer)
    assert_same_outputs(b0, bundle, x)
    # and the outputs are not trivially equal: another seed differs
    other = tiny.build_tiny_bundle(tok_dir, version=version, seed=1)
    assert not torch.equal(outputs(other, x)["unet"], outputs(bundle, x)["unet"])


@pytest.mark.parametrize("version", [SD1, SD2])
def test_ldm_from_diffusers_inverts_bundle_from_ldm(tok_dir, version):
    b0, sd = original(tok_dir, version)
    bundle = bundle_from_ldm(sd, b0.tokenizer)
    again = ldm_from_diffusers(bundle.unet, bundle.text_encoder, bundle.vae, version)
    assert again.keys() == sd.keys()
    for k in sd:
        assert torch.equal(again[k], sd[k]), k


def test_tiny_ldm_state_dict(tok_dir):
    sd, tok = tiny_ldm_state_dict(tok_dir, version=SD2, seed=3)
    assert detect_version(sd) == SD2
    bundle = bundle_from_ldm(sd, tok)
    b0 = tiny.build_tiny_bundle(tok_dir, version=SD2, seed=3)
    assert_same_outputs(b0, bundle, inputs(tok))


# ------------------------------------------------------------ (c) against diffusers' converter

def ldm_yaml(size: tiny.ModelSize, version: str, vae_layers: int) -> dict:
    """The original LDM config (as in v1-inference.yaml / v2-inference.yaml) of a model size."""
    ch = size.unet_channels[0]
    unet = dict(
        in_channels=4, out_channels=4, model_channels=ch, num_res_blocks=size.layers_per_block,
        channel_mult=[c // ch for c in size.unet_channels],
        attention_resolutions=[2 ** i for i, a in enumerate(size.attention_levels) if a],
        transformer_depth=1, context_dim=size.context_dim, use_spatial_transformer=True,
    )
    if version == SD2:
        unet.update(num_head_channels=size.head_dim, use_linear_in_transformer=True)
    else:
        unet.update(num_heads=size.heads)
    vch = size.vae_channels[0]
    dd = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=vch,
              ch_mult=[c // vch for c in size.vae_channels], num_res_blocks=vae_layers, attn_resolutions=[])
    return {"model": {"params": {"scale_factor": 0.18215, "unet_config": {"params": unet},
                                 "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": dd}}}}}


def diffusers_reference(sd, size, version, vae_layers, text_encoder):
    from diffusers.loaders import single_file_utils as sfu

    yaml = ldm_yaml(size, version, vae_layers)
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(yaml, sd)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(yaml, sd)
    unet = sfu.convert_ldm_unet_checkpoint(sd, unet_cfg)
    vae = sfu.convert_ldm_vae_checkpoint(sd, vae_cfg)
    if version == SD2:
        te = sfu.convert_open_clip_checkpoint(text_encoder, sd)
    else:
        te = sfu.convert_ldm_clip_checkpoint(sd)
    return unet_cfg, vae_cfg, unet, vae, te


@pytest.mark.parametrize("version", [SD1, SD2])
def test_mapping_matches_diffusers_single_file_converter(tok_dir, version):
    b0, sd = original(tok_dir, version)
    bundle = bundle_from_ldm(sd, b0.tokenizer)
    unet_cfg, vae_cfg, unet, vae, te = diffusers_reference(sd, tiny.TINY, version, 1, bundle.text_encoder)

    for field in ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                  "cross_attention_dim", "use_linear_projection", "down_block_types", "up_block_types"):
        assert list(_as_list(unet_cfg[field])) == list(_as_list(bundle.unet.config[field])), field
    levels = len(bundle.unet.config.block_out_channels)
    assert heads(unet_cfg["attention_head_dim"], levels) == heads(bundle.unet.config.attention_head_dim, levels)
    for field in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels"):
        assert list(_as_list(vae_cfg[field])) == list(_as_list(bundle.vae.config[field])), field

    assert_same_tensors(bundle.unet.state_dict(), unet)
    assert_same_tensors(bundle.vae.state_dict(), vae)
    ours = {k: v for k, v in bundle.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    theirs = {k: v for k, v in te.items() if not k.endswith("position_ids")}
    if version == SD2:
        # diffusers drops the unused last OpenCLIP block by hard-coded name (resblocks.23 of the
        # real model); for the tiny model that block is still in its output, and so is the
        # contrastive head, which a CLIPTextModel ignores.
        last = bundle.text_encoder.config.num_hidden_layers
        theirs = {k: v for k, v in theirs.items()
                  if not k.startswith(f"text_model.encoder.layers.{last}.") and k != "text_projection.weight"}
    assert_same_tensors(ours, theirs)


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def heads(v, levels: int) -> list:
    """diffusers' attention_head_dim (per-level heads) as one value per level."""
    return list(v) if isinstance(v, (list, tuple)) else [v] * levels


def assert_same_tensors(ours: dict, theirs: dict):
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]), k


SD2_SIZE = tiny.ModelSize(
    unet_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_levels=(True, True, True, False),
    head_dim=64, context_dim=1024, te_layers=23, te_heads=16, te_intermediate=4096,
    vae_channels=(128, 256, 512, 512), vae_groups=32,
)


def meta_ldm(size, version):
    """A full-size LDM state dict of meta tensors: real shapes, no memory, instant."""
    unet = tiny.build_unet(size, version, device="meta")
    te = tiny.build_text_encoder(size, version, vocab_size=49408, device="meta")
    vae = tiny.build_vae(size, device="meta")
    return ldm_from_diffusers(unet, te, vae, version), te


@pytest.mark.parametrize("version,size", [(SD1, tiny.SD15), (SD2, SD2_SIZE)])
def test_real_sized_shapes_give_the_standard_configs(version, size):
    """Full SD1.5 / SD2.x shapes (on the meta device): no hints needed, configs and key mapping
    equal diffusers' from the original yaml (8 heads / heads of 64, 32 groups, linear proj for SD2)."""
    sd, te = meta_ldm(size, version)
    assert not any(ldm_configs.HINT in k for k in sd)
    assert detect_version(sd) == version
    parts = split_ldm(sd)
    layout = ldm_keys.unet_layout_from_ldm(parts.unet)
    ours = ldm_configs.unet_config(parts.unet, layout, version, False)
    unet_cfg, vae_cfg, unet, vae, te_sd = diffusers_reference(sd, size, version, 2, te)
    expected_heads = [8] * 4 if version == SD1 else [5, 10, 20, 20]
    assert heads(ours["attention_head_dim"], 4) == expected_heads
    assert heads(unet_cfg["attention_head_dim"], 4) == expected_heads
    assert ours["use_linear_projection"] is (version == SD2) and ours["norm_num_groups"] == 32
    assert ours["cross_attention_dim"] == size.context_dim == unet_cfg["cross_attention_dim"]
    assert list(ours["block_out_channels"]) == list(unet_cfg["block_out_channels"])
    assert list(ours["down_block_types"]) == list(unet_cfg["down_block_types"])
    assert list(ours["up_block_types"]) == list(unet_cfg["up_block_types"])
    mapped = ldm_keys.unet_ldm_to_diffusers(parts.unet, layout)
    assert sorted(mapped) == sorted(unet)
    assert all(mapped[k].shape == unet[k].shape for k in mapped)
    vae_mapped = ldm_keys.vae_ldm_to_diffusers(parts.vae, ldm_keys.vae_layout_from_ldm(parts.vae))
    assert sorted(vae_mapped) == sorted(vae)
    te_cfg = ldm_configs.text_encoder_config(
        ldm_keys.openclip_ldm_to_diffusers(parts.text_encoder, 23) if version == SD2
        else ldm_keys.clip_ldm_to_diffusers(parts.text_encoder), version, None)
    assert te_cfg.num_attention_heads == (16 if version == SD2 else 12)
    assert te_cfg.num_hidden_layers == (23 if version == SD2 else 12)
    assert te_cfg.hidden_act == ("gelu" if version == SD2 else "quick_gelu")


# ------------------------------------------------------------------ (d) versions and variants

def test_detect_version_and_v_prediction(tok_dir):
    b1, sd1 = original(tok_dir, SD1)
    b2, sd2 = original(tok_dir, SD2)
    assert detect_version(sd1) == SD1 and detect_version(sd2) == SD2
    bundle = bundle_from_ldm(sd2, b2.tokenizer, v_prediction=True, model_name="m.safetensors", model_hash="abcd1234")
    assert bundle.version == SD2 and bundle.v_prediction
    assert bundle.noise_scheduler.config.prediction_type == "v_prediction"
    assert bundle.base_model_version == "sd_v2_v" and bundle.unet.config.upcast_attention
    assert (bundle.model_name, bundle.model_hash) == ("m.safetensors", "abcd1234")
    assert bundle.text_encoder.config.hidden_act == "gelu"
    # the real SD2 file has one OpenCLIP block more than the encoder that conditions the UNet
    n_blocks = len({k.split(".")[4] for k in sd2 if ".resblocks." in k})
    assert bundle.text_encoder.config.num_hidden_layers == n_blocks - 1
    eps = bundle_from_ldm(sd1, b1.tokenizer)
    assert eps.noise_scheduler.config.prediction_type == "epsilon" and eps.base_model_version == "sd_v1"


def test_older_and_webui_text_encoder_layouts(tok_dir):
    b0, sd = original(tok_dir, SD1)
    x = inputs(b0.tokenizer)
    pre = "cond_stage_model.transformer."
    old = {(pre + k[len(pre + "text_model."):] if k.startswith(pre + "text_model.") else k): v
           for k, v in sd.items()}
    assert f"{pre}embeddings.token_embedding.weight" in old
    assert_same_outputs(b0, bundle_from_ldm(old, b0.tokenizer), x)
    # the WebUI's live model: hijack wrapper, a wrapped token embedding, float position_ids
    live = {k.replace("cond_stage_model.", "cond_stage_model.wrapped.")
             .replace("token_embedding.weight", "token_embedding.wrapped.weight"): v for k, v in sd.items()}
    live["cond_stage_model.wrapped.transformer.text_model.embeddings.position_ids"] = torch.rand(1, 77)
    live["alphas_cumprod"] = torch.rand(1000)
    live["model_ema.decay"] = torch.tensor(0.9999)
    bundle = bundle_from_ldm(live, b0.tokenizer)
    assert torch.equal(bundle.text_encoder.text_model.embeddings.position_ids, torch.arange(77)[None])
    assert_same_outputs(b0, bundle, x)


def test_separate_vae_overrides_the_checkpoints(tok_dir):
    b0, sd = original(tok_dir, SD1)
    other, other_sd = original(tok_dir, SD1, seed=7)
    vae_file = {k[len("first_stage_model."):]: v for k, v in other_sd.items() if k.startswith("first_stage_model.")}
    vae_file["loss.logvar"] = torch.zeros(())            # training leftovers of real VAE files
    bundle = bundle_from_ldm(sd, b0.tokenizer, vae_state_dict=vae_file)
    assert bundle.vae.decoder.conv_out.weight.data_ptr() == vae_file["decoder.conv_out.weight"].data_ptr()
    img = inputs(b0.tokenizer)["image"]
    with torch.no_grad():
        assert torch.equal(bundle.vae.encode(img).latent_dist.mean, other.vae.encode(img).latent_dist.mean)
    # a diffusers-layout VAE file works too, and so does a VAE dict without the checkpoint's VAE
    diffusers_vae = dict(other.vae.state_dict())
    diffusers_vae["extensions_lib.norm_groups"] = torch.tensor([8])
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    bundle2 = bundle_from_ldm(no_vae, b0.tokenizer, vae_state_dict=diffusers_vae)
    with torch.no_grad():
        assert torch.equal(bundle2.vae.encode(img).latent_dist.mean, other.vae.encode(img).latent_dist.mean)


def test_without_hints_a_tiny_model_still_loads(tok_dir):
    """A dict that lost the hint keys (e.g. rebuilt from module names) loads with the standard
    rules; only the tiny model's head count / groups differ, so it computes differently."""
    b0, sd = original(tok_dir, SD1)
    bare = {k: v for k, v in sd.items() if ldm_configs.HINT not in k}
    assert len(bare) == len(sd) - 3
    bundle = bundle_from_ldm(bare, b0.tokenizer)
    assert bundle.unet.config.attention_head_dim == 8          # SD1's 8 heads
    assert bundle.text_encoder.config.num_attention_heads == 1  # width 32 < one 64-wide head
    assert bundle.vae.config.norm_num_groups == 16             # 32 groups do not divide 16 channels
    x = inputs(b0.tokenizer)
    assert not torch.equal(outputs(bundle, x)["unet"], outputs(b0, x)["unet"])


# ------------------------------------------------------------------------------ (e) refusals

def _with(sd, **changes):
    out = dict(sd)
    out.update(changes)
    return out


def test_refuses_sdxl_sd3_lora_and_diffusers_layout(tok_dir):
    _, sd = original(tok_dir, SD1)
    cases = [
        (_with(sd, **{"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4)}),
         "SDXL"),
        ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.ones(1)}, "SD3"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(1)}, "LoRA"),
        ({"down_blocks.0.resnets.0.conv1.weight": torch.ones(1)}, "diffusers folder"),
        ({}, "empty"),
    ]
    for bad, word in cases:
        with pytest.raises(UnsupportedModelError, match=word) as e:
            bundle_from_ldm(bad, None)
        assert "SD1" in str(e.value) or "Stable Diffusion 1.x" in str(e.value)


def test_refuses_inpainting_unet(tok_dir):
    b0, sd = original(tok_dir, SD1)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    w = sd[key]
    bad = _with(sd, **{key: torch.zeros(w.shape[0], 9, *w.shape[2:])})
    with pytest.raises(UnsupportedModelError, match=r"inpainting UNet with 9 input channels") as e:
        bundle_from_ldm(bad, b0.tokenizer)
    assert "Stable Diffusion 1.x and 2.x" in str(e.value)
    bad8 = _with(sd, **{key: torch.zeros(w.shape[0], 8, *w.shape[2:])})
    with pytest.raises(UnsupportedModelError, match="instruct-pix2pix"):
        detect_version(bad8)


def test_refuses_missing_parts(tok_dir):
    b0, sd = original(tok_dir, SD1)
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(UnsupportedModelError, match=r"No VAE.*first_stage_model"):
        bundle_from_ldm(no_vae, b0.tokenizer)
    partial = dict(sd)
    del partial["first_stage_model.decoder.conv_out.weight"]
    with pytest.raises(UnsupportedModelError, match=r"VAE.*first_stage_model.decoder.conv_out.weight is missing"):
        bundle_from_ldm(partial, b0.tokenizer)
    partial = dict(sd)
    del partial["first_stage_model.decoder.up.0.block.0.conv1.bias"]
    with pytest.raises(UnsupportedModelError, match=r"VAE.*1 weights missing.*decoder.up_blocks.1.resnets.0.conv1.bias"):
        bundle_from_ldm(partial, b0.tokenizer)
    no_te = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(UnsupportedModelError, match="No text encoder"):
        bundle_from_ldm(no_te, b0.tokenizer)
    unet_gap = dict(sd)
    del unet_gap["model.diffusion_model.middle_block.1.proj_out.weight"]
    with pytest.raises(UnsupportedModelError, match=r"UNet.*middle_block.1.proj_out|mid_block.attentions.0.proj_out"):
        bundle_from_ldm(unet_gap, b0.tokenizer)


def test_refuses_a_tokenizer_of_another_model(tok_dir):
    _, sd = original(tok_dir, SD1)
    big = tiny.load_tokenizer(tok_dir)
    big.add_tokens([f"<extra{i}>" for i in range(10)])
    with pytest.raises(TokenizerError, match="model.tokenizer"):
        bundle_from_ldm(sd, big)


# ------------------------------------------------------------------------------ (f) checkpoint.py

@pytest.fixture()
def sd1(tok_dir):
    return original(tok_dir, SD1)


def test_safetensors_round_trip(tmp_path, tok_dir, sd1):
    from safetensors.torch import save_file

    b0, sd = sd1
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_checkpoint(path)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    bundle = load_bundle(path, tokenizer_dir=tok_dir)
    assert bundle.model_name == "model.safetensors" and len(bundle.model_hash) == 8
    assert_same_outputs(b0, bundle, inputs(b0.tokenizer))


def test_ckpt_is_read_with_weights_only(tmp_path, tok_dir, sd1):
    b0, sd = sd1
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd, "global_step": 470000}, str(path))
    loaded = load_checkpoint(path)
    assert loaded.keys() == sd.keys()
    assert_same_outputs(b0, load_bundle(path, tokenizer_dir=tok_dir), inputs(b0.tokenizer))
    # old (non-zip) serialization cannot be memory-mapped: read normally
    legacy = tmp_path / "legacy.pt"
    torch.save(sd, str(legacy), _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(legacy)
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    # a pickle carrying an object is refused, with the way out
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "callback": Unpicklable()}, str(evil))
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*weights_only") as e:
        load_checkpoint(evil)
    assert ".safetensors" in str(e.value)


class Unpicklable:
    """An arbitrary class: weights_only=True must refuse to rebuild it."""


def test_diffusers_folder(tmp_path, tok_dir):
    b0 = tiny.build_tiny_bundle(tok_dir, version=SD2, seed=2)
    folder = tmp_path / "sd2-diffusers"
    b0.unet.save_pretrained(str(folder / "unet"))
    b0.text_encoder.save_pretrained(str(folder / "text_encoder"))
    b0.vae.save_pretrained(str(folder / "vae"))
    b0.tokenizer.save_pretrained(str(folder / "tokenizer"))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    bundle = load_bundle(folder)
    assert bundle.version == SD2 and bundle.v_prediction and bundle.model_name == "sd2-diffusers"
    assert not any(p.requires_grad for p in bundle.unet.parameters())
    x = inputs(b0.tokenizer)
    assert bundle.tokenizer("a photo of sks").input_ids == b0.tokenizer("a photo of sks").input_ids
    assert_same_outputs(b0, bundle, x)
    # without tokenizer/ the error names the config field
    import shutil
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(TokenizerError, match=r"model\.tokenizer"):
        load_bundle(folder)


def test_separate_vae_file(tmp_path, tok_dir, sd1):
    from safetensors.torch import save_file

    b0, sd = sd1
    other, other_sd = original(tok_dir, SD1, seed=5)
    model = tmp_path / "model.safetensors"
    vae = tmp_path / "other.vae.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(model))
    save_file({k[len("first_stage_model."):]: v.contiguous() for k, v in other_sd.items()
               if k.startswith("first_stage_model.")}, str(vae))
    bundle = load_bundle(model, tokenizer_dir=tok_dir, vae_path=vae)
    assert bundle.vae_name == "other.vae.safetensors"
    img = inputs(b0.tokenizer)["image"]
    with torch.no_grad():
        assert torch.equal(bundle.vae.encode(img).latent_dist.mean, other.vae.encode(img).latent_dist.mean)


def test_missing_inputs_name_the_path_or_field(tmp_path, tok_dir, sd1):
    from safetensors.torch import save_file

    _, sd = sd1
    model = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(model))
    with pytest.raises(TokenizerError, match=r"`model\.tokenizer`"):
        load_bundle(model)
    with pytest.raises(TokenizerError, match=r"nowhere-tok.*model\.tokenizer"):
        load_bundle(model, tokenizer_dir=tmp_path / "nowhere-tok")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_bundle(tmp_path / "missing.safetensors", tokenizer_dir=tok_dir)
    with pytest.raises(FileNotFoundError, match="novae.safetensors"):
        load_bundle(model, tokenizer_dir=tok_dir, vae_path=tmp_path / "novae.safetensors")
    odd = tmp_path / "model.gguf"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"model\.gguf.*\.safetensors"):
        load_checkpoint(odd)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        load_checkpoint(broken)


@pytest.mark.parametrize("version", [SD1, SD2])
def test_random_test_models_have_trained_looking_norms(tok_dir, version):
    """A random checkpoint with fresh norms (weight 1, bias 0) gives text conditioning of mean ~0;
    the WebUI's default "Original" emphasis divides by that mean and yields NaN. Ours look trained."""
    b = tiny.build_tiny_bundle(tok_dir, version=version, seed=0)
    norms = [m for part in (b.unet, b.text_encoder, b.vae) for m in part.modules()
             if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert norms
    for m in norms:
        assert not torch.all(m.weight == 1) and not torch.all(m.bias == 0)
        assert 0.5 < float(m.weight.mean()) < 1.5 and float(m.bias.abs().mean()) < 0.3
    again = tiny.build_tiny_bundle(tok_dir, version=version, seed=0)
    assert torch.equal(again.text_encoder.text_model.final_layer_norm.weight,
                       b.text_encoder.text_model.final_layer_norm.weight)           # seeded

    ids = b.tokenizer(["a photo of sks"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        z = b.text_encoder(ids).last_hidden_state.half()
    # "Original" emphasis: z * multipliers, then rescaled by original mean / new mean
    multipliers = torch.ones_like(z)
    multipliers[:, 3] = 1.1
    original_mean = z.float().mean()
    emphasized = z.float() * multipliers
    emphasized = emphasized * (original_mean / emphasized.mean())
    assert abs(float(original_mean)) > 1e-3
    assert torch.isfinite(emphasized).all()
