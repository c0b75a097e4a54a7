"""The one training loop. It knows a Method, never which one.

Read top to bottom: set up optimizer/schedule/conditioning, then for each epoch and batch:
latents -> noise -> UNet -> loss -> backward -> (all-reduce) -> clip -> step, with events, saving
and previews at their intervals, and a stop request honoured after every optimizer step.
A NaN/inf loss or gradient ends the run with NonFiniteLossError before the optimizer sees it, and
weights holding a NaN/inf are never written.
"""
from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import ConfigError, ConfigProblem, TrainConfig
from ..methods.base import Method, SaveInfo
from .cpu_fast_paths import cpu_fast_paths
from .events import Callbacks, Commands, NonFiniteLossError, StepInfo, TrainResult
from .memory import DataParallelOutOfMemory, is_out_of_memory
from .objective import denoising_loss, sample_noise, sample_timesteps, target_for
from .optimizers import build_optimizer, build_scheduler, warmup_steps
from .preview import non_finite_message, parse_prompt_line, sample_images
from .resume import ResumeState, capture_rng, load_into, restore_rng, state_dir, write_state
from .spill import SpillWatch
from .text import TextConditioner
from .validation import Validation, fixed_step, untouched_rng


# what fails a step, by precedence (Dist.highest): a process out of memory, a NaN/inf loss
NON_FINITE, OOM = 1, 2


@dataclass
class Dist:
    """Process layout: one process inside the WebUI, N under `accelerate launch`."""
    num_processes: int = 1
    process_index: int = 0

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @classmethod
    def from_accelerate(cls) -> "Dist":
        from accelerate import PartialState

        s = PartialState()
        return cls(s.num_processes, s.process_index)

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        if self.num_processes == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_objects(self, obj) -> list:
        """`obj` of every process, by process index, on every process (small picklable values)."""
        if self.num_processes == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.num_processes
        dist.all_gather_object(out, obj)
        return out

    def highest(self, codes: list[int], device: torch.device) -> list[int]:
        """Each of `codes` as its highest value over every process, on every process: one all-reduce
        makes a step's decisions (stop after it, or fail with NON_FINITE / OOM) the same everywhere,
        whichever process met the problem or got the signal."""
        if self.num_processes == 1:
            return list(codes)
        import torch.distributed as dist

        t = torch.tensor(codes, dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(x) for x in t.tolist()]

    def any_process(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on any: a stop decided alone would leave the
        others waiting forever in the next all-reduce."""
        return bool(self.highest([int(flag)], device)[0])

    def finish(self) -> None:
        """Wait until every process is done (the main one may still be writing files), then close the
        process group: a process that leaves while its peers still hold the group can abort at exit."""
        if self.num_processes == 1:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def assert_in_sync(self, params: list[torch.Tensor]) -> None:
        """Every process must hold bit-identical weights (they start equal and apply the same
        averaged gradients); a mismatch means a silent data-parallel bug, so fail loudly."""
        if self.num_processes == 1:
            return
        import torch.distributed as dist

        # the main process's bytes, sent to all: any differing bit in any tensor is found
        mine = torch.cat([p.detach().reshape(-1).contiguous().view(torch.uint8) for p in params])
        main = mine.clone()
        dist.broadcast(main, src=0)
        differs = torch.tensor([0 if torch.equal(main, mine) else 1], dtype=torch.int64, device=mine.device)
        dist.all_reduce(differs, op=dist.ReduceOp.MAX)
        if differs.item():
            raise RuntimeError("data-parallel processes diverged: the trained weights are not bit-identical "
                               "across processes")


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    mp = cfg.training.mixed_precision
    if mp == "no":
        return None
    if mp == "fp16" and device.type != "cuda":
        raise ConfigError([ConfigProblem("training.mixed_precision", mp,
                                         "fp16 needs a CUDA GPU; on this device use bf16 or no")])
    return torch.float16 if mp == "fp16" else torch.bfloat16


def all_finite(tensors) -> bool:
    """Whether no tensor holds a NaN or inf (amax keeps a NaN; one sync for all of them)."""
    peaks = [t.detach().abs().amax().float() for t in tensors if t is not None and t.numel()]
    return not peaks or bool(torch.isfinite(torch.stack(peaks)).all())


def plan_steps(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, epochs)."""
    per_epoch = max(1, math.ceil(batches_per_epoch / cfg.training.gradient_accumulation_steps))
    t = cfg.training
    total = t.max_train_steps or per_epoch * t.max_train_epochs
    return per_epoch, total, math.ceil(total / per_epoch)


class Trainer:
    def __init__(self, cfg: TrainConfig, bundle, method: Method, dataset, *, output_dir: Path,
                 callbacks: Optional[Callbacks] = None, commands: Optional[Commands] = None,
                 dist: Optional[Dist] = None, clip_skip: int = 1, save_extra: Optional[dict] = None,
                 path_for: Optional[Callable] = None, resume: Optional[ResumeState] = None,
                 state_facts: Optional[dict] = None, validation_scan=None):
        self.cfg, self.bundle, self.method, self.dataset = cfg, bundle, method, dataset
        self.output_dir = Path(output_dir)
        self.cb = callbacks or Callbacks()
        self.commands = commands or Commands()
        self.dist = dist or Dist()
        self.clip_skip = clip_skip
        self.save_extra = save_extra or {}
        self.path_for = path_for
        # resume: where to go on from; state_facts: the config and dataset a written state records
        self.resume, self.state_facts = resume, state_facts
        self._own_files = set(resume.written) if resume else set()
        self.device = next(bundle.unet.parameters()).device
        self.autocast = autocast_dtype(cfg, self.device)
        self.started_at = time.time()
        self.saved: list[Path] = []
        self.previews: list = []
        self._last_preview_step = -1
        self.planned_epochs = self.total_steps = None    # set by run() from the dataset and the limits
        # the held-out images (a DatasetScan, from validation_scans); their Validation is set up by run()
        self.validation_scan = validation_scan
        self.validation: Optional[Validation] = None
        self.best_loss = math.inf      # the lowest validation loss, for output.keep_best_validation

    # -- pieces -----------------------------------------------------------------------------
    def _conditioner(self) -> TextConditioner:
        static = getattr(self.dataset, "captions_are_static", False)
        return TextConditioner(self.bundle.tokenizer, self.bundle.text_encoder,
                               max_token_length=self.cfg.data.max_token_length, clip_skip=self.clip_skip,
                               cache=static and not self.method.trains_text_encoder)

    def _latents(self, batch) -> torch.Tensor:
        if batch.latents is not None:
            return batch.latents.to(self.device)
        vae = self.bundle.vae
        with torch.no_grad():
            px = batch.pixels.to(self.device, dtype=next(vae.parameters()).dtype)
            return vae.encode(px).latent_dist.sample().float() * self.bundle.vae_scale_factor

    def _non_finite(self, step: int, what: str, **kw) -> NonFiniteLossError:
        t = self.cfg.training
        rates = [f"training.learning_rate = {t.learning_rate:g}"]
        rates += [f"training.{name} = {value:g}" for name, value in
                  (("unet_lr", t.unet_lr), ("text_encoder_lr", t.text_encoder_lr)) if value >= 0]
        return NonFiniteLossError(step, what, learning_rates=", ".join(rates),
                                  mixed_precision=t.mixed_precision, **kw)

    def _save(self, *, step: int, epoch: int, final: bool, label: dict) -> Optional[Path]:
        path = self.method.file_path(self.output_dir, self.cfg.output_name, **label)
        # belt and braces behind the loss/gradient checks (an optimizer step can still overflow
        # finite weights). Every process checks: their weights are bit-identical, so all stop together
        if not all_finite(self.method.trainable_parameters()):
            raise self._non_finite(step, "trained weights", detail=f"{path.name} was not written")
        if not self.dist.is_main:
            return None
        info = SaveInfo(step=step, epoch=epoch, final=final, started_at=self.started_at,
                        finished_at=time.time() if final else None,
                        extra=dict(self.save_extra, warmup_steps=self.warmup, clip_skip=self.clip_skip,
                                   num_epochs=self.planned_epochs, total_steps=self.total_steps,
                                   validation_loss=self.validation.last if self.validation else None))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # a resumed run replaces its own earlier files (the final file written when it was stopped)
        self.method.save(path, info, overwrite=self.cfg.output.overwrite or path.name in self._own_files)
        self._own_files.add(path.name)
        if path not in self.saved:      # <name>-best is written again each time it improves
            self.saved.append(path)
        self.cb.on_saved(path, final)
        return path

    def _save_requested(self, *, step: int, epoch: int) -> None:
        """Save now: a step file like the periodic ones. A file of that name left by an earlier run
        (overwrite off) is reported and kept; the run goes on."""
        from ..export.atomic import OutputExistsError

        try:
            self._save(step=step, epoch=epoch, final=False, label={"step": step})
        except OutputExistsError as e:
            self.cb.on_warning(f"Save now at step {step}: {e}")

    def _snapshot(self, *, step: int, epoch: int, batches_done: int, gen: torch.Generator, optimizer,
                  lr_schedule, losses: list[float]) -> Optional[dict]:
        """What a state holds at this point (RNGs as they are now); None when states are off."""
        if not (self.cfg.output.save_state and self.state_facts is not None):
            return None
        tensors, plain = capture_rng(gen, self.method)
        if self.dist.num_processes > 1:
            # each process draws its own noise, dropout and data: the state keeps every process's generators
            everyone = self.dist.gather_objects((tensors, plain))
            tensors = dict(tensors, rng_ranks=[t for t, _ in everyone])
            plain = dict(plain, rng_ranks=[p for _, p in everyone], num_processes=self.dist.num_processes)
        if not self.dist.is_main:
            return None
        tensors.update(optimizer=optimizer.state_dict(), scheduler=lr_schedule.state_dict())
        return {"tensors": tensors, "info": dict(plain, step=step, epoch=epoch, batches_done=batches_done,
                                                 losses=losses[-1000:], model=self._model_identity())}

    def _model_identity(self) -> dict:
        b = self.bundle
        return {"name": b.model_name or "", "hash": b.model_sha256 or b.model_hash or ""}

    def _write_state(self, snapshot: Optional[dict], params: list[torch.Tensor]) -> None:
        if snapshot is None:
            return
        if not all_finite(params):
            return    # _save refuses these weights with the reason; never keep them as a state
        info = dict(snapshot["info"], written=sorted(self._own_files))
        if self.validation:    # a stopped run measures once more after its snapshot: that point is kept too
            info["val_losses"] = [[s, v] for s, v in self.validation.losses if s <= info["step"]][-1000:]
            if math.isfinite(self.best_loss):
                info["best_val_loss"] = self.best_loss
        folder = state_dir(self.output_dir, self.cfg.output_name)
        self.cb.on_status(f"Saving the training state to {folder}…")
        write_state(folder, params=params, tensors=snapshot["tensors"], info=info,
                    config=self.state_facts["config"], dataset=self.state_facts["dataset"],
                    keep_last=self.cfg.output.keep_last_n_states)
        self.cb.on_status(f"training state saved: {folder} (step {info['step']})")

    def _preview(self, step: int) -> None:
        s = self.cfg.sample
        if not s.prompts or not self.dist.is_main:
            return
        if step == self._last_preview_step:
            return
        self._last_preview_step = step
        self.cb.on_status(f"Sampling {len(s.prompts)} preview(s)…")
        self.method.train_mode(False)
        problems: list = []
        images = sample_images(self.bundle, list(s.prompts), negative=s.negative_prompt, steps=s.steps,
                               cfg_scale=s.cfg_scale, width=s.width, height=s.height, seed=s.seed,
                               clip_skip=self.clip_skip, max_token_length=self.cfg.data.max_token_length,
                               autocast_dtype=self.autocast, problems=problems)
        self.method.train_mode(True)
        for index, where in problems:
            self.cb.on_warning(non_finite_message(s.prompts[index], where, step))
        # a NaN preview is not shown, not kept for the card picture, and does not stand in for a newer one
        # captions show the prompt without its --w/--s/... options
        pairs = [(parse_prompt_line(prompt).prompt, image) for prompt, image in zip(s.prompts, images)
                 if image is not None]
        self.previews = pairs
        if pairs:
            self.cb.on_sample(pairs, step)

    def _setup_validation(self) -> None:
        """The validation images as a dataset, their latents cached, and (resumed) the losses measured
        before; the training dataset has left them out already."""
        if self.validation_scan is None:
            return
        self.validation = Validation(self.cfg, self.bundle, self.dataset, self.validation_scan,
                                     clip_skip=self.clip_skip, autocast_dtype=self.autocast)
        if self.resume:
            self.validation.losses = [(int(s), float(v)) for s, v in self.resume.info.get("val_losses", [])]
            self.best_loss = float(self.resume.info.get("best_val_loss", math.inf))
        self.cb.on_status(f"validation: {self.validation.num_images} held-out image(s), "
                          f"{self.dataset.num_train_samples} training samples per epoch")
        if self.dist.is_main:
            self.validation.cache_latents()

    def _validate(self, step: int, epoch: int) -> None:
        v = self.validation
        if v is None or not self.dist.is_main or (v.losses and v.losses[-1][0] == step):
            return
        loss = v.measure(self.method, step)
        self.cb.on_validation(step, loss)
        self.cb.on_status(f"validation loss at step {step}: {loss:.5g}")
        if self.cfg.output.keep_best_validation and math.isfinite(loss) and loss < self.best_loss:
            # <name>-best: replaced each time the loss improves; its metadata holds this loss and step
            self.best_loss = loss
            self._save(step=step, epoch=epoch, final=False, label={"best": True})
            self.cb.on_status(f"lowest validation loss so far, {loss:.5g} at step {step}: kept as <name>-best")

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.dist.any_process(self.commands.stop_requested, self.device):
            return self._stopped_before_training()
        cfg, t = self.cfg, self.cfg.training
        bundle, method = self.bundle, self.method
        scheduler = bundle.noise_scheduler
        groups = method.param_groups()
        params = [p for g in groups for p in g["params"]]
        if not params:
            raise ConfigError([ConfigProblem("network.method", cfg.network.method,
                                             "nothing to train: every learning rate of its parts is 0")])
        optimizer = build_optimizer(cfg, groups, self.device)
        self._setup_validation()
        batches_per_epoch = self.dataset.steps_per_epoch(self.dist.num_processes)
        per_epoch, total_steps, epochs = plan_steps(cfg, batches_per_epoch)
        self.planned_epochs, self.total_steps = epochs, total_steps
        self.warmup = warmup_steps(cfg, total_steps)
        lr_schedule = build_scheduler(cfg, optimizer, total_steps)
        start_epoch, start_batch, step, losses = 1, 0, 0, []
        if self.resume:
            self.resume.load_tensors()
            load_into(self.resume, params, optimizer, lr_schedule)
            start_epoch, start_batch, step = self.resume.epoch, self.resume.batches_done, self.resume.step
            losses = [float(x) for x in self.resume.info.get("losses", [])]
        cond = self._conditioner()
        accum = t.gradient_accumulation_steps
        gen = torch.Generator().manual_seed(t.seed + 7919 * self.dist.process_index)
        scaler = torch.cuda.amp.GradScaler() if self.autocast == torch.float16 else None

        checkpointing = self._set_checkpointing(t.gradient_checkpointing)
        method.train_mode(True)
        self.cb.on_start({"total_steps": total_steps, "epochs": epochs, "steps_per_epoch": per_epoch,
                          "trainable_params": sum(p.numel() for p in params)})
        if cfg.sample.sample_at_first and step == 0:
            # before the first step, and before a resume restores the generators below
            with untouched_rng(self.device):
                self._preview(0)
        stopped, first_step, epoch = False, step, start_epoch
        recent: list[float] = []
        snapshot = None
        if self.resume:
            # last, so nothing above draws from the restored generators
            restore_rng(self.resume, gen, method, rank=self.dist.process_index)
            was, now = self.resume.info.get("model") or {}, self._model_identity()
            if was.get("hash") and now["hash"] and was["hash"] != now["hash"]:
                # the WebUI's model is not part of the config: say so rather than refuse a renamed file
                self.cb.on_warning(f"the training state was saved on model {was.get('name') or was['hash']}, "
                                   f"this run uses {now['name'] or now['hash']}: the result will not match "
                                   "an uninterrupted run")
            self.cb.on_status(f"resuming at step {step}, epoch {start_epoch}, after batch {start_batch} of it")
        t0 = time.time()
        spill, step_began = SpillWatch.for_device(self.device), None
        fast_paths = ExitStack()
        fast_paths.enter_context(cpu_fast_paths(bundle.unet, self.device, bool(t.gradient_checkpointing),
                                                adapters=method.adapter_modules()))
        try:
            for epoch in range(start_epoch, max(epochs, start_epoch) + 1):
                if step >= total_steps:
                    break
                batches = self.dataset.epoch_batches(epoch - 1, num_shards=self.dist.num_processes,
                                                     shard_index=self.dist.process_index)
                first = start_batch if epoch == start_epoch else 0
                micro = first    # a state is taken at an optimizer step: a whole number of accumulations
                for i in range(first, len(batches)):
                    batch = batches[i]
                    step_began = step_began or time.time()    # the step's own time: no saves or previews
                    oom = None
                    try:
                        latents = self._latents(batch)
                        captions = [method.caption(c) for c in batch.captions]
                        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                            ctx = cond(captions)
                            noise = sample_noise(latents, t.noise_offset, gen)
                            ts = sample_timesteps(latents.shape[0], scheduler, gen, self.device)
                            noisy = scheduler.add_noise(latents, noise, ts)
                            pred = bundle.unet(noisy, ts, ctx.to(self.device)).sample
                        weights = torch.where(batch.is_reg, cfg.data.prior_loss_weight, 1.0)
                        loss = denoising_loss(pred, target_for(scheduler, latents, noise, ts), scheduler=scheduler,
                                              timesteps=ts, min_snr_gamma=t.min_snr_gamma, sample_weights=weights)
                        # a NaN/inf loss is never back-propagated: straight to the step's stop decision
                        loss_value = float(loss.detach())
                        bad_loss = not math.isfinite(loss_value)
                        if not bad_loss:
                            scaled = loss / accum
                            (scaler.scale(scaled) if scaler else scaled).backward()
                    except Exception as e:  # noqa: BLE001 - only an allocation failure is kept
                        # alone, a process out of memory would leave its peers waiting in the next
                        # all-reduce forever: it goes to the shared stop decision instead
                        if self.dist.num_processes == 1 or not is_out_of_memory(e):
                            raise
                        oom, loss_value, bad_loss = str(e), float("nan"), True
                    recent.append(loss_value)
                    micro += 1
                    if not bad_loss and micro % accum and i != len(batches) - 1:
                        continue
                    failure, = self.dist.highest([OOM if oom else NON_FINITE if bad_loss else 0], self.device)
                    if failure == OOM:
                        raise DataParallelOutOfMemory(oom or "another data-parallel process ran out of memory")
                    if failure == NON_FINITE:
                        raise self._non_finite(step + 1, "loss")
                    self.dist.average_gradients(params)
                    if scaler:
                        scaler.unscale_(optimizer)
                    # fp16's GradScaler skips steps with inf gradients by design and lowers its scale;
                    # without it a NaN/inf gradient would poison the weights. Averaged gradients are
                    # identical everywhere, the flag is still shared so no process can decide alone
                    elif self.dist.any_process(not all_finite(p.grad for p in params), self.device):
                        raise self._non_finite(step + 1, "gradients")
                    if t.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    lr_schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    step_loss = sum(recent) / len(recent)
                    recent = []
                    losses.append(step_loss)
                    elapsed = time.time() - t0
                    slow = spill.observe(time.time() - step_began) if spill else None
                    if slow:
                        self.cb.on_warning(slow)
                    step_began = None
                    window = losses[-50:]
                    self.cb.on_step(StepInfo(step=step, total_steps=total_steps, epoch=epoch, total_epochs=epochs,
                                             loss=step_loss, avg_loss=sum(window) / len(window),
                                             lr=optimizer.param_groups[-1]["lr"],
                                             it_per_s=(step - first_step) / elapsed,
                                             eta_s=elapsed / (step - first_step) * (total_steps - step)))
                    here = dict(step=step, epoch=epoch, batches_done=i + 1, gen=gen, optimizer=optimizer,
                                lr_schedule=lr_schedule, losses=losses)
                    # shared: a signal reaches each process at its own moment, and a process leaving the
                    # loop alone would leave the others waiting in the next all-reduce
                    if self.dist.any_process(self.commands.stop_requested, self.device):
                        stopped = True
                        snapshot = self._snapshot(**here)
                        break
                    if step >= total_steps:
                        snapshot = self._snapshot(**here)
                        break
                    # requests are taken every step, so one pressed at a periodic step is not left
                    # pending for the next one; the requested save or preview is the periodic kind
                    save_now, sample_now = self.commands.take_save(), self.commands.take_sample()
                    s_o = cfg.output.save_every_n_steps
                    step_save = bool(s_o and step % s_o == 0)
                    if step_save:
                        self._save(step=step, epoch=epoch, final=False, label={"step": step})
                    elif save_now:
                        self._save_requested(step=step, epoch=epoch)
                    if self.validation and fixed_step(cfg, step, epoch_end=False):
                        self._validate(step, epoch)    # before the save, so the file records it
                    if (cfg.sample.every_n_steps and step % cfg.sample.every_n_steps == 0) or sample_now:
                        self._preview(step)
                    if step_save:    # after the preview: a resumed run goes on from here
                        self._write_state(self._snapshot(**here), params)
                if stopped or step >= total_steps:
                    break
                if self.validation and fixed_step(cfg, step, epoch_end=True):
                    self._validate(step, epoch)
                epoch_save = bool(cfg.output.save_every_n_epochs and epoch % cfg.output.save_every_n_epochs == 0)
                if epoch_save:
                    self._save(step=step, epoch=epoch, final=False, label={"epoch": epoch})
                if cfg.sample.every_n_epochs and epoch % cfg.sample.every_n_epochs == 0:
                    self._preview(step)
                if epoch_save:    # the next epoch from its start
                    self._write_state(self._snapshot(step=step, epoch=epoch + 1, batches_done=0, gen=gen,
                                                     optimizer=optimizer, lr_schedule=lr_schedule, losses=losses),
                                      params)
            self.dist.assert_in_sync(params)
            # the final file also holds what was learned when the user pressed stop
            self._validate(step, epoch)
            self._preview(step)
            final = self._save(step=step, epoch=epoch, final=True, label={})
            # the state as it was when the loop ended (before the final preview drew any randomness)
            self._write_state(snapshot, params)
        finally:
            method.train_mode(False)
            fast_paths.close()
            self._set_checkpointing(checkpointing, restore=True)
        result = TrainResult(output_path=final, steps=step, epochs=epoch, stopped=stopped, saved=list(self.saved),
                             losses=losses, prompt_usage=method.prompt_usage(cfg.output_name),
                             previews=self.previews,
                             val_losses=list(self.validation.losses) if self.validation else [])
        self.cb.on_end(result)
        return result

    def _stopped_before_training(self) -> TrainResult:
        """A stop that came before the first step (while the model was lent or latents cached): nothing
        was learned, so nothing is written: no file under the final name, no state."""
        step = self.resume.step if self.resume else 0
        self.cb.on_status("stopped before the first step: nothing was trained, no file was written")
        result = TrainResult(output_path=None, steps=step, epochs=0, stopped=True)
        self.cb.on_end(result)
        return result

    def _set_checkpointing(self, on, restore: bool = False):
        """Gradient checkpointing on the view modules (diffusers only checkpoints in train mode)."""
        unet, te = self.bundle.unet, self.bundle.text_encoder
        if restore:
            if on:
                unet.disable_gradient_checkpointing()
                te.gradient_checkpointing_disable()
                unet.eval()
                te.eval()
            return on
        if on:
            unet.enable_gradient_checkpointing()
            unet.train()
            if self.method.trains_text_encoder:
                te.gradient_checkpointing_enable()
                te.train()
        return on
