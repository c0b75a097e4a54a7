"""LoRA family: learning, independent loading of the files we write, no leaks between runs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.methods.base import make_method
from extensions_lib.model.bundle import snapshot
from extensions_lib.train.evaluate import evaluate_loss
from extensions_lib.train.loop import Trainer
from extensions_lib.train.session import build_dataset, cache_latents, run_training, scan
from extensions_lib.train.events import Callbacks

from helpers import make_images, quick_config, tiny_bundle


def _train_attached(cfg, bundle, tmp_path):
    """Run the real loop but keep the method attached, to compare against what was saved."""
    data_scan = scan(cfg)
    dataset = build_dataset(cfg, data_scan)
    method = make_method(cfg)
    method.attach(bundle)
    cache_latents(dataset, bundle, cfg, Callbacks())
    result = Trainer(cfg, bundle, method, dataset, output_dir=tmp_path / "out").run()
    return method, dataset, result


def _fixed_inputs(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    ids = bundle.tokenizer(["a photo of sks", "another picture"], padding="max_length", max_length=77,
                           truncation=True, return_tensors="pt").input_ids
    return latents, torch.tensor([100, 700]), ids


@torch.no_grad()
def _outputs(unet, text_encoder, inputs):
    latents, ts, ids = inputs
    ctx = text_encoder(ids).last_hidden_state
    return unet(latents, ts, ctx).sample, ctx


@pytest.mark.parametrize("method", ["lora", "locon"])
def test_training_lowers_fixed_loss(tmp_path, method):
    train = make_images(tmp_path / "data" / "10_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", method, training__max_train_epochs=3,
                       training__learning_rate=3e-3)
    bundle = tiny_bundle()
    trained, dataset, result = _train_attached(cfg, bundle, tmp_path)
    trained.set_enabled(False)
    base = evaluate_loss(bundle, dataset)
    trained.set_enabled(True)
    after = evaluate_loss(bundle, dataset)
    assert result.steps == 3 * 40
    assert after < 0.85 * base, (base, after)
    trained.detach()


def _delta(sd: dict, base: str, shape) -> torch.Tensor:
    """The weight change one module of a kohya/LyCORIS file encodes, by the documented formulas
    (the rules the WebUI's Lora support applies), in plain torch."""
    g = lambda k: sd[f"{base}.{k}"].float() if f"{base}.{k}" in sd else None  # noqa: E731
    alpha = g("alpha")
    if g("lora_down.weight") is not None:  # LoRA / LoCon: up @ down * alpha / rank
        down, up = g("lora_down.weight"), g("lora_up.weight")
        delta = up.flatten(1) @ down.flatten(1)
        scale = float(alpha) / down.shape[0]
    elif g("hada_w1_a") is not None:  # LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank
        delta = (g("hada_w1_a") @ g("hada_w1_b")) * (g("hada_w2_a") @ g("hada_w2_b"))
        scale = float(alpha) / g("hada_w1_b").shape[0]
    else:  # LoKr: kron(w1, w2), scaled by alpha / rank only when a factor is low-rank
        w1 = g("lokr_w1") if g("lokr_w1") is not None else g("lokr_w1_a") @ g("lokr_w1_b")
        w2 = g("lokr_w2") if g("lokr_w2") is not None else g("lokr_w2_a") @ g("lokr_w2_b")
        rank = g("lokr_w2_b").shape[0] if g("lokr_w2_b") is not None else (
            g("lokr_w1_b").shape[0] if g("lokr_w1_b") is not None else None)
        w2 = w2.reshape(w2.shape[0], -1) if w2.dim() > 2 else w2
        delta = torch.kron(w1, w2)
        scale = float(alpha) / rank if rank and alpha is not None else 1.0
    return delta.reshape(shape) * scale


def _kohya_merge(unet, text_encoder, sd: dict[str, torch.Tensor]) -> int:
    """Independent reader: module lora_<prefix>_<path with . -> _> gets W += delta."""
    names = {}
    for prefix, root in (("lora_unet", unet), ("lora_te", text_encoder)):
        for name, module in root.named_modules():
            names[f"{prefix}_{name}".replace(".", "_")] = module
    bases = sorted({k.split(".")[0] for k in sd})
    for base in bases:
        w = names[base].weight
        w.data += _delta(sd, base, w.shape)
    return len(bases)


@dataclass
class Trained:
    """Outputs of the base and the trained in-memory model on fixed inputs, and the saved file."""
    inputs: tuple
    base_unet: torch.Tensor
    base_ctx: torch.Tensor
    unet: torch.Tensor
    ctx: torch.Tensor
    path: Path

    def assert_reproduced_by(self, unet, text_encoder) -> None:
        ref_unet, ref_ctx = _outputs(unet, text_encoder, self.inputs)
        assert not torch.allclose(self.unet, self.base_unet, atol=1e-4)  # training changed something
        torch.testing.assert_close(ref_ctx, self.ctx, atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(ref_unet, self.unet, atol=2e-4, rtol=1e-3)


def _train_one_epoch(tmp_path, method) -> Trained:
    make_images(tmp_path / "data" / "5_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", method, training__max_train_epochs=1,
                       training__learning_rate=2e-2, output__save_precision="fp32")
    bundle = tiny_bundle()
    inputs = _fixed_inputs(bundle)
    base_unet, base_ctx = _outputs(bundle.unet, bundle.text_encoder, inputs)
    trained, _, result = _train_attached(cfg, bundle, tmp_path)
    unet, ctx = _outputs(bundle.unet, bundle.text_encoder, inputs)
    trained.detach()
    return Trained(inputs, base_unet, base_ctx, unet, ctx, result.output_path)


@pytest.mark.parametrize("method", ["lora", "locon"])
def test_kohya_file_reproduces_trained_outputs(tmp_path, method):
    t = _train_one_epoch(tmp_path, method)
    sd = load_file(t.path)
    fresh = tiny_bundle()  # same seed: the same base weights, never touched by training
    assert _kohya_merge(fresh.unet, fresh.text_encoder, sd) == len({k.split(".")[0] for k in sd}) > 0
    assert not torch.allclose(t.ctx, t.base_ctx, atol=1e-4)  # the text encoder part trained too
    t.assert_reproduced_by(fresh.unet, fresh.text_encoder)


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_loha_lokr_file_reproduces_trained_outputs(tmp_path, method):
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    from extensions_lib.methods.lora import _lycoris_preset, lora_targets

    t = _train_one_epoch(tmp_path, method)
    sd = load_file(t.path)
    key = "hada_w1_a" if method == "loha" else "lokr_w1"
    assert any(key in k for k in sd)
    assert any("resnets" in k for k in sd)  # conv layers are part of LoHa/LoKr by default
    fresh = tiny_bundle()
    _kohya_merge(fresh.unet, fresh.text_encoder, sd)
    t.assert_reproduced_by(fresh.unet, fresh.text_encoder)

    # and lycoris' own loader, which rebuilds each module's type from the file's keys. Its target
    # lists are global class state whose defaults fail on a diffusers UNet, so scope them.
    fresh = tiny_bundle()
    with _lycoris_preset(LycorisNetworkKohya, **lora_targets(method, 4)):
        net, _ = create_network_from_weights(1.0, str(t.path), fresh.vae, fresh.text_encoder, fresh.unet,
                                             weights_sd=dict(sd))
    net.apply_to(fresh.text_encoder, fresh.unet, apply_text_encoder=True, apply_unet=True)
    net.load_state_dict(sd, strict=True)
    t.assert_reproduced_by(fresh.unet, fresh.text_encoder)


def test_key_names_and_metadata(tmp_path):
    make_images(tmp_path / "data" / "5_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=2)
    bundle = tiny_bundle()
    result = run_training(cfg, StandaloneHost(bundle))
    sd = load_file(result.output_path)
    modules = sorted({k.split(".")[0] for k in sd})
    # tiny UNet: one attention level with one transformer block per down/up resnet; TE: 3 layers
    unet_tb = ["lora_unet_down_blocks_0_attentions_0", "lora_unet_up_blocks_1_attentions_0",
               "lora_unet_up_blocks_1_attentions_1", "lora_unet_mid_block_attentions_0"]
    expected = set()
    for tb in unet_tb:
        expected |= {f"{tb}_proj_in", f"{tb}_proj_out"}
        for leaf in ("attn1_to_q", "attn1_to_k", "attn1_to_v", "attn1_to_out_0", "attn2_to_q", "attn2_to_k",
                     "attn2_to_v", "attn2_to_out_0", "ff_net_0_proj", "ff_net_2"):
            expected.add(f"{tb}_transformer_blocks_0_{leaf}")
    for i in range(3):
        for leaf in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                     "mlp_fc1", "mlp_fc2"):
            expected.add(f"lora_te_text_model_encoder_layers_{i}_{leaf}")
    assert set(modules) == expected
    for m in modules:
        assert {k for k in sd if k.startswith(m + ".")} == {f"{m}.lora_down.weight", f"{m}.lora_up.weight",
                                                            f"{m}.alpha"}
        assert sd[f"{m}.alpha"].dim() == 0
        assert sd[f"{m}.lora_down.weight"].dtype == torch.float16
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    for key in ("ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_base_model_version", "ss_v2", "ss_sd_model_name", "ss_resolution", "ss_num_train_images",
                "ss_steps", "ss_learning_rate", "ss_tag_frequency", "ss_dataset_dirs", "sshs_model_hash",
                "sshs_legacy_hash", "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.title"):
        assert key in meta, key
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "4" and meta["ss_steps"] == "2"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["ss_num_train_images"] == "20"  # 4 images x 5 repeats, as kohya counts
    # max steps (2) end the run inside its first epoch of 20 steps: it trains 1 epoch, not the 2 configured
    assert meta["ss_num_epochs"] == "1" and meta["ss_epoch"] == "1"
    # what is unknown (the tiny model has no hash, no separate VAE, no comment) is left out, never "None"
    assert not [k for k, v in meta.items() if v.strip() in ("", "None")], meta
    assert "ss_new_sd_model_hash" not in meta and "ss_training_comment" not in meta
    assert meta["ss_unet_lr"] == meta["ss_text_encoder_lr"] == "0.001"


def test_metadata_leaves_out_the_learning_rate_of_a_part_that_is_not_in_the_file(tmp_path):
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=1,
                       network__train_text_encoder=False)
    result = run_training(cfg, StandaloneHost(tiny_bundle()))
    assert not any(k.startswith("lora_te_") for k in load_file(result.output_path))
    with safe_open(str(result.output_path), "pt") as f:
        meta = f.metadata()
    assert "ss_text_encoder_lr" not in meta and meta["ss_unet_lr"] == "0.001"


def test_two_runs_do_not_leak_presets(tmp_path):
    """lycoris keeps targets as class attributes: a LoCon run must not widen the next LoRA run."""
    from lycoris.kohya import LycorisNetworkKohya

    before = list(LycorisNetworkKohya.UNET_TARGET_REPLACE_MODULE)
    make_images(tmp_path / "data" / "5_sks")
    keys = {}
    for method in ("locon", "lora"):
        cfg = quick_config(tmp_path / "data", tmp_path / "out", method, training__max_train_steps=1)
        keys[method] = set(load_file(run_training(cfg, StandaloneHost(tiny_bundle())).output_path))
    assert any("resnets" in k for k in keys["locon"])
    assert not any("resnets" in k for k in keys["lora"])
    assert LycorisNetworkKohya.UNET_TARGET_REPLACE_MODULE == before


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_bundle_bit_identical_after_run(tmp_path, method):
    make_images(tmp_path / "data" / "5_sks")
    bundle = tiny_bundle()
    before = snapshot(bundle)
    forwards = {n: ("forward" in m.__dict__) for n, m in bundle.unet.named_modules()}
    cfg = quick_config(tmp_path / "data", tmp_path / "out", method, training__max_train_steps=3,
                       training__gradient_checkpointing=True)
    run_training(cfg, StandaloneHost(bundle))
    after = snapshot(bundle)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert {n: ("forward" in m.__dict__) for n, m in bundle.unet.named_modules()} == forwards
    assert not bundle.unet.training and not bundle.text_encoder.training
    assert all(not p.requires_grad for p in bundle.unet.parameters())


def test_every_lora_gets_a_card_picture_from_its_training_images(tmp_path):
    """Without preview prompts the WebUI's Lora card would be blank: a thumbnail of the training
    images is written as <name>.png (no generation parameters: nothing was generated)."""
    import numpy as np
    from PIL import Image

    from extensions_lib.data.images import load_rgb
    from extensions_lib.export.sidecar import dataset_thumbnail

    make_images(tmp_path / "data" / "1_sks", n=5)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=1)
    assert not cfg.sample.prompts
    result = run_training(cfg, StandaloneHost(tiny_bundle()))
    card = result.output_path.with_suffix(".png")
    assert card.is_file()
    with Image.open(card) as img:
        assert img.size == (384, 384) and "parameters" not in img.info
        got = np.asarray(img.convert("RGB"))
    first_four = [load_rgb(tmp_path / "data" / "1_sks" / f"img{i}.png") for i in range(4)]
    assert np.array_equal(got, np.asarray(dataset_thumbnail(first_four)))
    assert got.std() > 10                                    # a picture, not a flat colour

    one = dataset_thumbnail([Image.new("RGB", (300, 100), (200, 10, 10))], size=256)
    assert one.size == (256, 256) and one.getpixel((128, 128)) == (200, 10, 10)


@pytest.mark.parametrize("existing", ["test_lora.png", "test_lora.preview.png", "test_lora.jpg"])
def test_a_users_card_picture_is_kept_unless_overwrite(tmp_path, existing):
    from PIL import Image

    make_images(tmp_path / "data" / "1_sks", n=2)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / existing
    Image.new("RGB", (32, 32), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    statuses = []

    class Rec(Callbacks):
        def on_status(self, text):
            statuses.append(text)

    cfg = quick_config(tmp_path / "data", out, "lora", training__max_train_steps=1)
    result = run_training(cfg, StandaloneHost(tiny_bundle()), callbacks=Rec())
    assert mine.read_bytes() == before
    # nothing of ours hides the user's picture (the WebUI looks for <name>.png first)
    assert existing == "test_lora.png" or not result.output_path.with_suffix(".png").exists()
    assert any(s.startswith("kept the existing card picture") and existing in s for s in statuses), statuses

    cfg.output.overwrite = True
    result = run_training(cfg, StandaloneHost(tiny_bundle()))
    with Image.open(result.output_path.with_suffix(".png")) as img:
        assert img.size == (384, 384)


def test_a_lycoris_that_cannot_import_gets_a_message_naming_the_version_to_install(monkeypatch):
    import sys

    from extensions_lib.hosts.base import HostError
    from extensions_lib.methods.lora import build_network

    monkeypatch.setitem(sys.modules, "lycoris.kohya", None)  # import fails, as 4.1 does on torch < 2.4
    cfg = quick_config(Path("data"), Path("out"), "loha")
    with pytest.raises(HostError, match=r"lycoris-lora==4\.0\.0.*torch < 2\.4"):
        build_network(cfg, None, torch.nn.Linear(2, 2))
