"""Running out of memory stops the run cleanly: the network is taken off the model, the model is handed
back bit-identical, nothing half-written, and the user gets a message naming the settings (with their
values) that need less memory and the run's estimated peak against the device's free memory."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import extensions_lib.train.loop as loop
from extensions_lib.config import TrainConfig
from extensions_lib.errors import user_error_types
from extensions_lib.hosts.standalone import StandaloneHost
from extensions_lib.train.events import Callbacks
from extensions_lib.train.memory import GIB, OutOfMemoryTrainingError, estimate_peak, is_out_of_memory
from extensions_lib.train.session import run_training
from extensions_lib.ui.job import TrainingJob

from helpers import accelerate_launch, make_images, on_tiny_checkpoint, quick_config, tiny_bundle

REPO = Path(__file__).resolve().parent.parent
STEP2 = "test_lora-step00000002.safetensors"
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"


def _config(tmp_path: Path, n_images: int = 4, **overrides):
    make_images(tmp_path / "data" / "1_sks", n=n_images)      # batch 1: one optimizer step per image
    return quick_config(tmp_path / "data", tmp_path / "out", "lora", training__max_train_steps=6, **overrides)


def _fail_optimizer_step(monkeypatch, step: int, error: BaseException) -> None:
    """The optimizer's `step`-th step raises `error` before touching a weight (as an allocation of its
    state or update would)."""
    build = loop.build_optimizer

    def failing_build(cfg, groups, device):
        optimizer = build(cfg, groups, device)
        calls = []

        def pre_hook(opt, args, kwargs):
            calls.append(1)
            if len(calls) == step:
                raise error

        optimizer.register_step_pre_hook(pre_hook)
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", failing_build)


def _module_marks(bundle) -> dict:
    """Per module: its class, any instance-level forward and its hooks (what attaching a network changes)."""
    marks = {}
    for root in ("unet", "text_encoder", "vae"):
        for name, m in getattr(bundle, root).named_modules():
            hooks = tuple(len(d) for k, d in sorted(vars(m).items())
                          if k.startswith("_") and "hooks" in k and isinstance(d, dict))
            marks[f"{root}.{name}"] = (type(m), m.__dict__.get("forward"), hooks)
    return marks


def _weights(bundle) -> dict:
    return {f"{root}.{k}": (t, t.detach().clone(), t.dtype, t.requires_grad)
            for root in ("unet", "text_encoder", "vae")
            for k, t in getattr(bundle, root).state_dict(keep_vars=True).items()}


def _assert_unchanged(bundle, weights: dict, marks: dict) -> None:
    now = _weights(bundle)
    assert set(now) == set(weights)
    for k, (obj, copy, dtype, grad) in weights.items():
        t = now[k][0]
        assert t is obj and t.dtype == dtype and t.requires_grad == grad, k
        assert torch.equal(t.detach(), copy), f"{k}: values changed"
    assert _module_marks(bundle) == marks, "a network module, forward or hook stayed on the model"


def _assert_names_the_knobs(text: str, cfg: TrainConfig) -> None:
    assert "ran out of memory" in text
    assert f"data.resolution = {cfg.data.resolution}" in text
    assert f"training.train_batch_size = {cfg.training.train_batch_size}" in text
    assert f"network.dim = {cfg.network.dim}" in text
    assert "training.gradient_checkpointing = off" in text
    assert f"training.optimizer = {cfg.training.optimizer}" in text
    assert f"training.mixed_precision = {cfg.training.mixed_precision}" in text
    assert "Estimated peak of this run:" in text and "free of" in text


@pytest.mark.parametrize("error", [RuntimeError(CUDA_OOM), MemoryError(),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:114] . DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 1073741824 bytes")],
                         ids=["cuda", "memoryerror", "cpu-allocator"])
def test_out_of_memory_at_step_3_stops_cleanly(tmp_path, monkeypatch, error):
    cfg = _config(tmp_path)
    bundle = tiny_bundle()
    weights, marks = _weights(bundle), _module_marks(bundle)
    _fail_optimizer_step(monkeypatch, 3, error)
    with pytest.raises(OutOfMemoryTrainingError) as e:
        run_training(cfg, StandaloneHost(bundle))
    text = str(e.value)
    _assert_names_the_knobs(text, cfg)
    assert "at step 3" in text and e.value.step == 3
    assert isinstance(e.value, user_error_types())          # CLI exit 2, job state "error", no traceback
    assert e.value.__cause__ is None and e.value.__context__ is None    # the failed step's tensors are not kept
    _assert_unchanged(bundle, weights, marks)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing is written"


def test_out_of_memory_in_the_unet_forward_keeps_the_files_saved_before(tmp_path, monkeypatch):
    cfg = _config(tmp_path, output__save_every_n_steps=2, training__train_batch_size=2,
                  training__gradient_checkpointing=True, network__dim=8)
    cfg.training.max_train_steps = 4
    bundle = tiny_bundle()
    weights, marks = _weights(bundle), _module_marks(bundle)
    unet_class, calls = type(bundle.unet), []
    real_forward = unet_class.forward

    def forward(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError()
        return real_forward(self, *a, **k)

    monkeypatch.setattr(unet_class, "forward", forward)
    saved = {}

    class Keep(Callbacks):
        def on_saved(self, path, final):
            saved[Path(path).name] = Path(path).read_bytes()

    with pytest.raises(OutOfMemoryTrainingError) as e:
        run_training(cfg, StandaloneHost(bundle), callbacks=Keep())
    monkeypatch.undo()
    text = str(e.value)
    assert "data.resolution = 64" in text and "training.train_batch_size = 2: lower it" in text
    assert "training.gradient_checkpointing = on" in text and "network.dim = 8" in text
    assert "at step 3" in text
    _assert_unchanged(bundle, weights, marks)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STEP2]     # no final file, no temp file
    assert (tmp_path / "out" / STEP2).read_bytes() == saved[STEP2]


def test_out_of_memory_before_the_first_step_is_reported_too(tmp_path, monkeypatch):
    """Moving the model to the device can be what does not fit: the same message, before any step."""
    import extensions_lib.hosts.standalone as standalone

    cfg = _config(tmp_path)
    bundle = tiny_bundle()
    weights, marks = _weights(bundle), _module_marks(bundle)

    def cast(module, device, dtype):
        raise RuntimeError(CUDA_OOM)

    monkeypatch.setattr(standalone, "_cast", cast)
    with pytest.raises(OutOfMemoryTrainingError) as e:
        run_training(cfg, StandaloneHost(bundle))
    text = str(e.value)
    _assert_names_the_knobs(text, cfg)
    assert "before training began" in text and e.value.step is None
    # nothing measured yet: the estimate takes SD1.5's shape (its frozen weights in fp32)
    assert e.value.estimate.frozen > 3 * GIB
    _assert_unchanged(bundle, weights, marks)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_another_error_is_not_taken_for_out_of_memory(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    bundle = tiny_bundle()
    weights, marks = _weights(bundle), _module_marks(bundle)
    _fail_optimizer_step(monkeypatch, 3, RuntimeError("shape mismatch in the optimizer"))
    with pytest.raises(RuntimeError, match="shape mismatch") as e:
        run_training(cfg, StandaloneHost(bundle))
    assert not isinstance(e.value, OutOfMemoryTrainingError)
    _assert_unchanged(bundle, weights, marks)


def test_the_job_ends_in_error_with_the_message(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    _fail_optimizer_step(monkeypatch, 3, RuntimeError(CUDA_OOM))
    job = TrainingJob()
    job.start(cfg, StandaloneHost(tiny_bundle()))
    assert job.wait(120)
    s = job.status()
    assert s["state"] == "error", s
    _assert_names_the_knobs(s["error"], cfg)
    assert s["message"].startswith("Failed: training ran out of memory at step 3")
    assert "Traceback" not in "\n".join(s["log"])
    assert s["output_path"] == ""


def test_recognises_allocation_errors_only():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError(CUDA_OOM))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes"))
    if hasattr(torch.cuda, "OutOfMemoryError"):
        assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float but found BFloat16"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _sd15_bench_config(resolution: int, precision: str, checkpointing: bool = False) -> TrainConfig:
    """bench/bench_train.py's settings: LoRA rank 16 on UNet + text encoder, batch 1, AdamW."""
    cfg = TrainConfig()
    cfg.data.resolution = resolution
    cfg.network.dim, cfg.network.alpha = 16, 8
    cfg.training.train_batch_size, cfg.training.optimizer = 1, "adamw"
    cfg.training.mixed_precision, cfg.training.gradient_checkpointing = precision, checkpointing
    return cfg


def test_the_estimate_matches_the_measured_sd15_peak_and_moves_with_each_setting():
    cpu = torch.device("cpu")

    def peak(cfg, **kw):
        return estimate_peak(cfg, device=cpu, trainable_params=9_437_184, num_images=8, **kw).total / GIB

    # README, Benchmarks: LoRA, SD1.5 shape, 256 px fp32, peak RSS 5.19-5.22 GiB; 512 px 7.40 GiB
    assert peak(_sd15_bench_config(256, "no")) == pytest.approx(5.2, rel=0.1)
    assert peak(_sd15_bench_config(512, "no")) == pytest.approx(7.4, rel=0.1)
    base = _sd15_bench_config(512, "no")
    assert peak(_sd15_bench_config(512, "bf16")) < peak(base)
    assert peak(_sd15_bench_config(512, "no", checkpointing=True)) < peak(base)
    assert peak(base, host_holds_model=True) < peak(base) - 3.5      # the WebUI's own weights are not added
    batches = []
    for batch in (1, 2, 3):
        cfg = _sd15_bench_config(512, "no")
        cfg.training.train_batch_size = batch
        batches.append(peak(cfg))
    assert batches[1] - batches[0] == pytest.approx(batches[2] - batches[1]) and batches[1] > batches[0] + 2
    # on a GPU the latent cache and the process stay in CPU memory
    gpu = estimate_peak(base, device=torch.device("cuda"), trainable_params=9_437_184, num_images=8)
    assert gpu.latents == 0 and gpu.process == 0


# ------------------------------------------------------------------------------ the WebUI host

def test_the_webui_model_is_bit_identical_after_out_of_memory(tmp_path, monkeypatch):
    fake = str(REPO / "tests" / "fake_webui")
    if fake not in sys.path:
        sys.path.insert(0, fake)
    import fake_sd_model as fsm
    import fake_webui_control as fw
    from modules import call_queue, shared

    from extensions_lib.hosts import a1111 as a1111_mod
    from extensions_lib.model.tiny import tiny_ldm_state_dict
    from extensions_lib.train.events import Commands, MultiCallbacks

    from helpers import TOKENIZER_DIR

    fw.reset(tmp_path / "webui")
    try:
        sd, tok = tiny_ldm_state_dict(TOKENIZER_DIR, seed=0)
        model = fw.load_model(fsm.make_fake_sd_model({k: v.clone() for k, v in sd.items()}, tok))
        before = {k: (t, t.detach().clone()) for k, t in model.state_dict(keep_vars=True).items()}
        modules = {n: (type(m), m.training, m.__dict__.get("forward"), len(m._forward_hooks),
                       len(m._forward_pre_hooks)) for n, m in model.named_modules()}
        cfg = _config(tmp_path, n_images=2)
        cfg.output.output_dir = ""          # the WebUI's Lora folder
        _fail_optimizer_step(monkeypatch, 3, RuntimeError(CUDA_OOM))
        host, commands = a1111_mod.A1111Host(), Commands()
        with pytest.raises(OutOfMemoryTrainingError) as e:
            run_training(cfg, host, callbacks=MultiCallbacks(host.progress(commands)), commands=commands)
        _assert_names_the_knobs(str(e.value), cfg)
        # the WebUI holds the model: training adds no frozen weights to the estimate
        assert e.value.estimate.frozen == 0
        now = model.state_dict(keep_vars=True)
        assert set(now) == set(before)
        for k, (obj, copy) in before.items():
            assert now[k] is obj and torch.equal(now[k].detach(), copy), k
        assert {n: (type(m), m.training, m.__dict__.get("forward"), len(m._forward_hooks),
                    len(m._forward_pre_hooks)) for n, m in model.named_modules()} == modules
        lora_dir = Path(shared.cmd_opts.lora_dir)
        assert not lora_dir.exists() or not list(lora_dir.glob("test_lora*")), "nothing is written"
        assert not call_queue.queue_lock.locked() and not a1111_mod._TRAINING.locked()
    finally:
        fw.reset(tmp_path / "webui")


def _two_processes_with(tmp_path: Path, cfg, patch: str):
    """`python -m extensions_lib train` of `cfg` (on a tiny checkpoint) in 2 data-parallel processes,
    each running the Python `patch` first (it reads RANK to act in one process only)."""
    import textwrap

    on_tiny_checkpoint(cfg, tmp_path).save_toml(tmp_path / "train.toml")
    driver = tmp_path / "driver.py"
    driver.write_text("import os, runpy, sys\n" + textwrap.dedent(patch) + textwrap.dedent("""
        sys.argv = ["extensions_lib", "train", sys.argv[1]]
        runpy.run_module("extensions_lib", run_name="__main__")
    """), encoding="utf-8")
    return accelerate_launch([driver, tmp_path / "train.toml"], tmp_path, timeout=600)


def test_one_data_parallel_process_out_of_memory_stops_both_without_a_hang(tmp_path):
    """Under `accelerate launch` (2 CPU processes over gloo), the second process's forward runs out of
    memory at its second micro-batch: both processes stop with the message (none waits forever in the
    next all-reduce), and no final file is written."""
    r = _two_processes_with(tmp_path, _config(tmp_path), f"""
        import extensions_lib.train.loop as loop
        real, calls = loop.denoising_loss, []
        def loss(*a, **k):
            calls.append(1)
            if os.environ.get("RANK") == "1" and len(calls) == 2:
                raise RuntimeError({CUDA_OOM!r})
            return real(*a, **k)
        loop.denoising_loss = loss
    """)
    assert r.returncode != 0, r.stdout[-2000:]
    assert r.stderr.count("training ran out of memory at step 2") == 2, r.stderr[-4000:]
    assert "Tried to allocate 2.00 GiB" in r.stderr and "another data-parallel process" in r.stderr
    assert not (tmp_path / "out" / "test_lora.safetensors").exists()


def test_a_stop_seen_by_one_data_parallel_process_stops_both_at_the_same_step(tmp_path):
    """Ctrl-C reaches each process at its own moment: here only the second process sees the request,
    after its 2nd step. Both stop after that step (none waits in an all-reduce), the main process saves,
    and the weights are checked identical as at any end."""
    from safetensors import safe_open

    r = _two_processes_with(tmp_path, _config(tmp_path, n_images=8), """
        import extensions_lib.train.events as events
        reads = []
        class Commands(events.Commands):
            @property
            def stop_requested(self):
                # read once before training, then once after each step: true after step 2, on rank 1 only
                reads.append(1)
                return os.environ.get("RANK") == "1" and len(reads) >= 3
        events.Commands = Commands
    """)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    assert "stopped early, saved" in r.stdout
    with safe_open(str(tmp_path / "out" / "test_lora.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "2"
