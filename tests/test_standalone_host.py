"""The standalone hosts hand the model back as it was: a reduced-precision run must never leave
rounded weights behind for the next run (hosts/base.py's promise)."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.model.checkpoint import load_bundle
from extensions_lib.model.tiny import tiny_ldm_state_dict
from extensions_lib.train.session import run_training
from extensions_lib.ui.standalone import CheckpointHost
from helpers import TOKENIZER_DIR, make_images, quick_config, tiny_bundle


def _tensors(bundle) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("unet", "text_encoder", "vae"):
        module = getattr(bundle, part)
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            out[f"{part}.{name}"] = t.detach().clone()
    return out


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]


def _checkpoint(tmp_path):
    sd, _ = tiny_ldm_state_dict(TOKENIZER_DIR, seed=5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_fp32_run_after_bf16_run_trains_on_the_files_weights(tmp_path):
    ckpt = _checkpoint(tmp_path)
    expected = _tensors(load_bundle(ckpt, tokenizer_dir=TOKENIZER_DIR))
    host = CheckpointHost(output_root=tmp_path / "out", tokenizer=str(TOKENIZER_DIR))
    data = make_images(tmp_path / "data" / "1_sks")

    def config(precision: str, name: str):
        cfg = quick_config(tmp_path / "data", tmp_path / "out", training__mixed_precision=precision,
                           training__max_train_epochs=1, output__name=name)
        cfg.model.checkpoint = str(ckpt)
        return cfg

    assert data.is_dir()
    run_training(config("bf16", "first"), host)
    fp32 = config("no", "second")
    with host.borrow_bundle(fp32) as bundle:
        held = _tensors(bundle)
    assert not _differing(expected, held), "the fp32 run would train on bf16-rounded weights"
    result = run_training(fp32, host)
    assert result.output_path.exists()


def test_a_given_bundle_comes_back_bit_identical_after_a_bf16_run(tmp_path):
    bundle = tiny_bundle(seed=2)
    before = _tensors(bundle)
    make_images(tmp_path / "data" / "1_sks")
    cfg = quick_config(tmp_path / "data", tmp_path / "out", training__mixed_precision="bf16",
                       training__max_train_epochs=1)
    host = StandaloneHost(bundle)
    with host.borrow_bundle(cfg) as lent:
        assert next(lent.unet.parameters()).dtype == torch.bfloat16    # the run does use bf16
    assert not _differing(before, _tensors(bundle))
    run_training(cfg, host)
    assert not _differing(before, _tensors(bundle))
