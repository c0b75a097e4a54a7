"""The memory estimate (extensions_lib/train/memory.py) against the measured peak memory of a run.

Uses bench_train.py's SD1.5-shaped LoRA run (rank 16 / alpha 8, 8 images, batch 1, AdamW, CPU), each
configuration in its own process. Two measurements per configuration:

- process peak RSS: the whole process, as bench_train.py reports it (building the model in fp32 included,
  which is the peak of a bf16 run);
- training peak RSS: the peak from the start of training on (Linux: the high-water mark is reset through
  /proc/self/clear_refs once the model, network and latents are ready), which is what the estimate models.

    python bench/bench_memory_estimate.py                  # lora at 256 and 512 px, fp32 and bf16 (~8 GiB, minutes)
    python bench/bench_memory_estimate.py --only 256       # the 256 px pair
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_train  # noqa: E402

CASES = [(256, "no"), (256, "bf16"), (512, "no"), (512, "bf16")]
GIB = 2**30


def _high_water_gib() -> float:
    """VmHWM of this process (Linux), GiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    raise OSError("no VmHWM in /proc/self/status")


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")      # 5: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


def one(res: int, precision: str, steps: int) -> dict:
    import torch

    from extensions_lib.train.memory import estimate_run

    run = bench_train.prepare(res, precision, 0, steps, "lora")
    estimate = estimate_run(run["cfg"], run["bundle"], run["method"], device=torch.device("cpu"),
                            host_holds_model=False, num_images=8)
    reset = _reset_high_water()
    bench_train.train_steps(run)
    run["method"].detach()
    return {"resolution": res, "precision": precision, "estimate_gib": estimate.total / GIB,
            "estimate": estimate.describe(), "training_peak_gib": _high_water_gib() if reset else None,
            "process_peak_gib": bench_train.peak_rss_gib()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--one", nargs=2, metavar=("RES", "PRECISION"))
    p.add_argument("--only", default="", help="comma list of resolutions, e.g. 256")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.steps)))
        return
    wanted = {int(x) for x in args.only.split(",") if x}
    print(f"{'res':>4} {'precision':>9} {'estimate':>9} {'training peak':>13} {'process peak':>12} "
          f"{'est/training':>12} {'est/process':>11}")
    for res, precision in CASES:
        if wanted and res not in wanted:
            continue
        out = subprocess.run([sys.executable, __file__, "--one", str(res), precision, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if not line:
            print(f"{res:>4} {precision:>9}  failed: {out.stderr[-800:]}")
            continue
        r = json.loads(line[-1])
        est, train, proc = r["estimate_gib"], r["training_peak_gib"], r["process_peak_gib"]
        train_text, ratio_text = (f"{train:.2f}G", f"{est / train:.2f}") if train else ("n/a", "n/a")
        print(f"{res:>4} {precision:>9} {est:>8.2f}G {train_text:>13} {proc:>11.2f}G {ratio_text:>12} "
              f"{est / proc:>11.2f}", flush=True)
        print(f"     estimate: {r['estimate']}", flush=True)


if __name__ == "__main__":
    main()
