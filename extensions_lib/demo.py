"""`python -m extensions_lib demo`: the whole product path in a minute or two, offline, on a CPU.

A tiny SD-shaped model (random weights) is turned into an LDM-layout checkpoint and viewed back
through the zero-copy loader, a few real photos (shipped inside scikit-image) become a dataset,
a LoCon (a LoRA that also adapts the 3x3 convolutions) trains on them for a fixed number of steps,
and the saved file is re-applied to prove it carries what was learned:
base vs trained loss at fixed noise and timesteps, plus a before/after picture of how well each
model denoises the training photos.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel")
SIZE = 64


def make_photo_dataset(folder: Path) -> Path:
    try:
        import skimage.data as sk
    except ImportError:
        raise SystemExit("the demo uses photos shipped with scikit-image: pip install scikit-image") from None
    sub = folder / "10_photo"
    sub.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        img = Image.fromarray(getattr(sk, name)()).convert("RGB")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.LANCZOS).save(sub / f"{name}.png")
        (sub / f"{name}.txt").write_text(f"a photo of {name.replace('_', ' ')}", encoding="utf-8")
    return folder


def _error_map(guess: torch.Tensor, truth: torch.Tensor, scale: float) -> np.ndarray:
    """Per-pixel error of a latent estimate as a grey picture (black = exact), on a shared scale."""
    err = ((guess - truth).abs().mean(dim=0) / scale).clamp(0, 1)
    return np.repeat((err * 255).byte().numpy()[:, :, None], 3, axis=2)


@torch.no_grad()
def denoise_strip(bundle, dataset, t: int = 300, seed: int = 0) -> tuple[list, list, list]:
    """For each training image (once): its latent, and the model's one-step estimate of that latent
    from a noised copy (same noise for every model). The tiny VAE is random, so decoded pictures
    would mean nothing: the comparison is in latent space, where the UNet works."""
    from .train.text import encode, tokenize

    sched, seen, truth, guess = bundle.noise_scheduler, [], [], []
    ac = sched.alphas_cumprod[t]
    for i, batch in enumerate(dataset.epoch_batches(0)):
        for j, path in enumerate(batch.paths):
            if path in seen:
                continue
            seen.append(path)
            z = batch.latents[j:j + 1]
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + len(seen)))
            ts = torch.full((1,), t)
            noisy = sched.add_noise(z, noise, ts)
            ctx = encode(bundle.text_encoder, tokenize(bundle.tokenizer, [batch.captions[j]]))
            eps = bundle.unet(noisy, ts, ctx).sample
            truth.append(z[0])
            guess.append((noisy - (1 - ac).sqrt() * eps)[0] / ac.sqrt())
    return seen, truth, guess


def _grid(rows: list[list[np.ndarray]], scale: int = 2) -> Image.Image:
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * w, len(rows) * h), "white")
    for r, row in enumerate(rows):
        for c, a in enumerate(row):
            canvas.paste(Image.fromarray(a), (c * w, r * h))
    return canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)


DEFAULT_STEPS = 200


def run_demo(out: Path, steps: int = DEFAULT_STEPS) -> int:
    """Train the demo LoCon for `steps` steps (seeded: the same numbers on the same machine and
    stack) and print base and trained loss; returns the exit code."""
    from safetensors.torch import load_file

    from .config import TrainConfig
    from .hosts.standalone import StandaloneHost
    from .model.ldm import bundle_from_ldm
    from .model.tiny import tiny_ldm_state_dict
    from .train.console import ConsoleProgress
    from .train.evaluate import evaluate_loss
    from .train.session import build_dataset, cache_latents, run_training, scan

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # a tiny model's ops are too small to split across threads: one thread is faster
    torch.set_num_threads(1)
    t0 = time.time()
    torch.manual_seed(0)
    # a checkpoint in the WebUI's key layout, viewed as diffusers modules without copying
    sd, tokenizer = tiny_ldm_state_dict(out / "tokenizer")
    bundle = bundle_from_ldm(sd, tokenizer, model_name="tiny-demo.safetensors")
    data = make_photo_dataset(out / "dataset")
    print(f"model view + dataset ready in {time.time() - t0:.1f}s: {len(PHOTOS)} photos in {data}")

    cfg = TrainConfig()
    cfg.data.train_dir = str(data)
    cfg.data.resolution = SIZE
    cfg.data.min_bucket_reso, cfg.data.max_bucket_reso = SIZE, SIZE * 2
    cfg.network.method = "locon"
    cfg.network.dim, cfg.network.alpha, cfg.network.conv_dim, cfg.network.conv_alpha = 16, 16, 8, 8
    cfg.training.learning_rate = 2e-3
    cfg.training.lr_scheduler = "cosine"
    cfg.training.train_batch_size = 2
    cfg.training.max_train_steps = steps
    cfg.training.max_train_epochs = 1000
    cfg.output.output_dir = str(out)
    cfg.output.name = "demo_locon"
    cfg.output.overwrite = True

    dataset = build_dataset(cfg, scan(cfg))
    cache_latents(dataset, bundle, cfg, ConsoleProgress(False))
    base_loss = evaluate_loss(bundle, dataset)
    paths, truth, before = denoise_strip(bundle, dataset)

    result = run_training(cfg, StandaloneHost(bundle), callbacks=ConsoleProgress())

    # re-apply the SAVED file (not the in-memory network) to show what a user gets
    from .methods.lora import build_network

    net = build_network(cfg, bundle.text_encoder, bundle.unet)
    net.apply_to(bundle.text_encoder, bundle.unet, apply_text_encoder=True, apply_unet=True)
    net.load_state_dict({k: v.float() for k, v in load_file(result.output_path).items()})
    trained_loss = evaluate_loss(bundle, dataset)
    _, _, after = denoise_strip(bundle, dataset)
    net.restore()

    scale = float(torch.stack([(g - z).abs().mean(dim=0) for g, z in zip(before, truth)]).quantile(0.99))
    photos = [np.asarray(Image.open(p).convert("RGB").resize(truth[0].shape[1:][::-1], Image.LANCZOS))
              for p in paths]
    rows = [photos] + [[_error_map(g, z, scale) for g, z in zip(row, truth)] for row in (before, after)]
    preview = out / "demo_before_after.png"
    _grid(rows, scale=4).save(preview)
    print(f"\nsteps: {result.steps}   time: {time.time() - t0:.0f}s")
    print(f"mean denoising loss, fixed noise and timesteps:  base {base_loss:.4f}  ->  trained {trained_loss:.4f}"
          f"  ({100 * (1 - trained_loss / base_loss):.0f}% lower)")
    print(f"LoCon file: {result.output_path}  (use as {result.prompt_usage})")
    print(f"before/after picture: {preview}  (rows: photo; error of the base model's and of the trained "
          f"model's denoising of the same noisy latent, black = exact)")
    return 0
