"""TrainConfig: every field refuses a bad value by name; TOML round trip; overrides."""
from __future__ import annotations

import dataclasses

import pytest

from extensions_lib.config import ConfigError, TrainConfig, iter_fields


def _bad_values(section, f):
    """Values that must be refused for this field: wrong type always, and out-of-range / unknown
    choice where the field has limits."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    bad = []
    if isinstance(default, bool):
        bad.append({"kind": "type", "value": "perhaps"})
    elif isinstance(default, (int, float)):
        bad.append({"kind": "type", "value": "lots"})
    elif isinstance(default, str):
        bad.append({"kind": "type", "value": 12})
    elif isinstance(default, list):
        bad.append({"kind": "type", "value": 3.5})
    meta = f.metadata
    if meta.get("choices"):
        bad.append({"kind": "value", "value": "no-such-choice" if isinstance(default, str) else 999999})
    if meta.get("min") is not None:
        bad.append({"kind": "value", "value": meta["min"] - (1 if isinstance(default, int) else 0.5)})
    if meta.get("max") is not None:
        bad.append({"kind": "value", "value": meta["max"] * 2 + 1})
    return bad


CASES = [(s, f.name, b) for s, f in iter_fields() for b in _bad_values(s, f)]


@pytest.mark.parametrize("section,name,bad", CASES, ids=[f"{s}.{n}-{b['kind']}-{b['value']}" for s, n, b in CASES])
def test_every_field_refuses_bad_values_by_name(section, name, bad):
    field = f"{section}.{name}"
    cfg = TrainConfig()
    cfg.data.train_dir = "/some/folder"
    if bad["kind"] == "type":
        with pytest.raises(ConfigError) as e:
            TrainConfig.from_dict({section: {name: bad["value"]}})
        assert field in str(e.value)
        return
    setattr(getattr(cfg, section), name, bad["value"])
    problems = cfg.validate()
    assert any(p.field == field for p in problems), (field, [str(p) for p in problems])
    assert field in str(ConfigError(problems))


def test_all_problems_reported_at_once():
    cfg = TrainConfig()
    cfg.training.optimizer = "adam"
    cfg.network.dim = 0
    cfg.output.name = "../evil"
    problems = {p.field for p in cfg.validate()}
    assert {"data.train_dir", "training.optimizer", "network.dim", "output.name"} <= problems


def test_unknown_keys_and_sections_are_errors_not_ignored():
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"training": {"learnig_rate": 1e-4}, "trainnig": {}})
    msg = str(e.value)
    assert "training.learnig_rate" in msg and "learning_rate" in msg and "trainnig" in msg


def test_relations():
    cfg = TrainConfig()
    cfg.data.train_dir = "/x"
    cfg.data.min_bucket_reso, cfg.data.max_bucket_reso = 1024, 512
    cfg.training.lr_scheduler, cfg.training.lr_warmup_steps = "constant", 10
    cfg.network.train_unet = cfg.network.train_text_encoder = False
    cfg.network.method = "hypernetwork"
    cfg.hypernetwork.layer_structure = [2, 1]
    fields = {p.field for p in cfg.validate()}
    assert {"data.min_bucket_reso", "training.lr_warmup_steps", "hypernetwork.layer_structure"} <= fields
    cfg.network.method = "lora"
    assert "network.train_unet" in {p.field for p in cfg.validate()}


def test_toml_round_trip_and_overrides(tmp_path):
    cfg = TrainConfig()
    cfg.data.train_dir = "/data/dog"
    cfg.network.method = "loha"
    cfg.sample.prompts = ["a dog", "a dog on a beach"]
    cfg.hypernetwork.layer_structure = [1, 1.5, 1]
    path = tmp_path / "c.toml"
    cfg.save_toml(path)
    back = TrainConfig.from_toml(path)
    assert back == cfg
    back.set("training.learning_rate", "5e-5")
    back.set("data.flip_aug", "true")
    back.set("sample.prompts", '["one", "two"]')
    back.set("output.name", "plain words")
    assert back.training.learning_rate == 5e-5 and back.data.flip_aug is True
    assert back.sample.prompts == ["one", "two"] and back.output.name == "plain words"
    with pytest.raises(ConfigError) as e:
        back.set("training.nope", "1")
    assert "training.nope" in str(e.value)


def test_default_config_is_valid_apart_from_the_dataset():
    assert [p.field for p in TrainConfig().validate()] == ["data.train_dir"]


def test_broken_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[training\nlearning_rate = 1", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_toml(path)
    assert "broken.toml" in str(e.value)


def test_readme_options_table_is_current():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    table = subprocess.run([sys.executable, str(root / "tools" / "options_table.py")], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert table in (root / "README.md").read_text(encoding="utf-8"), \
        "README options table is stale: run python tools/options_table.py --write"


def test_commented_default_config_reads_back(tmp_path):
    from extensions_lib.config import commented_toml

    path = tmp_path / "default.toml"
    path.write_text(commented_toml(TrainConfig()), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert "# Rank (network dim) of linear layers." in text and "[training]" in text
    assert TrainConfig.from_toml(path) == TrainConfig()


# A text TOML must escape (backslashes, quotes, a newline, a control character) and characters beyond
# ASCII, one beyond U+FFFF included.
TRICKY_TEXT = 'C:\\data\\"dog" \'one\'\nline é ü 日本 😀 \x7f'


def _changed_value(f):
    """A value of the field's type that differs from its default."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return not default
    if f.metadata.get("choices"):
        return [c for c in f.metadata["choices"] if c != default][-1]
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default + 1.5e-5
    if isinstance(default, str):
        return f"{f.name} {TRICKY_TEXT}"
    return [1, 2.5, 1] if not default else default[::-1] + [7]


def _all_changed() -> TrainConfig:
    cfg = TrainConfig()
    for section, f in iter_fields():
        setattr(getattr(cfg, section), f.name, _changed_value(f))
    return cfg


def test_every_option_round_trips_through_toml(tmp_path):
    from extensions_lib.config import commented_toml

    cfg = _all_changed()
    assert all(getattr(getattr(cfg, s), f.name) != getattr(getattr(TrainConfig(), s), f.name)
               for s, f in iter_fields())
    path = tmp_path / "all.toml"
    cfg.save_toml(path)
    assert TrainConfig.from_toml(path) == cfg
    path.write_text(commented_toml(cfg), encoding="utf-8")
    assert TrainConfig.from_toml(path) == cfg


def test_none_is_left_out_and_reads_back_as_the_default(tmp_path):
    cfg = TrainConfig()
    cfg.model.vae = None
    cfg.output.comment = "kept"
    path = tmp_path / "none.toml"
    cfg.save_toml(path)
    assert "vae" not in path.read_text(encoding="utf-8")
    back = TrainConfig.from_toml(path)
    assert back.model.vae == "" and back.output.comment == "kept"


def test_a_value_toml_cannot_hold_is_refused_by_field(tmp_path):
    from extensions_lib.config import commented_toml

    cfg = TrainConfig()
    cfg.sample.prompts = ["a dog", None]
    for write in (cfg.to_toml, lambda: commented_toml(cfg)):
        with pytest.raises(ConfigError) as e:
            write()
        assert [p.field for p in e.value.problems] == ["sample.prompts"]


def test_config_written_by_earlier_versions_loads(tmp_path):
    """Without tomli-w, earlier versions wrote strings with json.dumps: escapes such as \\u00e9 and,
    beyond U+FFFF, surrogate pairs (\\ud83d\\ude00) that TOML itself does not accept."""
    path = tmp_path / "old.toml"
    path.write_text('version = 1\n\n[data]\ntrain_dir = "C:\\\\data\\\\\\"dog\\" \\u00e9 \\ud83d\\ude00"\n'
                    'flip_aug = true\n\n[sample]\nprompts = ["a \\ud83d\\ude00 dog", "x \\\\ud83d\\\\ude00"]\n\n'
                    '[hypernetwork]\nlayer_structure = [1, 1.5, 1]\n\n[training]\nlearning_rate = 5e-05\n',
                    encoding="utf-8")
    cfg = TrainConfig.from_toml(path)
    assert cfg.data.train_dir == 'C:\\data\\"dog" é 😀' and cfg.data.flip_aug is True
    # an escaped backslash before "ud83d" is text, not an escape: left as it is
    assert cfg.sample.prompts == ["a 😀 dog", "x \\ud83d\\ude00"]
    assert cfg.hypernetwork.layer_structure == [1, 1.5, 1] and cfg.training.learning_rate == 5e-5


def test_commented_config_starts_with_how_to_use_it():
    from extensions_lib.config import commented_toml

    text = commented_toml(TrainConfig())
    assert text.startswith("# Trainer training config") and "python -m extensions_lib train" in text.splitlines()[0]
    assert "# What to train. (lora, locon, loha, lokr, embedding, hypernetwork)\nmethod = \"lora\"" in text


def test_old_module_names_still_import():
    import extensions_lib.config as config

    for name in config.__all__:
        assert getattr(config, name) is not None, name
    from extensions_lib.config import (ACTIVATIONS, SECTIONS, ConfigProblem, ModelConfig,  # noqa: F401
                                       commented_toml, dumps_toml)


# ---- what a run outside the WebUI needs from [model] ---------------------------------------------

def _tokenizer_dir(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text("{}", encoding="utf-8")
    (folder / "merges.txt").write_text("", encoding="utf-8")
    return folder


def _model_problems(**model) -> dict:
    from extensions_lib.config import standalone_model_problems

    cfg = TrainConfig()
    for k, v in model.items():
        setattr(cfg.model, k, str(v))
    return {p.field: p.allowed for p in standalone_model_problems(cfg)}


def test_standalone_needs_a_checkpoint_and_says_how_to_set_it():
    problems = _model_problems()
    assert list(problems) == ["model.checkpoint"]
    assert "--set model.checkpoint=" in problems["model.checkpoint"]


def test_standalone_single_file_needs_a_tokenizer(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not read by the check")
    problems = _model_problems(checkpoint=ckpt)
    assert list(problems) == ["model.tokenizer"] and "--set model.tokenizer=" in problems["model.tokenizer"]
    assert _model_problems(checkpoint=ckpt, tokenizer=_tokenizer_dir(tmp_path / "tok")) == {}
    (tmp_path / "empty").mkdir()
    assert "vocab.json" in _model_problems(checkpoint=ckpt, tokenizer=tmp_path / "empty")["model.tokenizer"]
    assert "no such folder" in _model_problems(checkpoint=ckpt, tokenizer=tmp_path / "nope")["model.tokenizer"]
    assert list(_model_problems(checkpoint=ckpt, tokenizer=tmp_path / "tok", vae=tmp_path / "v.pt")) == ["model.vae"]


def test_standalone_diffusers_folder_brings_its_tokenizer(tmp_path):
    folder = tmp_path / "sd15"
    folder.mkdir()
    assert "model_index.json" in _model_problems(checkpoint=folder)["model.checkpoint"]
    (folder / "model_index.json").write_text("{}", encoding="utf-8")
    assert list(_model_problems(checkpoint=folder)) == ["model.tokenizer"]
    _tokenizer_dir(folder / "tokenizer")
    assert _model_problems(checkpoint=folder) == {}
    assert "no such file" in _model_problems(checkpoint=tmp_path / "missing.safetensors")["model.checkpoint"]


def test_a_bad_embedding_token_is_named_as_the_token_not_as_output_name():
    cfg = TrainConfig()
    cfg.data.train_dir = "/anywhere"
    cfg.network.method = "embedding"
    cfg.embedding.token = "bad/tok"
    with pytest.raises(ConfigError) as e:
        cfg.check()
    assert [p.field for p in e.value.problems] == ["embedding.token"]
    assert "output.name" not in str(e.value) and "embedding.token 'bad/tok' is not allowed" in str(e.value)
