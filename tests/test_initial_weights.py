"""Continuing a LoRA file (network.initial_weights): the file's tensors become the network's, bit for
bit; its rank and alpha replace the config's; a file of another kind, for another model family, with
other modules, missing or not safetensors is refused naming the option, the last ones before the model
is built."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from extensions_lib.config import ConfigError
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.methods.base import make_method
from extensions_lib.model.bundle import snapshot
from extensions_lib.train.evaluate import evaluate_loss
from extensions_lib.train.events import Callbacks
from extensions_lib.train.loop import Trainer
from extensions_lib.train.session import build_dataset, cache_latents, run_training, scan

from helpers import make_images, quick_config, tiny_bundle

FIELD = "network.initial_weights"


class NoModelHost(StandaloneHost):
    """Refusals must come before the model: borrowing it fails the test."""

    @contextmanager
    def borrow_bundle(self, cfg):
        raise AssertionError("the model was built although the run should have been refused")
        yield  # pragma: no cover


def _train(tmp_path, method, name, version="sd1", **overrides):
    """A short real run; returns (saved file, config)."""
    data = tmp_path / "data"
    if not data.exists():
        make_images(data / "10_sks")
    cfg = quick_config(data, tmp_path / "out", method, training__max_train_steps=6, output__name=name,
                       **overrides)
    result = run_training(cfg, StandaloneHost(tiny_bundle(version)))
    return result.output_path, cfg


def _refusal(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        run_training(cfg, NoModelHost(tiny_bundle()))
    assert FIELD in [p.field for p in e.value.problems]
    return str(e.value)


@pytest.mark.parametrize("method", ["lora", "loha"])
def test_attached_network_equals_the_file_bitwise(tmp_path, method):
    path, _ = _train(tmp_path, method, f"first_{method}")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", method, network__initial_weights=str(path))
    bundle = tiny_bundle()
    before = snapshot(bundle)
    m = make_method(cfg)
    m.attach(bundle)
    own = m.network.state_dict()
    theirs = load_file(str(path))
    assert set(own) == set(theirs)
    for k, t in theirs.items():
        assert torch.equal(own[k], t.to(own[k].dtype)), k
    # trained weights, not the fresh initialisation (LoRA's up and LoHa's second factors start at 0)
    assert any(t.abs().sum() > 0 for k, t in theirs.items() if k.endswith(("lora_up.weight", "hada_w2_a")))
    m.detach()
    after = snapshot(bundle)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_continued_run_starts_where_the_first_ended_with_the_files_rank(tmp_path):
    make_images(tmp_path / "data" / "10_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=40,
                       training__learning_rate=3e-3, output__save_precision="fp32", output__name="first")
    bundle = tiny_bundle()
    dataset = build_dataset(cfg, scan(cfg))
    first = make_method(cfg)
    first.attach(bundle)
    cache_latents(dataset, bundle, cfg, Callbacks())
    result = Trainer(cfg, bundle, first, dataset, output_dir=tmp_path / "out").run()
    trained = evaluate_loss(bundle, dataset)
    first.set_enabled(False)
    base = evaluate_loss(bundle, dataset)
    first.detach()
    assert trained < base

    # another rank and alpha in the config: the file's are used, and the user is told
    cont = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__dim=16, network__alpha=1.0,
                        network__initial_weights=str(result.output_path), output__name="second",
                        training__max_train_steps=1)
    cont.check()
    second = make_method(cont)
    assert (cont.network.dim, cont.network.alpha) == (4, 4.0)
    assert any("network.dim: 16 -> 4" in n for n in second.notes)
    assert any("network.alpha: 1 -> 4" in n for n in second.notes)
    fresh_bundle = tiny_bundle()
    second.attach(fresh_bundle)
    continued = evaluate_loss(fresh_bundle, dataset)
    second.detach()
    assert continued == pytest.approx(trained, rel=1e-5)
    assert continued < base

    # the continued run saves the rank it trained
    again = run_training(cont, StandaloneHost(tiny_bundle()))
    with safe_open(str(again.output_path), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"


def test_a_file_of_another_method_is_refused_before_the_model(tmp_path):
    loha, _ = _train(tmp_path, "loha", "a_loha")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__initial_weights=str(loha))
    message = _refusal(cfg)
    assert "LoHa" in message and "network.method = loha" in message
    lora, _ = _train(tmp_path, "lora", "a_lora")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lokr", network__initial_weights=str(lora))
    assert "network.method = lora" in _refusal(cfg)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "embedding", network__initial_weights=str(lora))
    cfg.embedding.token = "sks"
    assert "only LoRA-family" in _refusal(cfg)


def test_missing_and_non_safetensors_files_are_refused_before_the_model(tmp_path):
    make_images(tmp_path / "data" / "10_sks")
    missing = tmp_path / "nothing.safetensors"
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__initial_weights=str(missing))
    assert "no such file" in _refusal(cfg)
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    cfg.network.initial_weights = str(garbage)
    assert "could not be read as a safetensors file" in _refusal(cfg)
    pickled = tmp_path / "old.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    cfg.network.initial_weights = str(pickled)
    assert "not a .safetensors file" in _refusal(cfg)
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.0.weight": torch.zeros(2)}, str(checkpoint))
    cfg.network.initial_weights = str(checkpoint)
    assert "kohya's key names" in _refusal(cfg)
    sdxl = tmp_path / "xl.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 2)}, str(sdxl))
    cfg.network.initial_weights = str(sdxl)
    assert "SDXL" in _refusal(cfg)


def test_per_block_ranks_and_missing_parts_are_refused(tmp_path):
    path, _ = _train(tmp_path, "lora", "first")
    sd = load_file(str(path))
    key = next(k for k in sd if k.endswith("lora_down.weight"))
    module = key.split(".")[0]
    sd[f"{module}.lora_down.weight"] = torch.zeros(2, sd[key].shape[1])
    sd[f"{module}.lora_up.weight"] = torch.zeros(sd[f"{module}.lora_up.weight"].shape[0], 2)
    mixed = tmp_path / "mixed.safetensors"
    save_file(sd, str(mixed))
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__initial_weights=str(mixed))
    assert "different ranks (2, 4)" in _refusal(cfg)
    cfg.network.initial_weights = str(path)
    cfg.network.train_text_encoder = False
    assert "network.train_text_encoder = true" in _refusal(cfg)


def test_a_file_lacking_a_module_is_refused_at_attach_and_the_model_is_left_as_lent(tmp_path):
    path, _ = _train(tmp_path, "lora", "first")
    sd = load_file(str(path))
    gone = sorted(k for k in sd if k.startswith("lora_unet_"))[0].split(".")[0]
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith(gone + ".")}, str(short))
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__initial_weights=str(short))
    bundle = tiny_bundle()
    before = snapshot(bundle)
    m = make_method(cfg)
    with pytest.raises(ConfigError) as e:
        m.attach(bundle)
    assert FIELD in str(e.value) and gone in str(e.value) and "missing from the file" in str(e.value)
    assert m.network is None
    assert not any("forward" in mod.__dict__ for mod in bundle.unet.modules())
    after = snapshot(bundle)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_file_for_another_model_family_is_refused(tmp_path):
    sd2_file, _ = _train(tmp_path, "lora", "for_sd2", version="sd2")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "lora", network__initial_weights=str(sd2_file))
    m = make_method(cfg)
    with pytest.raises(ConfigError) as e:
        m.attach(tiny_bundle("sd1"))
    assert "trained on SD2" in str(e.value) and "loaded model is SD1" in str(e.value)
    # without metadata the shapes tell: SD2's attention projections are linear, SD1's are 1x1 convs
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(sd2_file)), str(bare))
    cfg.network.initial_weights = str(bare)
    m = make_method(cfg)
    with pytest.raises(ConfigError) as e:
        m.attach(tiny_bundle("sd1"))
    assert "other shapes" in str(e.value) and "proj_in" in str(e.value)
