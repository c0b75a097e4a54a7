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
