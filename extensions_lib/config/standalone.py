"""What a run outside the WebUI needs from [model]: the WebUI lends its loaded checkpoint, a standalone
run loads the files named here. Checked before anything is loaded, with the setting that fixes each."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .problems import ConfigProblem

if TYPE_CHECKING:
    from .train_config import TrainConfig

TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer_config.json",), ("tokenizer.json",))
SET_CHECKPOINT = "--set model.checkpoint=/path/model.safetensors"
SET_TOKENIZER = "--set model.tokenizer=/path/tokenizer"


def standalone_model_problems(cfg: "TrainConfig") -> list[ConfigProblem]:
    """Problems with model.checkpoint, model.tokenizer and model.vae for a standalone run (paths as the
    standalone host opens them)."""
    m = cfg.model
    problems: list[ConfigProblem] = []
    add = lambda f, v, a: problems.append(ConfigProblem(f, v, a))  # noqa: E731
    checkpoint = Path(m.checkpoint) if m.checkpoint.strip() else None
    if checkpoint is None:
        add("model.checkpoint", m.checkpoint,
            "required outside the WebUI: the .safetensors/.ckpt checkpoint or diffusers folder to train; set it "
            f"in the config's [model] section or with {SET_CHECKPOINT} (a single-file checkpoint also needs "
            "model.tokenizer)")
    elif not checkpoint.exists():
        add("model.checkpoint", m.checkpoint, f"no such file or folder; fix the path, e.g. {SET_CHECKPOINT}")
    elif checkpoint.is_dir() and not (checkpoint / "model_index.json").is_file():
        add("model.checkpoint", m.checkpoint, "a folder without model_index.json is not a diffusers model; give "
                                              "a .safetensors/.ckpt file or a diffusers Stable Diffusion folder")

    if m.tokenizer.strip():
        folder = Path(m.tokenizer)
        if not folder.is_dir():
            add("model.tokenizer", m.tokenizer, f"no such folder; give the folder holding vocab.json and "
                                                f"merges.txt, e.g. {SET_TOKENIZER}")
        elif not any(all((folder / name).is_file() for name in files) for files in TOKENIZER_FILES):
            add("model.tokenizer", m.tokenizer, "holds no CLIP tokenizer: expected vocab.json and merges.txt "
                                                "(e.g. the tokenizer/ folder of a diffusers SD model)")
    elif checkpoint is not None and _needs_tokenizer(checkpoint):
        add("model.tokenizer", m.tokenizer,
            "required: a single-file checkpoint holds no tokenizer; set it to a folder with vocab.json and "
            f"merges.txt (the tokenizer/ folder of any diffusers SD 1.x/2.x model), e.g. {SET_TOKENIZER}")

    if m.vae.strip() and not Path(m.vae).is_file():
        add("model.vae", m.vae, "no such file; fix the path or leave it empty to use the checkpoint's VAE")
    return problems


def _needs_tokenizer(checkpoint: Path) -> bool:
    """A single file never holds one; a diffusers folder may bring tokenizer/."""
    if checkpoint.is_dir():
        return (checkpoint / "model_index.json").is_file() and not (checkpoint / "tokenizer").is_dir()
    return True
