"""Checks of a whole TrainConfig: each option against its own limits (from the schema's metadata),
then the rules that tie options together. Every problem is returned, not just the first."""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from .problems import ConfigProblem
from .prompt_line import check_prompt_line
from .schema import SECTIONS

if TYPE_CHECKING:
    from .train_config import TrainConfig

# Text stored in the file's metadata (comment) and card sidecar (trigger words). The safetensors
# library, which the WebUI, ComfyUI and kohya load through, refuses a header over 100 MB, so a long
# comment makes a file nobody can open; 64 KiB and 4 KiB are far beyond any real note or trigger.
MAX_COMMENT_BYTES = 64 * 1024
MAX_TRIGGER_WORDS_BYTES = 4 * 1024
# hypernetwork widths are multiples of up to 1280: multipliers a, b make a layer of (1280 a)(1280 b)
# weights, already ~420 M parameters (1.7 GB in fp32) at 16 and 16; usual structures stay at 1-4
MAX_LAYER_MULTIPLIER = 16


def validate(cfg: "TrainConfig") -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for sname in SECTIONS:
        section = getattr(cfg, sname)
        for f in dataclasses.fields(section):
            check_field(sname, f, getattr(section, f.name), problems)
    check_relations(cfg, problems)
    return problems


def check_field(sname: str, f: dataclasses.Field, value, problems: list[ConfigProblem]) -> None:
    """One option against its choices and min/max."""
    meta = f.metadata
    name = f"{sname}.{f.name}"
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(ConfigProblem(name, value, "must be a finite number"))
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        problems.append(ConfigProblem(name, value, f"one of: {', '.join(map(str, choices))}"))
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo or hi is not None and value > hi:
            problems.append(ConfigProblem(name, value, f"between {lo} and {hi}"))


def check_relations(cfg: "TrainConfig", problems: list[ConfigProblem]) -> None:
    """Rules between options, and per-method requirements."""
    from ..export.naming import validate_output_name

    d, n, t = cfg.data, cfg.network, cfg.training
    add = lambda f, v, a: problems.append(ConfigProblem(f, v, a))  # noqa: E731
    if not d.train_dir:
        add("data.train_dir", d.train_dir, "required: the folder holding <repeats>_<name> image folders")
    ext_error = caption_extension_problem(d.caption_extension)
    if ext_error:
        add("data.caption_extension", d.caption_extension, ext_error)
    for fname, value, limit in (("output.comment", cfg.output.comment, MAX_COMMENT_BYTES),
                                ("output.trigger_words", cfg.output.trigger_words, MAX_TRIGGER_WORDS_BYTES)):
        size = len(value.encode("utf-8", "replace")) if isinstance(value, str) else 0
        if size > limit:
            add(fname, _shorten(value), f"at most {limit // 1024} KiB of text (this is {size:,} bytes)")
    _check_validation(cfg, add)
    if d.min_bucket_reso > d.max_bucket_reso:
        add("data.min_bucket_reso", d.min_bucket_reso, f"must be <= data.max_bucket_reso ({d.max_bucket_reso})")
    if d.bucket_reso_steps % 8:
        add("data.bucket_reso_steps", d.bucket_reso_steps, "must be a multiple of 8")
    if d.resolution % 8:
        add("data.resolution", d.resolution, "must be a multiple of 8")
    if cfg.is_lora_family and not (n.train_unet or n.train_text_encoder):
        add("network.train_unet", n.train_unet, "train_unet or train_text_encoder must be on")
    if t.lr_warmup_steps >= 1 and t.lr_warmup_steps != int(t.lr_warmup_steps):
        add("training.lr_warmup_steps", t.lr_warmup_steps, "a whole number of steps, or a ratio below 1")
    if t.lr_scheduler == "constant" and t.lr_warmup_steps:
        add("training.lr_warmup_steps", t.lr_warmup_steps, "the constant schedule has no warmup: "
                                                           "use constant_with_warmup")
    if cfg.unet_lr == 0 and cfg.text_encoder_lr == 0:
        add("training.learning_rate", t.learning_rate, "every learning rate is 0: nothing would train")
    # an embedding named after its token: embedding.token's own check names it, not output.name
    name_from_token = cfg.output_name != cfg.output.name
    name_error = None if name_from_token else validate_output_name(cfg.output_name)
    if name_error:
        add("output.name", cfg.output_name, name_error)
    _check_initial_weights(cfg, add)
    if cfg.output.keep_best_validation is True and not (
            d.validation_split or (isinstance(d.validation_dir, str) and d.validation_dir.strip())):
        add("output.keep_best_validation", True, "needs a validation loss: set data.validation_split (e.g. 0.1) "
                                                 "or data.validation_dir, or turn this off")
    if n.method == "embedding":
        _check_embedding(cfg, add)
    if n.method == "hypernetwork":
        _check_hypernetwork(cfg, add)
    for i, p in enumerate(cfg.sample.prompts):
        if not isinstance(p, str) or not p.strip():
            add(f"sample.prompts[{i}]", p, "a non-empty text")
            continue
        try:
            check_prompt_line(p)        # its --w/--h/--s/... options, now rather than at the first preview
        except ValueError as e:
            add(f"sample.prompts[{i}]", p, str(e))


def _check_validation(cfg: "TrainConfig", add) -> None:
    """A validation folder is not the training or regularization folder (those images are trained on)."""
    from pathlib import Path

    d = cfg.data
    value = d.validation_dir
    if not isinstance(value, str):
        add("data.validation_dir", value, "a folder path, or empty")
        return
    if not value.strip():
        return
    mine = Path(value.strip()).expanduser().resolve()
    for name, other in (("data.train_dir", d.train_dir), ("data.reg_dir", d.reg_dir)):
        if isinstance(other, str) and other.strip() and Path(other.strip()).expanduser().resolve() == mine:
            add("data.validation_dir", value, f"is {name}, whose images are trained on: use a folder of other "
                                              "images, or data.validation_split to hold some out")


def _check_initial_weights(cfg: "TrainConfig", add) -> None:
    """A LoRA to continue: readable, of the method's kind, with the parts the run trains (the file's
    header only; its weights are loaded after the network is built)."""
    from .schema import LORA_FAMILY

    value = cfg.network.initial_weights
    if not isinstance(value, str):
        add("network.initial_weights", value, "a path to a .safetensors LoRA, or empty")
        return
    if not value.strip():
        return
    if cfg.network.method not in LORA_FAMILY:
        add("network.initial_weights", value, f"only LoRA-family methods ({', '.join(LORA_FAMILY)}) continue a "
                                              f"file; leave it empty for {cfg.network.method}")
        return
    from ..methods.initial_weights import problems

    for problem in problems(cfg):
        add("network.initial_weights", value, problem)


def _check_embedding(cfg: "TrainConfig", add) -> None:
    from ..export.naming import validate_output_name

    e = cfg.embedding
    err = validate_output_name(e.token, "embedding.token") if e.token else "required for embeddings"
    if err:
        add("embedding.token", e.token, err + " (it is the word you type in prompts)")
    elif any(c.isspace() or c in "<>:,()[]" for c in e.token):
        add("embedding.token", e.token, "one word without spaces, commas, brackets or colons")
    if e.prompt_source == "template":
        from ..data.templates import TemplateError, load_template

        try:
            load_template(e.template)
        except TemplateError as err:
            add("embedding.template", e.template, str(err))
    if cfg.data.reg_dir:
        add("data.reg_dir", cfg.data.reg_dir, "embeddings train without regularization images: leave it empty "
                                              "(their captions would get the embedding's word)")


def _check_hypernetwork(cfg: "TrainConfig", add) -> None:
    h = cfg.hypernetwork
    ls = h.layer_structure
    if (not isinstance(ls, list) or len(ls) < 2 or not all(isinstance(x, (int, float)) and x > 0 for x in ls)
            or ls[0] != 1 or ls[-1] != 1):
        add("hypernetwork.layer_structure", ls, "a list of positive numbers starting and ending with 1, "
                                                "e.g. [1, 2, 1]")
    elif any(x > MAX_LAYER_MULTIPLIER for x in ls):
        add("hypernetwork.layer_structure", ls,
            f"each multiplier at most {MAX_LAYER_MULTIPLIER}: a layer between multipliers a and b holds "
            "(1280 a) x (1280 b) weights, so larger values exhaust memory; usual values are e.g. [1, 2, 1]")
    ds = h.dropout_structure
    if ds and (len(ds) != len(ls or []) or not all(_is_number(x) and 0 <= x < 1 for x in ds)
               or ds[0] != 0 or ds[-1] != 0):
        add("hypernetwork.dropout_structure", ds,
            "one rate in [0, 1) per layer_structure entry, first and last 0 (e.g. [0, 0.3, 0]), or empty")
    if (not h.sizes or not all(_is_number(x) and x == int(x) and x > 0 for x in h.sizes)
            or len(set(h.sizes)) != len(h.sizes)):
        add("hypernetwork.sizes", h.sizes, "attention widths without repeats: SD1 768 320 640 1280, "
                                           "SD2 1024 320 640 1280")


def caption_extension_problem(ext) -> str | None:
    """None for a usable caption extension ("txt" gets its dot added when scanning), else why not."""
    if not isinstance(ext, str) or not ext.strip(".").strip():
        return "a file extension like .txt"
    if any(c in ext for c in "/\\") or any(ord(c) < 32 for c in ext) or ext != ext.strip():
        return "a file extension like .txt, without folders, spaces at the ends or control characters"
    return None


def _shorten(value):
    # the problem list shows the value: a 100 MB text would drown the message
    return value[:80] + "…" if isinstance(value, str) and len(value) > 80 else value


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
