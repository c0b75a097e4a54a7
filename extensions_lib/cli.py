"""Command line: `python -m extensions_lib train CONFIG.toml [--set section.key=value ...] [--check]`,
`demo`, `ui`, `config` (write a commented default config), `prepare` (raw pictures -> training folder)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import ConfigError, ConfigProblem, TomlWriteError, TrainConfig, standalone_model_problems

PROG = "python -m extensions_lib"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none worth showing (an empty text or list,
    a flag that is off), which would only read as "(default: )"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in ("", [], None, False) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=_HelpFormatter,
                                description="Trainer: train LoRA / LoCon / LoHa / LoKr, embeddings and "
                                            "hypernetworks for Stable Diffusion 1.x/2.x.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", formatter_class=_HelpFormatter, help="train from a TOML config",
                       description="Train from a TOML config (write one with the `config` command). Outside the "
                                   "WebUI the config must name model.checkpoint, and model.tokenizer for a "
                                   "single-file checkpoint.")
    t.add_argument("config", type=Path, help="the TOML config file")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, e.g. --set training.learning_rate=5e-5 or "
                        "--set model.checkpoint=/path/model.safetensors (repeatable)")
    t.add_argument("--resume", type=Path, default=None, metavar="STATE_FOLDER",
                   help="go on from a training state folder (<name>-state, written with output.save_state); "
                        "the same as --set training.resume=STATE_FOLDER")
    t.add_argument("--check", action="store_true",
                   help="check the config, the model paths, the dataset and the output file, print a summary "
                        "(dataset, steps, method, output file), then stop without loading the model")

    d = sub.add_parser("demo", formatter_class=_HelpFormatter,
                       help="train a LoCon on a tiny model and real photos, offline (a minute or two on 2 CPU cores)")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for the demo's files")
    d.add_argument("--steps", type=int, default=200, help="training steps (the numbers printed depend on it)")

    c = sub.add_parser("config", formatter_class=_HelpFormatter,
                       help="write the default config as TOML, every option with its help as a comment")
    c.add_argument("path", type=Path, help="the file to write (an existing file is not replaced)")

    r = sub.add_parser("prepare", formatter_class=_HelpFormatter,
                       help="turn a folder of raw pictures into a training folder <repeats>_<token> <class>/",
                       description="Crop (or keep the aspect of), split and flip raw pictures into a new training "
                                   "folder; the pictures are never changed. Captions from BLIP / DeepBooru and "
                                   "class images need the WebUI: use the tab's Prepare dataset step there.")
    r.add_argument("source", type=Path, help="folder of raw pictures (a .txt beside a picture is its caption)")
    r.add_argument("dataset", type=Path, help="training folder the new subfolder goes into")
    r.add_argument("--token", required=True, help="trigger word, e.g. sks")
    r.add_argument("--class", dest="class_word", default="", help="class word, e.g. dog")
    r.add_argument("--repeats", type=int, default=10, help="repeats per epoch (the folder's number)")
    r.add_argument("--size", default="512", metavar="W[xH]", help="output size, e.g. 512 or 512x768")
    r.add_argument("--mode", default="center", choices=["center", "auto_size", "keep"],
                   help="center: crop the middle; auto_size: best size for the aspect; keep: keep the aspect")
    r.add_argument("--split", action="store_true", help="cut images much longer than the target into tiles")
    r.add_argument("--flip", action="store_true", help="also write a mirrored copy of every image")
    r.add_argument("--existing-captions", default="keep", choices=["keep", "ignore"],
                   help="copy the captions beside the pictures (keep) or leave them out (ignore)")
    r.add_argument("--no-trigger-first", action="store_true",
                   help="do not put the trigger word first in the copied captions")

    u = sub.add_parser("ui", formatter_class=_HelpFormatter,
                       help="serve the Trainer tab standalone on a checkpoint file")
    u.add_argument("--checkpoint", default="",
                   help="checkpoint file or diffusers folder ('tiny' = a tiny random model); "
                        "empty: enter it in the tab's Model section")
    u.add_argument("--tokenizer", default="",
                   help="tokenizer folder (vocab.json + merges.txt); needed for a single-file checkpoint")
    u.add_argument("--output-root", default="output",
                   help="where results go when a config leaves output.output_dir empty")
    u.add_argument("--port", type=int, default=7861, help="port of the web server")
    u.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 for every interface: then --auth or --auth-file is "
                        "required, or --insecure)")
    u.add_argument("--auth", action="append", default=[], metavar="USER:PASSWORD",
                   help="ask for this login on the page and on the REST API (HTTP Basic); several as "
                        "u1:p1,u2:p2 or by repeating the option")
    u.add_argument("--auth-file", default="",
                   help="file of USER:PASSWORD entries (separated by commas or newlines), as --auth; keeps "
                        "passwords out of the process list")
    u.add_argument("--insecure", action="store_true",
                   help="serve on an address other computers can reach without any login (anyone who reaches "
                        "the port can start trainings and read folders on this machine)")
    return p


def load_config(path: Path, overrides: list[str]) -> TrainConfig:
    cfg = TrainConfig.from_toml(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([ConfigProblem("--set", item, "use SECTION.KEY=VALUE, e.g. "
                                                            "training.learning_rate=1e-4")])
        key, value = item.split("=", 1)
        cfg.set(key.strip(), value.strip())
    return cfg


def cmd_train(args) -> int:
    from .config.toml_io import ConfigFileError
    from .errors import user_error_types

    try:
        cfg = load_config(args.config, args.set)
        if args.resume is not None:
            cfg.training.resume = str(args.resume)
        # the standalone model paths are checked with the rest, before anything is loaded
        problems = cfg.validate() + standalone_model_problems(cfg)
        if problems:
            raise ConfigError(problems)
        if args.check:
            for line in check_summary(cfg, args.config):
                print(line)
            return 0
        return _train(cfg)
    except user_error_types() + (ConfigFileError,) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _train(cfg: TrainConfig) -> int:
    from .hosts.standalone import StandaloneHost
    from .train.console import ConsoleProgress
    from .train.events import Commands
    from .train.loop import Dist
    from .train.session import run_training

    dist = Dist.from_accelerate()
    commands = Commands()
    _stop_on_signals(commands)
    result = run_training(cfg, StandaloneHost(device=str(_device(dist))), callbacks=ConsoleProgress(dist.is_main),
                          commands=commands, dist=dist)
    dist.finish()
    if dist.is_main:
        if result.output_path is None:
            print("stopped before the first step: nothing was trained, no file was written")
        else:
            state = "stopped early, saved" if result.stopped else "done"
            print(f"{state}: {result.output_path}  ({result.steps} steps)  use it as {result.prompt_usage}")
    return 0


def check_summary(cfg: TrainConfig, config_path: Path) -> list[str]:
    """Every check a run makes before loading the model (the same function the run calls), then what
    the run would do, as lines for a person to read."""
    from .hosts.standalone import StandaloneHost
    from .train.loop import plan_steps
    from .train.session import build_dataset, check_before_model

    host = StandaloneHost()
    data_scan, method = check_before_model(cfg, host)
    dataset = build_dataset(cfg, data_scan)
    per_epoch, total, epochs = plan_steps(cfg, dataset.steps_per_epoch())
    output = method.file_path(host.output_dir(method.kind, cfg), cfg.output_name).resolve()
    m, t = cfg.model, cfg.training
    lines = [f"config:    {config_path}",
             f"method:    {_describe_method(cfg)}",
             f"model:     {m.checkpoint}" + (f"  (tokenizer {m.tokenizer})" if m.tokenizer else "")
             + (f"  (vae {m.vae})" if m.vae else ""),
             f"dataset:   {cfg.data.train_dir}"
             + (f"  (regularization {cfg.data.reg_dir})" if cfg.data.reg_dir else "")]
    lines += ["  " + row for row in _table(data_scan.summary())]
    report = data_scan.report(limit=len(data_scan.problems))
    lines += ["  " + report[0]] + ["  " + line for line in report[1:]]
    lines += [f"steps:     {per_epoch} per epoch x {epochs} epoch(s) = {total} steps "
              f"(batch {t.train_batch_size}, gradient accumulation {t.gradient_accumulation_steps}"
              + (", stops at training.max_train_steps" if t.max_train_steps else "") + ")",
              f"training:  {t.optimizer}, learning rate {t.learning_rate:g}, {t.lr_scheduler} schedule, "
              f"mixed precision {t.mixed_precision}, seed {t.seed}",
              f"output:    {output}",
              f"memory:    {_peak(cfg, host, dataset)}",
              "config OK: nothing was loaded or written; run the same command without --check to train"]
    return lines


def _peak(cfg: TrainConfig, host, dataset) -> str:
    from .train.memory import estimate_note

    return estimate_note(cfg, device=host.device(), host_holds_model=False, num_images=dataset.num_train_samples)


def _describe_method(cfg: TrainConfig) -> str:
    n = cfg.network
    if cfg.is_lora_family:
        parts = [f"dim {n.dim}, alpha {n.alpha:g}"]
        if n.method != "lora" and n.conv_dim:
            parts.append(f"conv dim {n.conv_dim}, alpha {n.conv_alpha:g}")
        trained = [name for on, name in ((n.train_unet, "UNet"), (n.train_text_encoder, "text encoder")) if on]
        parts.append(" + ".join(trained))
        return f"{n.method} ({'; '.join(parts)})"
    if n.method == "embedding":
        e = cfg.embedding
        source = "the dataset captions" if e.prompt_source == "captions" else f"template {e.template}"
        return f"embedding '{e.token}' ({e.num_vectors} vector(s) from '{e.init_text}', prompts from {source})"
    h = cfg.hypernetwork
    return f"hypernetwork (layers {h.layer_structure}, {h.activation}, sizes {h.sizes})"


def _table(rows: list[dict]) -> list[str]:
    cols = ["folder", "repeats", "images", "captions missing", "unreadable", "captions without image"]
    cells = [cols] + [[r["folder"] + (" (reg)" if r["kind"] != "training" else "")] + [str(r[c]) for c in cols[1:]]
                      for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]


def _device(dist):
    from accelerate import PartialState

    device = PartialState().device
    # accelerate numbers CPU "devices" per process (cpu:1); torch has one CPU device
    return "cpu" if device.type == "cpu" else device


def _stop_on_signals(commands) -> None:
    """First Ctrl-C or SIGTERM (what `kill`, systemd and container runtimes send): finish the current
    step, save and exit as after a normal stop; a second one aborts without saving."""
    def handler(signum, frame):
        if commands.stop_requested:
            raise KeyboardInterrupt
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step and saving ({name} again to abort without saving)…",
              file=sys.stderr, flush=True)
        commands.request_stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def cmd_config(args) -> int:
    if args.path.exists():
        print(f"error: {args.path} exists; choose another path", file=sys.stderr)
        return 2
    from .config import commented_toml

    try:
        text = commented_toml(TrainConfig())
    except TomlWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.path.write_text(text, encoding="utf-8")
    print(f"wrote {args.path}")
    return 0


def cmd_prepare(args) -> int:
    from .errors import user_error_types
    from .hosts.standalone import StandaloneHost
    from .prepare.images import PrepareError
    from .prepare.run import PrepareRequest, run_prepare

    try:
        width, _, height = args.size.lower().partition("x")
        if not width.isdigit() or (height and not height.isdigit()):
            raise PrepareError(f"--size {args.size}: give a size like 512 or 512x768")
        req = PrepareRequest(source_dir=str(args.source), dataset_dir=str(args.dataset), token=args.token,
                             class_word=args.class_word, repeats=args.repeats, width=int(width),
                             height=int(height or width), mode=args.mode, split_oversized=args.split,
                             flip=args.flip, existing_captions=args.existing_captions,
                             trigger_word_first=not args.no_trigger_first)
        report = run_prepare(req, StandaloneHost(), on_status=lambda text: None)
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"train on it with data.train_dir = {str(args.dataset)!r}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.out, steps=args.steps)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "prepare":
        return cmd_prepare(args)
    if args.command == "ui":
        from .ui.standalone import serve

        return serve(args)
    return 2
