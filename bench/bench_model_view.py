"""Benchmark: the diffusers view of a full SD1.5-shaped fp16 LDM state dict.

Measures what building a ModelBundle costs when the weights are already in memory (the WebUI
case): wall time and extra resident memory of `bundle_from_ldm`. Targets: < 1 s, < 100 MB.
For comparison it also times loading the same weights from a .safetensors file, with our
load_bundle and with diffusers' own from_single_file path (offline, from the v1 yaml as a dict).

    python bench/bench_model_view.py [--literal-init] [--skip-file]

The weights are random. By default the modules are built on the meta device and converted with
ldm_from_diffusers, then every tensor is filled with fp16 noise (fast, no fp32 copy); with
--literal-init the modules are built for real in fp32, converted, cast and freed.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from extensions_lib.model import tiny  # noqa: E402
from extensions_lib.model.bundle import SD1  # noqa: E402
from extensions_lib.model.ldm import bundle_from_ldm, ldm_from_diffusers  # noqa: E402

# Stable Diffusion's v1-inference.yaml, the parts diffusers' config mapping reads
V1_YAML = {
    "model": {
        "params": {
            "scale_factor": 0.18215,
            "unet_config": {"params": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
                "context_dim": 768, "use_checkpoint": True, "legacy": False,
            }},
            "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
                "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
            }}},
        }
    }
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")        # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def sd15_state_dict(literal: bool) -> dict[str, torch.Tensor]:
    size = tiny.SD15
    device = "cpu" if literal else "meta"
    torch.manual_seed(0)
    unet = tiny.build_unet(size, SD1, device=device)
    te = tiny.build_text_encoder(size, SD1, vocab_size=49408, device=device)
    vae = tiny.build_vae(size, device=device)
    sd = ldm_from_diffusers(unet, te, vae, SD1)
    del unet, te, vae
    if literal:
        sd = {k: v.half() if v.is_floating_point() else v.clone() for k, v in sd.items()}
    else:
        g = torch.Generator().manual_seed(0)
        sd = {k: (torch.randn(v.shape, generator=g, dtype=torch.float16) * 0.02) for k, v in sd.items()}
    gc.collect()
    return sd


def measure(label: str, fn):
    gc.collect()
    before = rss_mb()
    has_peak = reset_peak()
    t = time.perf_counter()
    result = fn()
    dt = time.perf_counter() - t
    after = rss_mb()
    peak = f", peak +{peak_rss_mb() - before:7.1f} MB" if has_peak else ""
    print(f"{label:<64} {dt:7.3f} s   RSS +{after - before:7.1f} MB{peak}")
    return result, dt, after - before


def diffusers_single_file(source):
    """diffusers' own route: from_single_file for the UNet and VAE (config from the v1 yaml dict),
    its CLIP key conversion + a meta-device CLIPTextModel for the text encoder.
    `source` is a file path or an in-memory state dict (from_single_file takes both)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, load_single_file_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    if isinstance(source, Path):
        source = load_single_file_checkpoint(str(source), local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(source, original_config=V1_YAML, local_files_only=True,
                                                 torch_dtype=torch.float16)
    vae = AutoencoderKL.from_single_file(source, original_config=V1_YAML, local_files_only=True,
                                         torch_dtype=torch.float16)
    te_sd = convert_ldm_clip_checkpoint(source)
    te_sd.pop("text_model.embeddings.position_ids", None)
    with init_empty_weights():
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu"))
    te.load_state_dict(te_sd, strict=False, assign=True)
    return unet, vae, te


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--literal-init", action="store_true", help="build real fp32 modules first (slow, ~4.4 GiB)")
    ap.add_argument("--skip-file", action="store_true", help="skip the .safetensors comparisons")
    args = ap.parse_args()

    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401 - imports outside the timing
    from transformers import CLIPTextModel  # noqa: F401

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}")
    tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    tok = tiny.load_tokenizer(tiny.write_char_tokenizer(tok_dir))

    t = time.perf_counter()
    sd = sd15_state_dict(args.literal_init)
    n = sum(v.numel() for v in sd.values())
    nbytes = sum(v.numel() * v.element_size() for v in sd.values())
    print(f"SD1.5-shaped fp16 LDM state dict: {len(sd)} tensors, {n / 1e9:.3f} B params, "
          f"{nbytes / 2**30:.2f} GiB, built in {time.perf_counter() - t:.1f} s; RSS {rss_mb():.0f} MB")

    print("-" * 100)
    bundle, cold, cold_mb = measure("bundle_from_ldm (in memory, first call)", lambda: bundle_from_ldm(sd, tok))
    ptrs = {v.untyped_storage().data_ptr() for v in sd.values()}
    shared = all(p.untyped_storage().data_ptr() in ptrs for m in bundle.modules().values() for p in m.parameters())
    del bundle
    bundle, warm, warm_mb = measure("bundle_from_ldm (in memory, again)", lambda: bundle_from_ldm(sd, tok))
    del bundle
    print(f"every parameter shares the source storage: {shared}")
    ok = cold < 1.0 and cold_mb < 100
    print(f"target < 1 s and < 100 MB: {'met' if ok else 'MISSED'} (first call {cold:.3f} s, +{cold_mb:.1f} MB)")

    try:
        r, _, _ = measure("diffusers from_single_file(dict) UNet+VAE, its CLIP conversion",
                          lambda: diffusers_single_file(sd))
        shared = all(p.untyped_storage().data_ptr() in ptrs for m in r for p in m.parameters())
        print(f"  (diffusers' modules share the source storage: {shared})")
        del r
    except Exception as e:  # noqa: BLE001 - report, do not hide, a comparison that cannot run
        print(f"diffusers from_single_file(dict) failed offline: {type(e).__name__}: {e}")

    if args.skip_file:
        return
    from safetensors.torch import save_file

    from extensions_lib.model.checkpoint import load_bundle

    print("-" * 100)
    folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    path = folder / "sd15-random.safetensors"
    save_file(sd, str(path))
    del sd
    gc.collect()
    print(f"saved {path.stat().st_size / 2**30:.2f} GiB (file now in the page cache: warm-cache load times)")
    b, _, _ = measure("load_bundle(.safetensors) (mmap + view)", lambda: load_bundle(path, tokenizer_dir=tok_dir))
    del b
    try:
        r, _, _ = measure("diffusers from_single_file UNet+VAE, its CLIP conversion", lambda: diffusers_single_file(path))
        del r
    except Exception as e:  # noqa: BLE001 - report, do not hide, a comparison that cannot run
        print(f"diffusers from_single_file path failed offline: {type(e).__name__}: {e}")
    path.unlink()


if __name__ == "__main__":
    main()
