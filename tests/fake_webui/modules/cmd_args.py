"""Fake of modules/cmd_args.py (1.10.1): the WebUI's own options that the extension may read.

Same option names and defaults as the real parser (folders relative to the current data path).
"""
import argparse
import os

from modules import paths_internal
from modules.paths_internal import normalized_filepath


def make_parser() -> argparse.ArgumentParser:
    data_path, models_path = paths_internal.data_path, paths_internal.models_path
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--data-dir", type=normalized_filepath, default=data_path)
    parser.add_argument("--models-dir", type=normalized_filepath, default=None)
    parser.add_argument("--ckpt-dir", type=normalized_filepath, default=None)
    parser.add_argument("--embeddings-dir", type=normalized_filepath, default=os.path.join(data_path, "embeddings"))
    parser.add_argument("--hypernetwork-dir", type=normalized_filepath, default=os.path.join(models_path, "hypernetworks"))
    parser.add_argument("--ui-settings-file", type=str, default=os.path.join(data_path, "config.json"))
    parser.add_argument("--medvram", action="store_true")
    parser.add_argument("--medvram-sdxl", action="store_true")
    parser.add_argument("--lowvram", action="store_true")
    parser.add_argument("--no-half", action="store_true")
    parser.add_argument("--no-half-vae", action="store_true")
    parser.add_argument("--upcast-sampling", action="store_true")
    parser.add_argument("--precision", type=str, choices=["full", "half", "autocast"], default="autocast")
    parser.add_argument("--hide-ui-dir-config", action="store_true", default=False)
    parser.add_argument("--freeze-settings", action="store_true", default=False)
    parser.add_argument("--freeze-settings-in-sections", type=str, default=None)
    parser.add_argument("--freeze-specific-settings", type=str, default=None)
    parser.add_argument("--api", action="store_true")
    parser.add_argument("--api-auth", type=str, default=None)
    parser.add_argument("--nowebui", action="store_true")
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("--share", action="store_true")
    parser.add_argument("--ngrok", type=str, default=None)
    parser.add_argument("--server-name", type=str, default=None)
    parser.add_argument("--enable-insecure-extension-access", action="store_true")
    parser.add_argument("--no-hashing", action="store_true", default=False)
    parser.add_argument("--disable-nan-check", action="store_true")
    return parser


parser = make_parser()
