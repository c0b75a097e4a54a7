"""Textual-inversion embeddings: learning, files that diffusers and the WebUI's loaders read, the
host's text encoder and tokenizer left untouched, prompt building and bad input."""
from __future__ import annotations

import copy
import zipfile

import pytest
import torch
from safetensors import safe_open

from extensions_lib.data.templates import available_templates, load_template
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.methods.base import make_method
from extensions_lib.methods.embedding import PlaceholderTokenizer, substitute, token_ids
from extensions_lib.model.bundle import snapshot
from extensions_lib.model.tiny import ModelSize, build_tiny_bundle
from extensions_lib.train.session import run_training
from extensions_lib.train.text import CHUNK, encode, tokenize

from helpers import assert_refused, TOKENIZER_DIR, make_images, quick_config, tiny_bundle
from test_hypernetwork import _record_methods, fixed_loss_run, webui_safe_check


def emb_config(tmp_path, **kw):
    kw.setdefault("embedding__token", "sks")
    kw.setdefault("output__name", "")   # the file is named after the token
    return quick_config(tmp_path / "data", tmp_path / "out", "embedding", **kw)


def _te_state(te):
    """Everything about the text encoder's modules that a leftover hook or attribute would change."""
    return {name: (set(m.__dict__), len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in te.named_modules()}


def _attached(cfg, bundle):
    method = make_method(cfg)
    method.attach(bundle)
    return method


# --------------------------------------------------------------------------------------------
# Training through the real session
# --------------------------------------------------------------------------------------------
def test_training_lowers_fixed_loss_and_leaves_text_encoder_untouched(tmp_path, monkeypatch):
    make_images(tmp_path / "data" / "1_sks")
    cfg = emb_config(tmp_path, embedding__num_vectors=4, training__max_train_epochs=12,
                     training__learning_rate=5e-2, training__train_batch_size=2)
    bundle = tiny_bundle()
    base, te_before, tokenizer = snapshot(bundle), _te_state(bundle.text_encoder), bundle.tokenizer
    made = _record_methods(monkeypatch)
    before, after, result = fixed_loss_run(cfg, bundle)
    assert result.steps == 24 and result.prompt_usage == "sks"
    assert result.output_path == tmp_path / "out" / "sks.safetensors"
    # the text path is the only thing that learns here, and it is a small random model: the drop is
    # small but real (evaluation noise is fixed, so without learning before == after exactly)
    assert after < before - 1e-3, (before, after)
    method = made[0]
    init = bundle.text_encoder.get_input_embeddings().weight[token_ids(bundle.tokenizer, "*")[0]]
    assert not torch.allclose(method.vectors.detach()[0], init)
    # the host's model is exactly as before: tensors, hooks, module attributes, tokenizer
    after_tensors = snapshot(bundle)
    assert all(torch.equal(base[k], after_tensors[k]) for k in base) and base.keys() == after_tensors.keys()
    assert _te_state(bundle.text_encoder) == te_before
    assert bundle.tokenizer is tokenizer
    assert all(not p.requires_grad for p in bundle.text_encoder.parameters())
    with pytest.raises(IndexError):    # no hook maps out-of-table ids any more
        bundle.text_encoder(torch.tensor([[bundle.text_encoder.config.vocab_size]]))


def _diffusers_pipe(bundle):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=bundle.vae, text_encoder=copy.deepcopy(bundle.text_encoder),
                                   tokenizer=copy.deepcopy(bundle.tokenizer), unet=bundle.unet,
                                   scheduler=bundle.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _diffusers_context(pipe, prompt):
    prompt = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids).last_hidden_state


@pytest.mark.parametrize("save_pt", [False, True])
def test_file_loads_in_diffusers_with_the_trained_vectors(tmp_path, monkeypatch, save_pt):
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = emb_config(tmp_path, embedding__num_vectors=3, embedding__save_pt=save_pt, training__max_train_steps=3,
                     output__save_precision="fp32", sample__prompts=["a photo of sks"], sample__steps=2,
                     sample__width=64, sample__height=64)
    bundle = tiny_bundle()
    bundle.model_sha256 = "cd" * 32
    made = _record_methods(monkeypatch)
    result = run_training(cfg, StandaloneHost(bundle))
    trained = made[0].vectors.detach().cpu()
    path = result.output_path
    assert result.previews and result.steps == 3

    if save_pt:
        assert path.name == "sks.pt" and not zipfile.is_zipfile(path)   # legacy: the WebUI's non-zip path
        webui_safe_check(path)
        data = torch.load(path, weights_only=True)
        assert data["string_to_token"] == {"*": 265} and data["name"] == "sks" and data["step"] == 3
        assert data["sd_checkpoint"] == "cd" * 5 and data["sd_checkpoint_name"] == "tiny-sd1"
        assert list(data["string_to_param"]) == ["*"]
        assert torch.equal(data["string_to_param"]["*"], trained)
    else:
        assert path.name == "sks.safetensors"
        with safe_open(str(path), "pt") as f:
            keys, meta = list(f.keys()), f.metadata()
            assert keys == ["emb_params"]          # exactly one tensor: what the WebUI requires
            tensor = f.get_tensor("emb_params")
        assert tensor.shape == (3, bundle.context_dim) and torch.equal(tensor, trained)
        assert meta["step"] == "3" and meta["num_vectors_per_token"] == "3" and meta["init_text"] == "*"
        assert meta["sd_checkpoint"] == "cd" * 5 and meta["sd_checkpoint_name"] == "tiny-sd1"
        assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"

    # an independent loader: diffusers adds the token (and token_1, token_2) with our vectors
    pipe = _diffusers_pipe(bundle)
    pipe.load_textual_inversion(str(path), token="sks")
    names = ["sks", "sks_1", "sks_2"]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    rows = pipe.text_encoder.get_input_embeddings().weight[ids].detach()
    assert torch.equal(rows, trained)
    # ... and encodes a prompt exactly as our training-time substitution does
    method = _attached(cfg, bundle)
    try:
        with torch.no_grad():
            method.vectors.copy_(trained)
            ours = encode(bundle.text_encoder, tokenize(bundle.tokenizer, ["a photo of sks"]))
    finally:
        method.detach()
    torch.testing.assert_close(ours, _diffusers_context(pipe, "a photo of sks"), rtol=1e-5, atol=1e-5)


def test_width_comes_from_the_model_sd2(tmp_path):
    make_images(tmp_path / "data" / "1_sks", n=2)
    cfg = emb_config(tmp_path, embedding__num_vectors=2, training__max_train_steps=2)
    bundle = build_tiny_bundle(TOKENIZER_DIR, size=ModelSize(context_dim=48), version="sd2")
    result = run_training(cfg, StandaloneHost(bundle))
    with safe_open(str(result.output_path), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and f.get_tensor("emb_params").shape == (2, 48)
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-v2-512/textual-inversion"


# --------------------------------------------------------------------------------------------
# Tokens, vectors, prompts
# --------------------------------------------------------------------------------------------
def test_word_becomes_placeholders_and_blocks_do_not_straddle_chunks(tmp_path):
    bundle = tiny_bundle()
    method = _attached(emb_config(tmp_path, embedding__num_vectors=4), bundle)
    try:
        vocab = bundle.text_encoder.get_input_embeddings().num_embeddings
        assert isinstance(bundle.tokenizer, PlaceholderTokenizer)
        ids = tokenize(bundle.tokenizer, ["a sks b"])[0].tolist()
        assert ids[1:7] == token_ids(method._tokenizer, "a") + list(range(vocab, vocab + 4)) + \
            token_ids(method._tokenizer, "b")
        # 73 ids of text then the word: its 4 vectors move to the next chunk, as the WebUI does
        long = "x " * 73 + "sks"
        ids = tokenize(bundle.tokenizer, [long], max_token_length=150)[0].tolist()
        first, second = ids[:CHUNK + 2], ids[CHUNK + 2:]
        assert not any(i >= vocab for i in first)
        assert second[1:5] == list(range(vocab, vocab + 4))
        method.set_enabled(False)
        assert not any(i >= vocab for i in tokenize(bundle.tokenizer, ["a sks b"])[0].tolist())
        with pytest.raises(TypeError):
            bundle.tokenizer("a sks", return_tensors="pt")
    finally:
        method.detach()
    assert substitute([1, 2, 3, 2, 3], [2, 3], [9]) == [1, 9, 9]


def test_initial_vectors_follow_the_webui(tmp_path):
    bundle = tiny_bundle()
    table = bundle.text_encoder.get_input_embeddings().weight
    for init, n, expect in [("*", 3, ["*", "*", "*"]), ("ab", 4, ["a", "a", "b</w>", "b</w>"]), ("", 2, None)]:
        method = _attached(emb_config(tmp_path, embedding__init_text=init, embedding__num_vectors=n), bundle)
        try:
            if expect is None:
                assert torch.equal(method.vectors.detach(), torch.zeros(n, table.shape[1]))
            else:
                rows = table[bundle.tokenizer.convert_tokens_to_ids(expect if init != "*" else ["*</w>"] * n)]
                assert torch.equal(method.vectors.detach(), rows)
        finally:
            method.detach()


def test_caption_prompts(tmp_path):
    bundle = tiny_bundle()
    method = _attached(emb_config(tmp_path), bundle)
    try:
        assert method.caption("a photo of sks, red") == "a photo of sks, red"
        assert method.caption("a photo of a dog") == "sks, a photo of a dog"
        assert method.caption("") == "sks"
        assert method.caption("[name] in a field") == "sks in a field"
    finally:
        method.detach()


def test_template_prompts(tmp_path):
    assert {"subject", "style", "subject_filewords", "style_filewords"} <= set(available_templates())
    bundle = tiny_bundle()
    method = _attached(emb_config(tmp_path, embedding__prompt_source="template",
                                  embedding__template="subject_filewords"), bundle)
    lines = load_template("subject_filewords")
    try:
        method.train_mode(True)
        seen = {method.caption("red dog") for _ in range(40)}
        assert len(seen) > 3
        assert all("sks" in p and "red dog" in p for p in seen)
        assert seen <= {ln.replace("[filewords]", "red dog").replace("[name]", "sks") for ln in lines}
        method.train_mode(False)
        assert len({method.caption("red dog") for _ in range(5)}) == 1   # evaluations are repeatable
    finally:
        method.detach()
    custom = tmp_path / "mine.txt"
    custom.write_text("a drawing of [filewords]\n\n", encoding="utf-8")
    method = _attached(emb_config(tmp_path, embedding__prompt_source="template", embedding__template=str(custom)),
                       bundle)
    try:
        assert method.caption("a cat") == "sks, a drawing of a cat"
    finally:
        method.detach()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("embedding.token", ""),
    ("embedding.token", "my/word"),
    ("embedding.token", "a:b"),
    ("embedding.token", "two words"),
    ("embedding.token", "con"),
    ("embedding.num_vectors", 0),
    ("embedding.num_vectors", 76),
    ("embedding.template", "no_such_template"),
    ("output.name", "..\\up"),
    ("output.name", "a|b"),
    ("data.reg_dir", "some/reg"),
])
def test_bad_input_is_refused_naming_the_field(tmp_path, field, value):
    cfg = emb_config(tmp_path, embedding__prompt_source="template")
    assert_refused(cfg, field, value)
