"""One training run from a config, on any host: the single entry point of the CLI, tab and REST API.

Order matters: everything that can be refused (config, host state, dataset, output folder, existing
files, disk space) is checked before the model is touched, so a bad input never costs a model load or
leaves anything behind.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import ConfigError, ConfigProblem, TrainConfig
from ..data.dataset import TrainDataset
from ..data.folders import DatasetScan, scan_dataset
from ..data.images import ImageLoadError, load_rgb
from ..export.atomic import OutputExistsError
from ..export.preflight import (
    OutputClashError,
    SavePlan,
    estimated_file_bytes,
    folder_problem,
    planned_clashes,
    space_problem,
)
from ..export.sidecar import dataset_thumbnail, existing_previews, write_lora_sidecar, write_preview_png
from ..hosts.base import Host
from ..methods.base import make_method
from ..model.bundle import SD2
from .cpu_fast_paths import keep_freed_memory_on
from .events import Callbacks, Commands, TrainResult
from .loop import Dist, Trainer, autocast_dtype, plan_steps
from .memory import (MemoryEstimate, OutOfMemoryTrainingError, device_memory, estimate_peak, estimate_run,
                     free_memory, is_out_of_memory)
from .resume import ResumeState, dataset_files, dataset_hash, read_state, state_dir
from .validation import validation_scans


def build_dataset(cfg: TrainConfig, scan) -> TrainDataset:
    d = cfg.data
    return TrainDataset(
        scan, resolution=d.resolution, enable_buckets=d.enable_buckets, min_bucket_reso=d.min_bucket_reso,
        max_bucket_reso=d.max_bucket_reso, bucket_reso_steps=d.bucket_reso_steps,
        bucket_no_upscale=d.bucket_no_upscale, random_crop=d.random_crop, flip_aug=d.flip_aug,
        shuffle_caption=d.shuffle_caption, keep_tokens=d.keep_tokens, caption_dropout_rate=d.caption_dropout_rate,
        caption_tag_dropout_rate=d.caption_tag_dropout_rate, batch_size=cfg.training.train_batch_size,
        seed=cfg.training.seed,
    )


def scan(cfg: TrainConfig, *, check_images: bool = True):
    """The dataset scan every count the user sees comes from (the tab's summary, the start checks,
    the run): images fully decoded once per file change, so a damaged one is skipped in all of them."""
    d = cfg.data
    reg = (d.reg_dir or "").strip()
    return scan_dataset(Path(d.train_dir.strip()), Path(reg) if reg else None,
                        caption_extension=d.caption_extension or ".txt", check_images=check_images)


def report_dataset(data_scan, callbacks: Callbacks) -> None:
    """Tell the user what the run trains on and, by name with the reason, every file it leaves out
    (a damaged image, a caption with no image): warnings, so the tab and the console show them."""
    lines = data_scan.report()
    callbacks.on_status("dataset: " + lines[0])
    for line in lines[1:]:
        if line.startswith(("skipped:", "caption without an image:")):
            callbacks.on_warning(line)
        else:
            callbacks.on_status(line)


def check_before_model(cfg: TrainConfig, host: Host, *, check_images: bool = True, num_processes: int = 1):
    """Every refusal that needs no model (config, host state, precision, dataset, a training state to
    resume from, output folder, existing files, disk space), in this order. Returns (dataset scan,
    method)."""
    checked = check_run(cfg, host, check_images=check_images, num_processes=num_processes)
    return checked.data_scan, checked.method


@dataclass
class CheckedRun:
    data_scan: DatasetScan            # everything found in the dataset folders
    method: object
    resume: Optional[ResumeState]     # the checked training state to go on from, or None
    trained_scan: DatasetScan         # data_scan without the held-out validation images
    validation_scan: Optional[DatasetScan]


def check_run(cfg: TrainConfig, host: Host, *, check_images: bool = True, num_processes: int = 1) -> CheckedRun:
    """check_before_model, also returning the training state to resume from and the validation split
    (made once here: the run trains on exactly the images this check counted)."""
    problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    host.check_ready(cfg)
    autocast_dtype(cfg, host.device())  # refuses fp16 without a GPU before any model work
    data_scan = scan(cfg, check_images=check_images)
    method = make_method(cfg)
    resume = None
    if cfg.training.resume.strip():
        resume = read_state(cfg, data_scan, num_processes)
    # held-out validation images are refused now if there are none, and are not counted as steps
    trained_scan, validation_scan = validation_scans(cfg, data_scan)
    check_output(cfg, host, method, save_plan(cfg, trained_scan, num_processes), resume=resume)
    return CheckedRun(data_scan, method, resume, trained_scan, validation_scan)


def save_plan(cfg: TrainConfig, data_scan, num_processes: int = 1) -> SavePlan:
    """The saves the run will make, from the same step count the loop computes."""
    dataset = build_dataset(cfg, data_scan)
    _, total, epochs = plan_steps(cfg, dataset.steps_per_epoch(num_processes))
    return SavePlan(total, epochs, cfg.output.save_every_n_epochs, cfg.output.save_every_n_steps)


def check_output(cfg: TrainConfig, host: Host, method, plan: SavePlan, *,
                 resume: Optional[ResumeState] = None) -> None:
    """The output folder takes files, no file the run writes exists (overwrite off), and the disk
    has room for every save: each found now, not after hours of training at the first save. A
    resumed run may replace the files its own earlier part wrote (the state lists them)."""
    folder = host.output_dir(method.kind, cfg)
    where = ("" if cfg.output.output_dir else
             f" (the default folder for {method.kind} files, used because output.output_dir is empty)")
    problem = folder_problem(folder)
    if problem:
        raise ConfigError([ConfigProblem("output.output_dir", str(folder),
                                         f"{problem}{where}; set output.output_dir to a folder you can write to")])
    if not cfg.output.overwrite:
        clashes = planned_clashes(folder, cfg.output_name, plan, method.file_path)
        state = state_dir(folder, cfg.output_name)
        if cfg.output.save_state and state.exists() and not (resume and resume.folder.resolve() == state.resolve()):
            clashes.append(state)    # a state of another run would be replaced
        if resume:
            clashes = [p for p in clashes if p.name not in set(resume.written)]
        best = method.file_path(folder, cfg.output_name, best=True)
        if cfg.output.keep_best_validation and os.path.lexists(best) and not (resume and best.name in resume.written):
            clashes.append(best)
        final = method.file_path(folder, cfg.output_name)
        if clashes == [final]:
            raise OutputExistsError(final)
        if clashes:
            raise OutputClashError(clashes)
    problem = space_problem(folder, plan, estimated_file_bytes(cfg))
    if problem:
        raise ConfigError([ConfigProblem("output.output_dir", str(folder), problem + where)])


def latent_disk_dir(cfg: TrainConfig, work_dir: Optional[Path]) -> Path:
    """Where cache_latents_to_disk keeps its files: the host's work folder, else beside the images."""
    return Path(work_dir) / "latent_cache" if work_dir else Path(cfg.data.train_dir.strip()) / ".latent_cache"


def latent_disk_usable(cfg: TrainConfig, work_dir: Optional[Path], callbacks: Callbacks) -> bool:
    """Whether the on-disk latent cache can be written. When it cannot (a read-only dataset folder),
    the run caches in memory and says so: the trained result is the same, only the next run's
    head start is lost, and refusing a whole run over that speed-up is not what a user wants."""
    if not (cfg.data.cache_latents and cfg.data.cache_latents_to_disk):
        return False
    folder = latent_disk_dir(cfg, work_dir)
    problem = folder_problem(folder)
    if problem:
        callbacks.on_warning(f"data.cache_latents_to_disk: {problem}; latents are cached in memory for this "
                             "run only. Make the folder writable (or start the WebUI with --trainer-output-dir "
                             "to keep the cache there) to reuse them next time")
        return False
    return True


class _StoppedWhileCaching(Exception):
    """The user stopped the run while latents were being cached: the training is skipped."""


def cache_latents(dataset: TrainDataset, bundle, cfg: TrainConfig, callbacks: Callbacks,
                  work_dir: Optional[Path] = None, *, disk_ok: bool = True,
                  should_stop: Callable[[], bool] = lambda: False) -> None:
    """Encode every image once. `should_stop` is asked after each batch: a stop raises
    _StoppedWhileCaching (latents already on disk are kept for the next run)."""
    if not (cfg.data.cache_latents and dataset.can_cache_latents):
        return
    disk = latent_disk_dir(cfg, work_dir) if cfg.data.cache_latents_to_disk and disk_ok else None
    callbacks.on_status("Caching latents…")

    def progress(done: int, total: int) -> None:
        if should_stop():
            raise _StoppedWhileCaching()
        if 0 < done < total:
            callbacks.on_status(f"Caching latents… {done}/{total}")

    # the disk cache must never hand latents of another model/VAE to this one
    key = f"{bundle.model_name}|{bundle.model_sha256 or bundle.model_hash}|{bundle.vae_name}"
    with keep_freed_memory_on(bundle.vae_device):  # the VAE's big activations: see cpu_heap.py
        dataset.cache_latents(bundle.encode_latents, batch_size=max(1, cfg.training.train_batch_size), disk_dir=disk,
                              cache_key=key, progress=progress)


def effective_clip_skip(host: Host, cfg: TrainConfig, bundle) -> int:
    """SD2's text encoder view already ends at OpenCLIP's penultimate block (what SD2 was trained
    on), and the WebUI ignores clip skip for SD2: so do we."""
    return 1 if bundle.version == SD2 else host.clip_skip(cfg)


def run_training(cfg: TrainConfig, host: Host, *, callbacks: Optional[Callbacks] = None,
                 commands: Optional[Commands] = None, dist: Optional[Dist] = None) -> TrainResult:
    callbacks = callbacks or Callbacks()
    dist = dist or Dist()
    checked = check_run(cfg, host, num_processes=dist.num_processes)
    data_scan, method, resume = checked.data_scan, checked.method, checked.resume
    if dist.is_main:
        report_dataset(data_scan, callbacks)
        for note in getattr(method, "notes", ()):   # e.g. the rank taken from network.initial_weights
            callbacks.on_status(note)
    out_dir = host.output_dir(method.kind, cfg)
    disk_ok = latent_disk_usable(cfg, host.work_dir(), callbacks if dist.is_main else Callbacks())

    failed = None    # (memory estimate, failed step, allocation error's text) of a run out of memory
    tap = StepTap(callbacks, step=resume.step if resume else 0)
    try:
        with host.exclusive(), host.borrow_bundle(cfg) as bundle:
            callbacks.on_status("Preparing dataset…")
            dataset = build_dataset(cfg, checked.trained_scan)
            # same seed in every process: data-parallel copies must start from identical weights
            torch.manual_seed(cfg.training.seed)
            method.attach(bundle)
            try:
                # one process alone cannot leave early under data parallel: the others would wait for
                # it; there the stop is shared at the start of the loop instead
                can_leave = commands is not None and dist.num_processes == 1
                try:
                    cache_latents(dataset, bundle, cfg, callbacks, host.work_dir(), disk_ok=disk_ok,
                                  should_stop=lambda: can_leave and commands.stop_requested)
                except _StoppedWhileCaching:
                    pass        # the Trainer sees the stop before its first step and writes nothing
                extra = {
                    # kohya counts images x repeats here
                    "num_train_images": dataset.num_train_samples,
                    "num_reg_images": dataset.num_reg_samples,
                    "tag_frequency": dataset.tag_frequency(),
                    "dataset_dirs": dataset.dataset_dirs(),
                }
                trainer = Trainer(cfg, bundle, method, dataset, output_dir=out_dir, callbacks=tap,
                                  commands=commands, dist=dist, clip_skip=effective_clip_skip(host, cfg, bundle),
                                  save_extra=extra, resume=resume, state_facts=state_facts(cfg, data_scan),
                                  validation_scan=checked.validation_scan)
                result = trainer.run()
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                # only the message is kept: the error's traceback holds the failed step's tensors
                failed = (run_estimate(cfg, host, bundle, method, dataset),
                          tap.step + 1 if tap.started else None, str(e))
            finally:
                method.detach()
            if failed is not None:
                # freed before the host takes its model back, so the WebUI can generate again at once;
                # the borrow then ends normally and checks the model is intact
                trainer = None
                free_memory(host.device())
    except Exception as e:
        if failed is not None or not is_out_of_memory(e):
            raise
        # the model's move to the device or the network did not fit: no run to measure yet, the
        # estimate takes SD1.5's shape
        failed = (estimate_peak(cfg, device=host.device(), host_holds_model=not host.model_from_config), None,
                  str(e))
    if failed is not None:
        estimate, step, cause = failed
        device = host.device()
        free_memory(device)
        raise OutOfMemoryTrainingError(cfg, step=step, device=device, estimate=estimate,
                                       available=device_memory(device), cause=cause)
    if dist.is_main and result.output_path is not None:
        if method.kind == "lora":
            write_lora_extras(cfg, data_scan, bundle, result, callbacks,
                              replace=bool(resume) and result.output_path.name in resume.written)
        host.refresh(method.kind, result.output_path)
    return result


class StepTap:
    """The caller's callbacks, every hook passed through, noting whether the loop started and its last
    finished optimizer step (for the out-of-memory message)."""

    def __init__(self, inner: Callbacks, step: int = 0):
        self.inner, self.step, self.started = inner, step, False

    def on_start(self, info: dict) -> None:
        self.started = True
        self.inner.on_start(info)

    def on_step(self, info) -> None:
        self.step = info.step
        self.inner.on_step(info)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def run_estimate(cfg: TrainConfig, host: Host, bundle, method, dataset) -> MemoryEstimate:
    """The memory estimate of this run; a host that lends a model it already holds (the WebUI: not
    model_from_config) adds no frozen weights."""
    return estimate_run(cfg, bundle, method, device=host.device(), host_holds_model=not host.model_from_config,
                        num_images=dataset.num_train_samples + dataset.num_reg_samples)


def write_lora_extras(cfg: TrainConfig, data_scan, bundle, result: TrainResult, callbacks: Callbacks, *,
                      replace: bool = False) -> None:
    """`<name>.json` (trigger words, weight, SD version: what the WebUI's card shows and uses) and
    `<name>.png` (the last preview, else a thumbnail of the training images) beside the LoRA. A user's
    existing files are kept unless overwrite is on; `replace`: they are this run's own (resumed)."""
    overwrite = cfg.output.overwrite or replace
    trigger = cfg.output.trigger_words or ", ".join(dict.fromkeys(s.name for s in data_scan.train_subsets))
    notes = (f"{cfg.network.method} dim {cfg.network.dim} alpha {cfg.network.alpha:g}, {result.steps} steps "
             f"on {bundle.model_name or 'the loaded checkpoint'}")
    writers = [lambda: write_lora_sidecar(result.output_path, activation_text=trigger,
                                          preferred_weight=min(cfg.output.preferred_weight, 2.0),
                                          sd_version="SD2" if bundle.version == SD2 else "SD1", notes=notes,
                                          overwrite=overwrite)]
    # any picture the WebUI would show for this file (<name>.png, .preview.png, .jpg, ...) is the user's
    kept = [] if overwrite else existing_previews(result.output_path)
    if kept:
        callbacks.on_status(f"kept the existing card picture: {kept[0]}")
    else:
        picture, infotext = card_picture(data_scan, result)
        if picture is not None:
            writers.append(lambda: write_preview_png(result.output_path, picture, overwrite=overwrite,
                                                     infotext=infotext))
    for write in writers:
        try:
            write()
        except OutputExistsError as e:
            callbacks.on_status(f"kept the existing file: {e}")


def card_picture(data_scan, result: TrainResult):
    """(image, infotext) for the LoRA's card: the last finite preview with its prompt, else a
    thumbnail of the first training images (no infotext: nothing was generated); (None, None) when
    not one training image loads."""
    if result.previews:
        prompt, image = result.previews[-1]
        return image, prompt
    images = []
    for subset in data_scan.train_subsets:
        for item in subset.items:
            try:
                images.append(load_rgb(item.path))
            except ImageLoadError:
                continue
            if len(images) == 4:
                return dataset_thumbnail(images), None
    return (dataset_thumbnail(images), None) if images else (None, None)


def state_facts(cfg: TrainConfig, data_scan) -> Optional[dict]:
    """What every written training state records besides the tensors: the config and the dataset."""
    if not cfg.output.save_state:
        return None
    files = dataset_files(data_scan)
    return {"config": cfg.to_dict(), "dataset": {"hash": dataset_hash(files), "files": files}}
