"""Command-line options of the Trainer extension.

The WebUI loads this file by path (modules/script_loading.preload_extensions) before it parses the
command line and calls preload(parser); the values end up in modules.shared.cmd_opts as
cmd_opts.trainer_output_dir, cmd_opts.trainer_api, cmd_opts.trainer_disable_api and
cmd_opts.trainer_max_resolution.
The extension folder is not on sys.path at that point, so this file imports nothing of ours.
"""
import argparse
import os


def _absolute_path(value: str) -> str:
    return os.path.abspath(os.path.expanduser(value))


def _resolution(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--trainer-max-resolution expects a number of pixels like 1024, got {value!r}") from None
    if number < 64 or number % 64:
        raise argparse.ArgumentTypeError(f"--trainer-max-resolution must be a multiple of 64 and at least 64, got {number}")
    return number


def preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trainer-output-dir", type=_absolute_path, default=None,
        help="Trainer extension: folder for its working files, i.e. the on-disk latent cache (PATH/latent_cache) "
             "when 'cache latents to disk' is on. Finished LoRAs, embeddings and hypernetworks still go to the "
             "WebUI's model folders. Default: a .latent_cache folder inside the dataset folder.")
    parser.add_argument(
        "--trainer-api", action="store_true", default=False,
        help="Trainer extension: add its REST API routes (/trainer/v1, which can start trainings and read "
             "dataset folders) without the WebUI's --api. They are added with --api or --nowebui anyway, and "
             "left out otherwise so that a WebUI without an API serves none. They ask for the same logins as "
             "the WebUI: --api-auth, else --gradio-auth / --gradio-auth-path.")
    parser.add_argument(
        "--trainer-disable-api", action="store_true", default=False,
        help="Trainer extension: never add its REST API routes, even with --api or --trainer-api; the Trainer "
             "tab still works.")
    parser.add_argument(
        "--trainer-max-resolution", type=_resolution, default=None,
        help="Trainer extension: largest training resolution (side of a square bucket, in pixels) a user may "
             "pick, e.g. 768 on a shared server with little VRAM. Default: no limit.")
