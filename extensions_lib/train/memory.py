"""How much memory a run needs, and the error a run that ran out of it ends with.

The estimate is a sum of parts a user can act on, each a plain formula:

- frozen weights: the UNet and text encoder in the training precision, the VAE in fp32; zero on a
  host that already holds the model (the WebUI lends its own tensors: training adds nothing there);
- trained weights: trainable parameters x 4 bytes x (weights + gradients + optimizer states);
- activations: per image, proportional to resolution² (the UNet's feature maps), smaller in bf16/fp16,
  cut by gradient checkpointing, scaled by the UNet's width for a model that is not SD1.5-sized, plus
  a fixed working amount;
- latent cache: on the CPU only (it is kept there on a GPU run too, outside the device's memory);
- on the CPU, the process itself (Python, torch, the libraries) is part of what the OS counts.

The constants come from bench/bench_train.py's measured peak memory on the CPU (SD1.5 shape, LoRA
rank 16, 8 images, batch 1: 256 and 512 px, fp32 and bf16, with and without gradient checkpointing);
bench/bench_memory_estimate.py prints estimate against measurement. On a GPU, bf16 activations take
less than measured here, so the estimate errs on the high side there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

GIB = 2**30
# SD1.5's parameter counts: the model shape the constants were measured on, and what an estimate made
# before the model is loaded assumes
SD15_UNET, SD15_TEXT_ENCODER, SD15_VAE = 859_520_964, 123_060_480, 83_653_863
# LoRA rank 16 on UNet + text encoder of SD1.5 trains 9.4 M parameters: 0.59 M per unit of rank
SD15_LORA_PER_RANK = 9_437_184 // 16

# fp32 activations kept for backward (and the attention scratch of the backward itself), per pixel of
# one training image, SD1.5 UNet, no gradient checkpointing
ACTIVATION_BYTES_PER_PIXEL = 12_450
CHECKPOINTING_FACTOR = 0.38        # what gradient checkpointing leaves of it (one block recomputed at a time)
# bf16/fp16 under autocast: not half, as the trained layers, norms and the loss stay fp32 (measured on the CPU)
HALF_PRECISION_FACTOR = 0.6
# what does not grow with the images: the text encoder's activations, a batch, the allocator's slack
WORKING_BYTES = int(0.25 * GIB)
CPU_PROCESS_BYTES = int(0.28 * GIB)  # Python + torch + diffusers/transformers, before any model
# optimizer states in units of one fp32 copy of the trained weights
OPTIMIZER_STATES = {"adamw": 2.0, "adamw8bit": 0.5, "adafactor": 0.1, "lion": 1.0, "sgd_nesterov": 1.0,
                    "prodigy": 4.0}
PRECISION_BYTES = {"no": 4, "bf16": 2, "fp16": 2}

OOM_MARKERS = ("out of memory", "can't allocate", "cannot allocate", "defaultcpuallocator", "not enough memory",
               "failed to allocate")


@dataclass
class MemoryEstimate:
    frozen: int
    trained: int
    activations: int
    latents: int
    process: int

    @property
    def total(self) -> int:
        return self.frozen + self.trained + self.activations + self.latents + self.process

    def describe(self) -> str:
        parts = [("frozen model weights", self.frozen), ("trained weights + gradients + optimizer states",
                                                         self.trained),
                 ("activations", self.activations), ("latent cache", self.latents), ("process", self.process)]
        inner = ", ".join(f"{name} {gib(n)}" for name, n in parts if n)
        return f"{gib(self.total)} ({inner})"


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def estimate_peak(cfg, *, device: torch.device, unet_params: int = SD15_UNET,
                  text_encoder_params: int = SD15_TEXT_ENCODER, vae_params: int = SD15_VAE,
                  trainable_params: Optional[int] = None, host_holds_model: bool = False,
                  num_images: int = 0) -> MemoryEstimate:
    """The peak memory of a run of `cfg` on `device`, in bytes, by part. Without `trainable_params`
    a LoRA-family run is assumed to train SD1.5-sized layers at network.dim."""
    t = cfg.training
    weight_bytes = PRECISION_BYTES.get(t.mixed_precision, 4)
    frozen = 0 if host_holds_model else (unet_params + text_encoder_params) * weight_bytes + vae_params * 4
    if trainable_params is None:
        trainable_params = SD15_LORA_PER_RANK * max(1, int(cfg.network.dim))
    states = OPTIMIZER_STATES.get(t.optimizer, 2.0)
    trained = int(trainable_params * 4 * (2 + states))
    pixels = int(cfg.data.resolution) ** 2 * max(1, int(t.train_batch_size))
    per_pixel = ACTIVATION_BYTES_PER_PIXEL * (unet_params / SD15_UNET) ** 0.5
    if t.mixed_precision in ("bf16", "fp16"):
        per_pixel *= HALF_PRECISION_FACTOR
    if t.gradient_checkpointing:
        per_pixel *= CHECKPOINTING_FACTOR
    on_cpu = device.type == "cpu"
    latents = num_images * 4 * (int(cfg.data.resolution) // 8) ** 2 * 4 if on_cpu else 0
    return MemoryEstimate(frozen=int(frozen), trained=trained, activations=WORKING_BYTES + int(pixels * per_pixel),
                          latents=latents, process=CPU_PROCESS_BYTES if on_cpu else 0)


def estimate_run(cfg, bundle, method, *, device: torch.device, host_holds_model: bool,
                 num_images: int = 0) -> MemoryEstimate:
    """estimate_peak with the real model's and method's parameter counts."""
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    return estimate_peak(cfg, device=device, unet_params=count(bundle.unet),
                         text_encoder_params=count(bundle.text_encoder), vae_params=count(bundle.vae),
                         trainable_params=sum(p.numel() for p in method.trainable_parameters()),
                         host_holds_model=host_holds_model, num_images=num_images)


def estimate_note(cfg, *, device: torch.device, host_holds_model: bool, num_images: int = 0) -> str:
    """One line for the user before a run: the estimate for an SD1.5-sized model on this device, what the
    device has free, and a warning with the knobs when the estimate is above it."""
    est = estimate_peak(cfg, device=device, host_holds_model=host_holds_model, num_images=num_images)
    held = " (the WebUI's loaded model not counted: it is already in memory)" if host_holds_model else ""
    line = f"estimated peak {est.describe()} on {device.type} for an SD1.5-sized model{held}"
    available = device_memory(device)
    if available:
        free, total = available
        line += f"; {gib(free)} free of {gib(total)}"
        if est.total > free:
            line += (" - more than is free: lower training.train_batch_size or data.resolution, turn on "
                     "training.gradient_checkpointing, or use mixed precision / an 8-bit optimizer")
    return line


def device_memory(device: torch.device) -> Optional[tuple[int, int]]:
    """(free, total) bytes of the device now; None where it cannot be read."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)
        if device.type == "cpu":
            info = {}
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    key, value = line.split(":", 1)
                    info[key] = int(value.split()[0]) * 1024
            return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, RuntimeError):
        return None
    return None


class DataParallelOutOfMemory(RuntimeError):
    """Raised by every data-parallel process when one of them ran out of memory: all stop together."""

    def __init__(self, cause: str):
        super().__init__(f"out of memory in a data-parallel process: {cause}")


def is_out_of_memory(error: BaseException) -> bool:
    """An allocation failure (GPU or CPU), as opposed to any other error."""
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)    # torch >= 1.13
    if cuda_oom is not None and isinstance(error, cuda_oom):
        return True
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MARKERS)


def free_memory(device: torch.device) -> None:
    """Give freed tensors back: the cycle collector for what the failed step left, the CUDA cache."""
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class OutOfMemoryTrainingError(RuntimeError):
    """The run ran out of memory and stopped; the message names the settings that need less of it.
    `step`: the optimizer step that failed (None: before the first step began)."""

    def __init__(self, cfg, *, step: Optional[int], device: torch.device, estimate: MemoryEstimate,
                 available: Optional[tuple[int, int]], cause: str = ""):
        self.step, self.estimate, self.available = step, estimate, available
        t, res = cfg.training, int(cfg.data.resolution)
        lower = max(64, res * 3 // 4 // 64 * 64)
        smaller = f" (e.g. {lower})" if lower < res else ""
        where = (f"at step {step}" if step else
                 "before training began (moving the model to the device, attaching the network or caching latents)")
        memory = (f"{gib(available[0])} free of {gib(available[1])} on {device} now"
                  if available else f"the free memory of {device} could not be read")
        fixes = [
            f"data.resolution = {res}: lower it{smaller}; activations grow with resolution²",
            f"training.train_batch_size = {t.train_batch_size}"
            + (": lower it and raise training.gradient_accumulation_steps to keep the effective batch size"
               if t.train_batch_size > 1 else " (already the least)"),
            f"training.gradient_checkpointing = {'on' if t.gradient_checkpointing else 'off'}"
            + ("" if t.gradient_checkpointing else ": turn it on (about a third of the activations, slower steps)"),
            f"network.dim = {cfg.network.dim}: a lower rank trains fewer weights",
            f"training.optimizer = {t.optimizer}"
            + (": adamw8bit keeps a quarter of AdamW's state" if device.type == "cuda" and t.optimizer == "adamw"
               else ""),
            f"training.mixed_precision = {t.mixed_precision}"
            + (": bf16 halves the frozen weights and the activations" if t.mixed_precision == "no" else ""),
        ]
        first = cause.strip().splitlines()[0][:200] if cause.strip() else "allocation failed"
        super().__init__(
            f"training ran out of memory {where} ({first}). The run was stopped: files saved before it are "
            f"kept, no final file was written, and the model was handed back unchanged.\n"
            f"Estimated peak of this run: {estimate.describe()}; {memory}.\n"
            "To need less memory, change one of:\n" + ";\n".join(f"  - {f}" for f in fixes) + ".")
