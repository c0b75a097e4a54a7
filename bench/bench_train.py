"""Step time and peak memory of LoRA-family training on a full SD1.5-shaped model (random weights).

Settings match the sd-scripts figures in the issue: 8 images, rank 16 (alpha 8) on UNet + text
encoder, batch 1, AdamW, SDPA attention, latents cached; LoCon/LoHa/LoKr add the resnet and sampler
convolutions at conv rank 8 (alpha 4). Each configuration runs in its own process so peak RSS is
that configuration's alone.

    python bench/bench_train.py                      # the full matrix (slow on 2 CPU cores: ~25 min)
    python bench/bench_train.py --one 256 no 0      # one configuration: resolution, precision, checkpointing
    python bench/bench_train.py --one 256 bf16 0 --without attention,heap   # what those CPU fast paths are worth
    python bench/bench_train.py --one 256 bf16 0 --alternate "/attention/heap" --rounds 4
    python bench/bench_train.py --methods lora,locon,loha,lokr --only 256:bf16:0,256:no:0   # one table
    python bench/bench_train.py --one 256 bf16 0 --method loha --lycoris-forward   # lycoris' own LoHa forward

--alternate runs the listed --without sets in turn inside one process (here: all paths on, attention
off, heap off), round after round, and prints each one's median and best step. On a shared VM whose
speed drifts 10-15% between runs, that is the way to see a few-percent difference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MATRIX = [(256, "no", 0), (256, "bf16", 0), (256, "no", 1), (256, "bf16", 1), (512, "no", 0), (512, "bf16", 0),
          (512, "no", 1), (512, "bf16", 1)]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare(res: int, precision: str, checkpointing: int, total_steps: int, method: str = "lora") -> dict:
    """The model, LoRA, dataset (latents cached) and config of one benchmark configuration."""
    import numpy as np
    import torch
    from PIL import Image

    from extensions_lib.config import TrainConfig
    from extensions_lib.methods.base import make_method
    from extensions_lib.model.tiny import SD15, build_tiny_bundle
    from extensions_lib.train.events import Callbacks
    from extensions_lib.train.session import build_dataset, cache_latents, scan

    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    sub = tmp / "data" / "1_bench"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text(f"a photo of sks, number {i}")

    t0 = time.time()
    bundle = build_tiny_bundle(tmp / "tok", size=SD15)
    build_s = time.time() - t0

    cfg = TrainConfig()
    cfg.data.train_dir = str(tmp / "data")
    cfg.data.resolution = res
    cfg.data.enable_buckets = False
    cfg.network.method = method
    cfg.network.dim, cfg.network.alpha = 16, 8
    cfg.network.conv_dim, cfg.network.conv_alpha = 8, 4
    cfg.training.train_batch_size = 1
    cfg.training.optimizer = "adamw"
    cfg.training.mixed_precision = precision
    cfg.training.gradient_checkpointing = bool(checkpointing)
    cfg.training.max_train_steps = total_steps
    cfg.training.lr_scheduler = "constant"
    cfg.output.output_dir = str(tmp / "out")
    cfg.output.name = "bench"
    cfg.output.overwrite = True

    if os.environ.get("BENCH_CHANNELS_LAST"):
        bundle.unet.to(memory_format=torch.channels_last)
    if precision != "no":
        # what the standalone host does: frozen weights stored in the training precision
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        bundle.unet.to(dtype)
        bundle.text_encoder.to(dtype)
    dataset = build_dataset(cfg, scan(cfg))
    method = make_method(cfg)
    torch.manual_seed(0)
    method.attach(bundle)
    t0 = time.time()
    cache_latents(dataset, bundle, cfg, Callbacks())
    cache_s = (time.time() - t0) / 8
    return {"cfg": cfg, "bundle": bundle, "method": method, "dataset": dataset, "tmp": tmp, "build_s": build_s,
            "cache_s": cache_s}


def train_steps(run: dict) -> tuple[list[float], object]:
    """One Trainer run over the prepared configuration: every step's seconds, and its result."""
    from extensions_lib.train.events import Callbacks
    from extensions_lib.train.loop import Trainer

    times = []

    class Clock(Callbacks):
        last = None

        def on_start(self, info):
            Clock.last = time.time()

        def on_step(self, info):
            now = time.time()
            times.append(now - Clock.last)
            Clock.last = now

    result = Trainer(run["cfg"], run["bundle"], run["method"], run["dataset"], output_dir=run["tmp"] / "out",
                     callbacks=Clock()).run()
    return times, result


def one(res: int, precision: str, checkpointing: int, steps: int, warmup: int, method: str = "lora") -> dict:
    run = prepare(res, precision, checkpointing, warmup + steps, method)
    trainable = sum(p.numel() for p in run["method"].trainable_parameters())
    times, result = train_steps(run)
    run["method"].detach()
    steady = times[warmup:]
    return {
        "method": method, "resolution": res, "precision": precision, "grad_checkpointing": bool(checkpointing),
        "s_per_step": sum(steady) / len(steady), "median_s_per_step": statistics.median(steady),
        "step_times": [round(x, 3) for x in times], "first_step_s": times[0], "peak_rss_gib": peak_rss_gib(),
        "build_s": run["build_s"], "latent_cache_s_per_image": run["cache_s"], "steps": result.steps,
        "trainable_params": trainable,
    }


def alternate(res: int, precision: str, checkpointing: int, variants: list[str], steps: int, rounds: int) -> None:
    """Each --without set in turn, `rounds` times, in one process; the first step of each turn is dropped."""
    from extensions_lib.train.cpu_fast_paths import ENABLED

    run = prepare(res, precision, checkpointing, steps + 1)
    seen = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            off = set(filter(None, v.split(",")))
            for name in ENABLED:
                ENABLED[name] = name not in off
            times, _ = train_steps(run)
            seen[v] += times[1:]
    run["method"].detach()
    for v, times in seen.items():
        print(f"without {v or '(none)':<28} median {statistics.median(times):.3f} s  best {min(times):.3f} s  "
              f"steps {len(times)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=3, metavar=("RES", "PRECISION", "CHECKPOINTING"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="", help="comma list of RES:PRECISION:CKPT from the matrix, e.g. 256:no:0")
    p.add_argument("--without", default="", help="comma list of CPU fast paths to leave off: "
                   "small_convs,pointwise_convs,attention,heap")
    p.add_argument("--alternate", default="", help="with --one: '/'-separated --without sets to alternate in one process")
    p.add_argument("--rounds", type=int, default=4, help="with --alternate: how many times each set runs")
    p.add_argument("--method", default="lora", choices=["lora", "locon", "loha", "lokr"], help="with --one")
    p.add_argument("--methods", default="lora", help="comma list of methods for the matrix, e.g. lora,loha")
    p.add_argument("--lycoris-forward", action="store_true",
                   help="LoHa/LoKr through lycoris' own rebuild forward instead of ours (to compare)")
    args = p.parse_args()
    if args.lycoris_forward:
        import extensions_lib.methods.lora as lora_method
        lora_method.use_merged_forward = lambda loras: 0
    from extensions_lib.train.cpu_fast_paths import ENABLED
    variants = args.alternate.split("/") if args.alternate else [args.without]
    for name in {n for v in variants for n in v.split(",") if n}:
        if name not in ENABLED:
            p.error(f"unknown fast path {name!r}; known: {', '.join(ENABLED)}")
    for name in filter(None, args.without.split(",")):
        ENABLED[name] = False
    if args.alternate:
        if not args.one:
            p.error("--alternate needs --one RES PRECISION CHECKPOINTING")
        if args.without:
            p.error("--alternate sets the fast paths of each turn itself: put the --without set in it instead")
        res, prec, ck = args.one
        alternate(int(res), prec, int(ck), variants, args.steps, args.rounds)
        return
    if args.one:
        res, prec, ck = args.one
        print(json.dumps(one(int(res), prec, int(ck), args.steps, args.warmup, args.method)))
        return
    matrix = MATRIX
    if args.only:
        wanted = {tuple(x.split(":")) for x in args.only.split(",")}
        matrix = [m for m in MATRIX if (str(m[0]), m[1], str(m[2])) in wanted]
    print(f"{'method':>6} {'res':>4} {'precision':>9} {'ckpt':>5} {'s/step':>7} {'peak RSS GiB':>12} "
          f"{'cache s/img':>11} {'trainable':>10}")
    for method in args.methods.split(","):
        for res, prec, ck in matrix:
            cmd = [sys.executable, __file__, "--one", str(res), prec, str(ck), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--without", args.without, "--method", method]
            out = subprocess.run(cmd + (["--lycoris-forward"] if args.lycoris_forward else []),
                                 capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            line = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if not line:
                print(f"{method:>6} {res:>4} {prec:>9} {ck:>5}  failed: {out.stderr[-800:]}")
                continue
            r = json.loads(line[-1])
            print(f"{method:>6} {res:>4} {prec:>9} {ck:>5} {r['s_per_step']:>7.2f} {r['peak_rss_gib']:>12.2f} "
                  f"{r['latent_cache_s_per_image']:>11.2f} {r['trainable_params'] / 1e6:>9.2f}M", flush=True)


if __name__ == "__main__":
    main()
