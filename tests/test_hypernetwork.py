"""Hypernetworks: learning, the WebUI's formula checked against an independent implementation built
from the saved file alone, the file's loadability (torch weights_only and the WebUI's safe
unpickler), bad input, and a bundle left exactly as it was."""
from __future__ import annotations

import importlib
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from extensions_lib.config import ACTIVATIONS, ConfigError, TrainConfig
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.methods.base import SaveInfo, make_method
from extensions_lib.methods.hypernetwork import HypernetworkAttnProcessor
from extensions_lib.methods.hypernetwork_mlp import dropout_rates
from extensions_lib.model.bundle import snapshot
from extensions_lib.train import session
from extensions_lib.train.evaluate import evaluate_loss
from extensions_lib.train.events import Callbacks
from extensions_lib.train.session import build_dataset, cache_latents, run_training, scan

from helpers import assert_refused, make_images, quick_config, tiny_bundle

# --------------------------------------------------------------------------------------------
# The WebUI's safe loader (modules/safe.py, v1.10.1), re-implemented from its documented rules:
# zip entries must match the allowed-name pattern; a non-zip (legacy) file is five pickles read by
# a restricted unpickler that only resolves a short list of globals.
# --------------------------------------------------------------------------------------------
ALLOWED_ZIP_NAME = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_device_tensor_from_numpy"),
    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "IntStorage"), ("torch", "LongStorage"),
    ("torch", "DoubleStorage"), ("torch", "ByteStorage"), ("torch", "float32"), ("torch", "BFloat16Storage"),
    ("torch.nn.modules.container", "ParameterDict"),
    ("numpy.core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"), ("__builtin__", "set"),
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid):
        # like the WebUI: every storage is an empty typed storage (the check reads no tensor data)
        assert pid[0] == "storage"
        return torch.storage.TypedStorage(_internal=True)


def webui_safe_check(path: Path) -> None:
    """Raise like the WebUI's check_pt would for a file it refuses."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            bad = [n for n in names if not ALLOWED_ZIP_NAME.match(n)]
            if bad:
                raise ValueError(f"bad file inside {path}: {bad[0]}")
            pkls = [n for n in names if re.match(r"^([^/]+)/data\.pkl$", n)]
            assert len(pkls) == 1
            with z.open(pkls[0]) as f:
                _Restricted(f).load()
        return
    with open(path, "rb") as f:
        unpickler = _Restricted(f)
        for _ in range(5):      # magic number, protocol, sys info, the object, storage keys
            unpickler.load()


def test_safe_check_itself_refuses_what_the_webui_refuses(tmp_path):
    assert ALLOWED_ZIP_NAME.match("archive/data/0") and ALLOWED_ZIP_NAME.match("archive/data.pkl")
    assert not ALLOWED_ZIP_NAME.match("archive/.format_version")
    # a pickle naming a forbidden global (a plain Python object) is refused
    path = tmp_path / "evil.pt"
    torch.save({"x": Path("a")}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(pickle.UnpicklingError):
        webui_safe_check(path)


# --------------------------------------------------------------------------------------------
# The WebUI's hypernetwork forward, written independently from the file's contents:
# layer i: Linear; activation (not after the last Linear unless activate_output; none for "linear");
# LayerNorm if is_layer_norm; Dropout (no weights) where dropout_structure[i+1] > 0. Out: x + mlp(x).
# --------------------------------------------------------------------------------------------
REF_ACT = {
    "relu": F.relu, "leakyrelu": F.leaky_relu, "elu": F.elu, "swish": F.hardswish, "tanh": torch.tanh,
    "sigmoid": torch.sigmoid, "celu": F.celu, "gelu": F.gelu, "hardshrink": F.hardshrink,
    "hardsigmoid": F.hardsigmoid, "hardtanh": F.hardtanh, "logsigmoid": F.logsigmoid, "mish": F.mish,
    "rrelu": lambda y: F.rrelu(y, training=False), "relu6": F.relu6, "selu": F.selu, "silu": F.silu,
    "softplus": F.softplus, "softshrink": F.softshrink, "softsign": F.softsign, "tanhshrink": F.tanhshrink,
}


def reference_mlp(x: torch.Tensor, sd: dict, info: dict) -> torch.Tensor:
    ls, act = info["layer_structure"], info["activation_func"]
    drop = info["dropout_structure"]
    used, idx, y = set(), 0, x.float()

    def take(i, what):
        key = f"linear.{i}.{what}"
        used.add(key)
        return sd[key].float()

    for i in range(len(ls) - 1):
        y = F.linear(y, take(idx, "weight"), take(idx, "bias"))
        idx += 1
        if act not in (None, "linear") and (i < len(ls) - 2 or info["activate_output"]):
            y = F.prelu(y, take(idx, "weight")) if act == "prelu" else REF_ACT[act](y)
            idx += 1
        if info["is_layer_norm"]:
            y = F.layer_norm(y, (y.shape[-1],), take(idx, "weight"), take(idx, "bias"), eps=1e-5)
            idx += 1
        if drop[i + 1] > 0:
            idx += 1
    assert used == set(sd), f"keys the WebUI layout would not load strictly: {set(sd) ^ used}"
    return x.float() + y


def _fresh_method(cfg, bundle):
    method = make_method(cfg)
    method.attach(bundle)
    method.train_mode(False)
    return method


def _capture_kv(unet):
    """Hooks recording each hypernetwork-driven attention's context and its to_k / to_v inputs."""
    records, handles = {}, []
    for name, m in unet.named_modules():
        if isinstance(getattr(m, "processor", None), HypernetworkAttnProcessor):
            assert m.group_norm is None and m.spatial_norm is None and not m.norm_cross
            rec = records.setdefault(name, {"width": m.to_k.in_features})

            def pre(mod, args, kwargs, rec=rec):
                ehs = kwargs.get("encoder_hidden_states")
                rec["context"] = (args[0] if ehs is None else ehs).detach().clone()

            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.to_k.register_forward_pre_hook(lambda mod, a, rec=rec: rec.__setitem__("k", a[0].detach().clone())))
            handles.append(m.to_v.register_forward_pre_hook(lambda mod, a, rec=rec: rec.__setitem__("v", a[0].detach().clone())))
    return records, handles


COMBOS = [(a, ln, ao) for a in ACTIVATIONS if a != "glu" for ln in (False, True) for ao in (False, True)]


def _kv_inputs(attn, hidden, context):
    """Call one attention module; return what reached its to_k and to_v."""
    got = {}
    hk = attn.to_k.register_forward_pre_hook(lambda m, a: got.__setitem__("k", a[0].detach().clone()))
    hv = attn.to_v.register_forward_pre_hook(lambda m, a: got.__setitem__("v", a[0].detach().clone()))
    try:
        with torch.no_grad():
            attn(hidden, encoder_hidden_states=context)
    finally:
        hk.remove()
        hv.remove()
    return got["k"], got["v"]


def _save_and_load(method, path):
    method.save(path, SaveInfo(step=0, epoch=0, final=True, started_at=0.0), overwrite=True)
    return torch.load(path, weights_only=True)


def _randomize(method, g):
    with torch.no_grad():   # strong weights, so a wrong formula cannot hide under N(0, 0.01)
        for p in method.modules.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_processor_matches_webui_formula_for_every_option(tmp_path):
    """Every activation x layer norm x activate_output: the K and V inputs of a self-attention and
    a cross-attention equal the reference formula computed from the saved file alone."""
    bundle = tiny_bundle()
    g = torch.Generator().manual_seed(0)
    mods = dict(bundle.unet.named_modules())
    self_attn = mods["down_blocks.0.attentions.0.transformer_blocks.0.attn1"]
    cross_attn = mods["down_blocks.0.attentions.0.transformer_blocks.0.attn2"]
    mid_self = mods["mid_block.attentions.0.transformer_blocks.0.attn1"]
    cases = [(self_attn, torch.randn(2, 16, 32, generator=g), None),
             (cross_attn, torch.randn(2, 16, 32, generator=g), torch.randn(2, 77, bundle.context_dim, generator=g)),
             (mid_self, torch.randn(2, 4, 64, generator=g), None)]
    for i, (activation, layer_norm, activate_output) in enumerate(COMBOS):
        cfg = quick_config(tmp_path, tmp_path / "out", "hypernetwork", hypernetwork__activation=activation,
                           hypernetwork__layer_norm=layer_norm, hypernetwork__activate_output=activate_output,
                           hypernetwork__layer_structure=[1, 2, 1.5, 1], output__save_precision="fp32")
        assert not cfg.validate()
        method = _fresh_method(cfg, bundle)
        try:
            _randomize(method, g)
            saved = _save_and_load(method, tmp_path / f"hn{i}.pt")
            for attn, hidden, context in cases:
                assert isinstance(attn.processor, HypernetworkAttnProcessor)
                k, v = _kv_inputs(attn, hidden, context)
                ctx = hidden if context is None else context
                sd_k, sd_v = saved[ctx.shape[-1]]
                want_k, want_v = reference_mlp(ctx, sd_k, saved), reference_mlp(ctx, sd_v, saved)
                assert not torch.allclose(want_k, ctx, atol=1e-3), activation
                torch.testing.assert_close(k, want_k, rtol=1e-5, atol=1e-5, msg=f"{activation} K")
                torch.testing.assert_close(v, want_v, rtol=1e-5, atol=1e-5, msg=f"{activation} V")
        finally:
            method.detach()


def test_every_attention_of_the_unet_gets_the_formula(tmp_path):
    """A whole UNet forward: each attention's K/V inputs are the reference applied to its context
    (the text for cross-attention, the hidden states for self-attention), picked by width."""
    bundle = tiny_bundle()
    g = torch.Generator().manual_seed(1)
    cfg = quick_config(tmp_path, tmp_path / "out", "hypernetwork", hypernetwork__activation="tanh",
                       hypernetwork__layer_norm=True, output__save_precision="fp32")
    method = _fresh_method(cfg, bundle)
    try:
        _randomize(method, g)
        saved = _save_and_load(method, tmp_path / "hn.pt")
        records, handles = _capture_kv(bundle.unet)
        with torch.no_grad():
            bundle.unet(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]),
                        torch.randn(1, 77, bundle.context_dim, generator=g))
        for h in handles:
            h.remove()
    finally:
        method.detach()
    n_attn = sum(1 for m in bundle.unet.modules() if type(m).__name__ == "Attention")
    assert len(records) == n_attn > 0
    for name, rec in records.items():
        sd_k, sd_v = saved[rec["width"]]
        torch.testing.assert_close(rec["k"], reference_mlp(rec["context"], sd_k, saved), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rec["v"], reference_mlp(rec["context"], sd_v, saved), rtol=1e-5, atol=1e-5)
    assert any(r["context"].shape[1] == 77 for r in records.values())     # cross-attention seen


def test_dropout_structure_follows_the_webui():
    assert dropout_rates([1, 2, 1], False, True) == [0, 0, 0]
    assert dropout_rates([1, 2, 1], True, False) == [0, 0, 0]
    assert dropout_rates([1, 2, 1], True, True) == [0, 0.3, 0]
    assert dropout_rates([1, 2, 2, 1], True, False) == [0, 0.3, 0, 0]
    assert dropout_rates([1, 2, 2, 1], True, True) == [0, 0.3, 0.3, 0]
    assert dropout_rates([1, 2, 1], True, False, [0, 0.1, 0]) == [0, 0.1, 0]


def test_dropout_layout_in_file_matches_reference(tmp_path):
    """Dropout modules shift the Sequential's indices; the file must still load strictly."""
    bundle = tiny_bundle()
    cfg = quick_config(tmp_path, tmp_path / "out", "hypernetwork", hypernetwork__use_dropout=True,
                       hypernetwork__last_layer_dropout=True, hypernetwork__layer_structure=[1, 2, 2, 1],
                       hypernetwork__activation="relu", hypernetwork__layer_norm=True, output__save_precision="fp32")
    method = _fresh_method(cfg, bundle)
    try:
        path = method.save(tmp_path / "d.pt", SaveInfo(0, 0, True, 0.0), overwrite=True)
    finally:
        method.detach()
    saved = torch.load(path, weights_only=True)
    assert saved["dropout_structure"] == [0, 0.3, 0.3, 0] and saved["last_layer_dropout"] is True
    x = torch.randn(3, 32)
    reference_mlp(x, saved[32][0], saved)   # asserts every key is where the WebUI layout puts it
    # Linear ReLU LayerNorm Dropout | Linear ReLU LayerNorm Dropout | Linear LayerNorm
    assert {int(k.split(".")[1]) for k in saved[32][0]} == {0, 2, 4, 6, 8, 9}


# --------------------------------------------------------------------------------------------
# Training through the real session
# --------------------------------------------------------------------------------------------
def fixed_loss_run(cfg: TrainConfig, bundle, **callbacks_kw):
    """Run run_training; measure the fixed-noise loss of the training images at the start (method
    attached, untrained) and at the end (trained, still attached). Returns (before, after, result)."""
    dataset = build_dataset(cfg, scan(cfg))
    cache_latents(dataset, bundle, cfg, Callbacks())

    class Probe(Callbacks):
        def on_start(self, info):
            self.before = evaluate_loss(bundle, dataset)

        def on_end(self, result):
            self.after = evaluate_loss(bundle, dataset)

    probe = Probe()
    result = run_training(cfg, StandaloneHost(bundle), callbacks=probe)
    return probe.before, probe.after, result


def _record_methods(monkeypatch):
    made = []
    original = session.make_method

    def recording(cfg):
        made.append(original(cfg))
        return made[-1]

    monkeypatch.setattr(session, "make_method", recording)
    return made


def _processors(unet):
    return {name: p for name, p in unet.attn_processors.items()}


def test_training_lowers_fixed_loss_and_leaves_bundle_as_found(tmp_path, monkeypatch):
    make_images(tmp_path / "data" / "1_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "hypernetwork", training__max_train_epochs=12,
                       training__learning_rate=1e-2, training__train_batch_size=2, output__name="hn_test")
    bundle = tiny_bundle()
    base = snapshot(bundle)
    processors = _processors(bundle.unet)
    attn_dicts = {n: set(m.__dict__) for n, m in bundle.unet.named_modules()}
    made = _record_methods(monkeypatch)
    before, after, result = fixed_loss_run(cfg, bundle)
    assert result.steps == 24 and result.prompt_usage == "<hypernet:hn_test:1>"
    assert result.output_path == tmp_path / "out" / "hn_test.pt"
    assert after < 0.9 * before, (before, after)
    # the bundle is as it was: same processor objects, same module attributes, same tensors
    assert _processors(bundle.unet) == processors
    assert all(a is b for a, b in zip(_processors(bundle.unet).values(), processors.values()))
    assert {n: set(m.__dict__) for n, m in bundle.unet.named_modules()} == attn_dicts
    after_tensors = snapshot(bundle)
    assert after_tensors.keys() == base.keys()
    assert all(torch.equal(base[k], after_tensors[k]) for k in base)
    assert all(not p.requires_grad for p in bundle.unet.parameters())
    assert made and made[0].bundle is None


def test_file_is_the_webui_format_and_passes_safe_loaders(tmp_path):
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "hypernetwork", training__max_train_steps=2,
                       output__name="hn_file", output__comment="made in a test")
    bundle = tiny_bundle()
    bundle.model_sha256 = "ab" * 32
    result = run_training(cfg, StandaloneHost(bundle))
    path = result.output_path
    assert path.suffix == ".pt" and not zipfile.is_zipfile(path)   # legacy: the WebUI's non-zip path
    webui_safe_check(path)
    data = torch.load(path, weights_only=True)
    widths = sorted(k for k in data if isinstance(k, int))
    assert widths == [32, 64]   # the tiny model's attention widths
    for w in widths:
        pair = data[w]
        assert isinstance(pair, tuple) and len(pair) == 2
        for sd in pair:
            assert sorted(sd) == ["linear.0.bias", "linear.0.weight", "linear.1.bias", "linear.1.weight"]
            assert sd["linear.0.weight"].shape == (2 * w, w) and sd["linear.1.weight"].shape == (w, 2 * w)
            assert sd["linear.0.weight"].dtype == torch.float16
    assert data["step"] == 2 and data["name"] == "hn_file"
    assert data["layer_structure"] == [1, 2, 1] and data["activation_func"] == "linear"
    assert data["is_layer_norm"] is False and data["weight_initialization"] == "Normal"
    assert data["activate_output"] is False and data["use_dropout"] is False
    assert data["dropout_structure"] == [0, 0, 0] and data["last_layer_dropout"] is False
    assert data["sd_checkpoint"] == "ab" * 5 and data["sd_checkpoint_name"] == "tiny-sd1"
    assert data["optional_info"] == "made in a test"
    # and a default-torch zip of the same dict is what the WebUI would refuse (proves the check bites)
    zipped = tmp_path / "zip.pt"
    torch.save(data, zipped)
    if any(not ALLOWED_ZIP_NAME.match(n) for n in zipfile.ZipFile(zipped).namelist()):
        with pytest.raises(ValueError):
            webui_safe_check(zipped)


def test_sd_sizes_are_kept_and_sd2_runs(tmp_path):
    """On the SD2-shaped tiny model the method trains; configured sizes it has are used as given."""
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = quick_config(tmp_path / "data", tmp_path / "out", "hypernetwork", training__max_train_steps=2,
                       hypernetwork__sizes=[64], output__save_precision="fp32")
    bundle = tiny_bundle("sd2")
    result = run_training(cfg, StandaloneHost(bundle))
    data = torch.load(result.output_path, weights_only=True)
    assert [k for k in data if isinstance(k, int)] == [64]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("hypernetwork.layer_structure", [2, 1]),
    ("hypernetwork.layer_structure", [1, 2]),
    ("hypernetwork.layer_structure", [1]),
    ("hypernetwork.layer_structure", [1, -2, 1]),
    ("hypernetwork.activation", "wiggle"),
    ("hypernetwork.activation", "glu"),
    ("hypernetwork.weight_init", "Uniform"),
    ("hypernetwork.dropout_structure", [0, 0.3]),
    ("hypernetwork.dropout_structure", [0.1, 0.3, 0]),
    ("hypernetwork.dropout_structure", [0, 1.5, 0]),
    ("hypernetwork.sizes", []),
    ("hypernetwork.sizes", [768, 768]),
    ("hypernetwork.sizes", [0]),
    ("output.name", "sub/dir"),
    ("output.name", "bad:name"),
])
def test_bad_input_is_refused_naming_the_field(tmp_path, field, value):
    cfg = quick_config(tmp_path, tmp_path / "out", "hypernetwork")
    assert_refused(cfg, field, value)


def test_sizes_absent_from_an_sd_model_are_refused_before_training(tmp_path):
    """A UNet with SD widths but none of the configured ones: refused at attach, naming the field."""
    from extensions_lib.model.tiny import ModelSize, build_tiny_bundle
    from helpers import TOKENIZER_DIR

    size = ModelSize(unet_channels=(320,), attention_levels=(True,), heads=4, context_dim=768, te_layers=1,
                     te_intermediate=64)
    bundle = build_tiny_bundle(TOKENIZER_DIR, size=size)
    cfg = quick_config(tmp_path, tmp_path / "out", "hypernetwork", hypernetwork__sizes=[1024])
    method = make_method(cfg)
    with pytest.raises(ConfigError, match="hypernetwork.sizes"):
        method.attach(bundle)
    assert all(type(p).__name__ != "HypernetworkAttnProcessor" for p in bundle.unet.attn_processors.values())
