"""Command line: `python -m extensions_lib train CONFIG.toml [--set section.key=value ...]`, `demo`,
`ui`, `config` (write a commented default config)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m extensions_lib", description="Train LoRA / LoCon / LoHa / LoKr, "
                                "embeddings and hypernetworks for Stable Diffusion 1.x/2.x.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a TOML config")
    t.add_argument("config", type=Path)
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one option, e.g. --set training.learning_rate=5e-5 (repeatable)")
    t.add_argument("--check", action="store_true", help="validate the config and the dataset, then stop")
    d = sub.add_parser("demo", help="train a tiny model on real photos in about a minute (no downloads)")
    d.add_argument("--out", type=Path, default=Path("demo_out"))
    d.add_argument("--seconds", type=float, default=60.0, help="rough training time budget")
    c = sub.add_parser("config", help="write the default config as TOML")
    c.add_argument("path", type=Path)
    u = sub.add_parser("ui", help="serve the Train tab standalone on a checkpoint file")
    u.add_argument("--checkpoint", default="", help="checkpoint file or diffusers folder ('tiny' = a tiny random model)")
    u.add_argument("--tokenizer", default="", help="tokenizer folder (vocab.json + merges.txt)")
    u.add_argument("--output-root", default="output")
    u.add_argument("--port", type=int, default=7861)
    u.add_argument("--host", default="127.0.0.1")
    return p


def load_config(path: Path, overrides: list[str]) -> TrainConfig:
    cfg = TrainConfig.from_toml(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError([_problem(item)])
        key, value = item.split("=", 1)
        cfg.set(key.strip(), value.strip())
    return cfg


def _problem(item: str):
    from .config import ConfigProblem

    return ConfigProblem("--set", item, "use SECTION.KEY=VALUE, e.g. training.learning_rate=1e-4")


def cmd_train(args) -> int:
    from .errors import user_error_types
    from .hosts.standalone import StandaloneHost
    from .train.console import ConsoleProgress
    from .train.events import Commands
    from .train.loop import Dist
    from .train.session import run_training, scan

    try:
        cfg = load_config(args.config, args.set)
        problems = cfg.validate()
        if problems:
            raise ConfigError(problems)
        if args.check:
            data = scan(cfg)
            for row in data.summary():
                print(row)
            for line in data.report(limit=len(data.problems)):
                print(line)
            print("config OK")
            return 0
        dist = Dist.from_accelerate()
        commands = Commands()
        _stop_on_ctrl_c(commands)
        result = run_training(cfg, StandaloneHost(device=str(_device(dist))), callbacks=ConsoleProgress(dist.is_main),
                              commands=commands, dist=dist)
        dist.finish()
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dist.is_main:
        state = "stopped early, saved" if result.stopped else "done"
        print(f"{state}: {result.output_path}  ({result.steps} steps)  use it as {result.prompt_usage}")
    return 0


def _device(dist):
    from accelerate import PartialState

    device = PartialState().device
    # accelerate numbers CPU "devices" per process (cpu:1); torch has one CPU device
    return "cpu" if device.type == "cpu" else device


def _stop_on_ctrl_c(commands) -> None:
    """First Ctrl-C: finish the current step and save; second: abort."""
    def handler(signum, frame):
        if commands.stop_requested:
            raise KeyboardInterrupt
        print("\nstopping after this step (Ctrl-C again to abort without saving)…", file=sys.stderr)
        commands.request_stop()

    signal.signal(signal.SIGINT, handler)


def cmd_config(args) -> int:
    if args.path.exists():
        print(f"error: {args.path} exists; choose another path", file=sys.stderr)
        return 2
    from .config import commented_toml

    args.path.write_text(commented_toml(TrainConfig()), encoding="utf-8")
    print(f"wrote {args.path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.out, seconds=args.seconds)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "ui":
        from .ui.standalone import serve

        return serve(args)
    return 2
