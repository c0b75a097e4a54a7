"""What each LoRA-family method keeps for backward on the full SD1.5 UNet, counted on the meta device.

Autograd's saved tensors are what a training step holds between forward and backward, on top of the
model: the part of peak memory a method decides. Counting them on the meta device (shapes, no data)
takes seconds, needs no memory and does not drift with the machine's load, unlike RSS and step time
(bench/bench_train.py). Parameters (the frozen weights and the method's own) are not counted.

    python bench/bench_saved_for_backward.py                 # 256 px, fp32, every method
    python bench/bench_saved_for_backward.py --res 512 --bf16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ["lora", "locon", "loha", "lokr"]


def saved_gib(method: str, res: int, bf16: bool, lycoris_forward: bool) -> tuple[float, int]:
    import torch

    import extensions_lib.methods.lora as lora_method
    from extensions_lib.config import TrainConfig
    from extensions_lib.model.tiny import SD15, build_unet

    unet = build_unet(SD15, "sd1", "meta").requires_grad_(False)
    if bf16:
        unet.to(torch.bfloat16)
    cfg = TrainConfig()
    cfg.network.method = method
    cfg.network.dim, cfg.network.alpha, cfg.network.conv_dim, cfg.network.conv_alpha = 16, 8, 8, 4
    cfg.network.train_text_encoder = False
    net = lora_method.build_network(cfg, None, unet)
    net.apply_to(None, unet, apply_text_encoder=False, apply_unet=True)
    net.to("meta").requires_grad_(True)
    for lora in net.loras:  # a value the meta device cannot hold: lycoris' fixed scalar (1.0)
        if "scalar" in lora._buffers:
            lora.scalar = torch.ones(())
    lora_method.use_lean_bypass(net.loras)
    if not lycoris_forward:
        lora_method.use_merged_forward(net.loras)
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr() or id(t)] = t.numel() * t.element_size()
        return t

    params = {p.untyped_storage().data_ptr() or id(p) for p in (*unet.parameters(), *net.parameters())}
    side = res // 8
    latents = torch.zeros(1, 4, side, side, device="meta", dtype=torch.bfloat16 if bf16 else torch.float32)
    context = torch.zeros(1, 77, 768, device="meta", dtype=latents.dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(latents, torch.tensor([10], device="meta"), context)
    return sum(v for k, v in saved.items() if k not in params) / 2**30, len(net.loras)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--bf16", action="store_true", help="frozen weights and activations in bf16")
    args = p.parse_args()
    print(f"SD1.5 UNet, {args.res} px, {'bf16' if args.bf16 else 'fp32'}, batch 1, rank 16 / conv rank 8")
    print(f"{'method':>6} {'modules':>7} {'saved, ours':>12} {'saved, lycoris forward':>23}")
    for method in METHODS:
        ours, modules = saved_gib(method, args.res, args.bf16, lycoris_forward=False)
        theirs, _ = saved_gib(method, args.res, args.bf16, lycoris_forward=True)
        print(f"{method:>6} {modules:>7} {ours:>10.2f} GiB {theirs:>21.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
