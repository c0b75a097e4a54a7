"""TrainConfig: every training option, typed and documented, with TOML in/out and validation.

The same object is filled by the WebUI tab, the CLI (`train CONFIG.toml --set key=value`) and the
REST API. `validate()` returns every problem at once (field, value, what is allowed) so a user
fixes a config in one go, before any model work starts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the WebUI ships Python 3.10 on some installs
    import tomli as tomllib

CONFIG_VERSION = 1

METHODS = ("lora", "locon", "loha", "lokr", "embedding", "hypernetwork")
LORA_FAMILY = ("lora", "locon", "loha", "lokr")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion", "sgd_nesterov", "prodigy")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "celu", "gelu",
               "hardshrink", "hardsigmoid", "hardtanh", "logsigmoid", "mish", "prelu",
               "rrelu", "relu6", "selu", "silu", "softplus", "softshrink", "softsign", "tanhshrink")
WEIGHT_INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
PROMPT_SOURCES = ("captions", "template")


def opt(default, help: str, *, choices=None, min=None, max=None, ui: str = None):
    """A config field with its documentation and limits (read by validate() and the UI tooltips)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "ui": ui}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    checkpoint: str = opt("", "Standalone only: path to a .safetensors/.ckpt checkpoint or a diffusers folder. "
                              "Inside the WebUI the loaded checkpoint is used.")
    vae: str = opt("", "Standalone only: optional separate VAE file. Inside the WebUI the selected VAE is used.")
    tokenizer: str = opt("", "Standalone only: folder with the CLIP tokenizer (vocab.json + merges.txt).")
    v_prediction: bool = opt(False, "The checkpoint predicts v (SD2 768-v models). Sets the training target.")
    clip_skip: int = opt(0, "Use the output of the N-th last text-encoder layer (1 = last, 2 = penultimate). "
                            "0 = the WebUI's setting (1 standalone).", min=0, max=12)


@dataclass
class DataConfig:
    train_dir: str = opt("", "Folder holding <repeats>_<name> subfolders of images (e.g. 10_sks dog).")
    reg_dir: str = opt("", "Optional regularization folder of the same shape (prior preservation).")
    caption_extension: str = opt(".txt", "Caption file extension next to each image (.caption is tried too).")
    resolution: int = opt(512, "Base training resolution in pixels (bucket area = resolution²).", min=64, max=4096)
    enable_buckets: bool = opt(True, "Aspect-ratio buckets: train on non-square images without cropping much.")
    min_bucket_reso: int = opt(256, "Smallest bucket side.", min=64, max=4096)
    max_bucket_reso: int = opt(1024, "Largest bucket side.", min=64, max=8192)
    bucket_reso_steps: int = opt(64, "Bucket side step in pixels (multiple of 8).", min=8, max=512)
    bucket_no_upscale: bool = opt(False, "Never upscale small images; they get a bucket of their own size.")
    random_crop: bool = opt(False, "Random instead of center crop (turns latent caching off).")
    flip_aug: bool = opt(False, "Random horizontal flip.")
    shuffle_caption: bool = opt(False, "Shuffle comma-separated tags each epoch.")
    keep_tokens: int = opt(0, "Keep the first N tags in place when shuffling.", min=0, max=75)
    caption_dropout_rate: float = opt(0.0, "Chance to train an image with an empty caption.", min=0.0, max=1.0)
    caption_tag_dropout_rate: float = opt(0.0, "Chance to drop each (non-kept) tag.", min=0.0, max=1.0)
    cache_latents: bool = opt(True, "Encode each image with the VAE once, before training.")
    cache_latents_to_disk: bool = opt(False, "Also keep latent caches on disk for the next run.")
    max_token_length: int = opt(75, "Caption length in tokens: 75, 150 or 225 (75-token chunks as the WebUI).",
                                choices=(75, 150, 225))
    prior_loss_weight: float = opt(1.0, "Loss weight of regularization images.", min=0.0, max=100.0)


@dataclass
class NetworkConfig:
    method: str = opt("lora", "What to train.", choices=METHODS)
    dim: int = opt(16, "Rank (network dim) of linear layers.", min=1, max=1024)
    alpha: float = opt(8.0, "Alpha of linear layers: the update is scaled by alpha/rank.", min=0.0, max=4096.0)
    conv_dim: int = opt(8, "Rank of 3x3 conv layers (LoCon, LoHa, LoKr). 0 = no conv layers.", min=0, max=1024)
    conv_alpha: float = opt(4.0, "Alpha of conv layers.", min=0.0, max=4096.0)
    dropout: float = opt(0.0, "Dropout on the network's hidden units.", min=0.0, max=1.0)
    rank_dropout: float = opt(0.0, "Dropout of whole ranks.", min=0.0, max=1.0)
    module_dropout: float = opt(0.0, "Chance to skip a whole module per step.", min=0.0, max=1.0)
    lokr_factor: int = opt(-1, "LoKr Kronecker factor (-1 = automatic).", min=-1, max=1024)
    train_unet: bool = opt(True, "Train the UNet part of the network.")
    train_text_encoder: bool = opt(True, "Train the text-encoder part of the network.")
    multiplier: float = opt(1.0, "Strength of the network while training.", min=0.0, max=10.0)


@dataclass
class EmbeddingConfig:
    token: str = opt("", "Prompt word of the embedding (also its file name).")
    init_text: str = opt("*", "Text whose token embeddings initialise the vectors.")
    num_vectors: int = opt(1, "Vectors per token.", min=1, max=75)
    prompt_source: str = opt("captions", "Training prompts: the dataset captions with the word inserted, "
                                         "or a template file.", choices=PROMPT_SOURCES)
    template: str = opt("subject", "Template name (subject, style, …) or path to a template file "
                                   "with [name] and [filewords].")
    save_pt: bool = opt(False, "Write the WebUI's .pt format instead of .safetensors.")


@dataclass
class HypernetworkConfig:
    layer_structure: list = opt([1, 2, 1], "Layer widths as multiples of the input width; starts and ends with 1.")
    activation: str = opt("linear", "Activation between layers.", choices=ACTIVATIONS)
    layer_norm: bool = opt(False, "LayerNorm after each layer.")
    use_dropout: bool = opt(False, "Dropout between layers.")
    dropout_structure: list = opt([], "Dropout rate per layer (same length as layer_structure; "
                                      "first and last 0). Empty = WebUI default.")
    weight_init: str = opt("Normal", "Weight initialisation.", choices=WEIGHT_INITS)
    activate_output: bool = opt(False, "Apply the activation after the last layer too.")
    last_layer_dropout: bool = opt(False, "Dropout before the last layer.")
    sizes: list = opt([768, 320, 640, 1280], "Context widths to attach to (SD1: 768 320 640 1280; "
                                            "SD2: 1024 320 640 1280).")


@dataclass
class TrainingConfig:
    max_train_epochs: int = opt(10, "Epochs to train (one epoch = every image × its repeats).", min=1, max=100000)
    max_train_steps: int = opt(0, "Stop after this many optimizer steps (0 = use epochs).", min=0, max=10_000_000)
    train_batch_size: int = opt(1, "Images per step.", min=1, max=256)
    gradient_accumulation_steps: int = opt(1, "Steps whose gradients are summed before one update.", min=1, max=1024)
    gradient_checkpointing: bool = opt(False, "Recompute activations in backward: less memory, slower.")
    mixed_precision: str = opt("no", "Autocast precision (bf16 on CPU; fp16 needs a GPU).", choices=PRECISIONS)
    seed: int = opt(42, "Random seed (data order, noise, init).", min=0, max=2**32 - 1)
    max_grad_norm: float = opt(1.0, "Clip gradient norm (0 = off).", min=0.0, max=1e6)
    learning_rate: float = opt(1e-4, "Learning rate (default for every part).", min=0.0, max=10.0)
    unet_lr: float = opt(-1.0, "UNet learning rate (-1 = learning_rate).", min=-1.0, max=10.0)
    text_encoder_lr: float = opt(-1.0, "Text-encoder learning rate (-1 = learning_rate).", min=-1.0, max=10.0)
    optimizer: str = opt("adamw", "Optimizer.", choices=OPTIMIZERS)
    weight_decay: float = opt(0.01, "Weight decay.", min=0.0, max=10.0)
    lr_scheduler: str = opt("cosine", "Learning-rate schedule.", choices=SCHEDULERS)
    lr_warmup_steps: float = opt(0.0, "Warmup: steps (>= 1) or a ratio of all steps (< 1).", min=0.0, max=1e7)
    lr_scheduler_num_cycles: int = opt(1, "Restarts of cosine_with_restarts.", min=1, max=1000)
    lr_scheduler_power: float = opt(1.0, "Power of the polynomial schedule.", min=0.0, max=100.0)
    noise_offset: float = opt(0.0, "Noise offset (0.05–0.1 helps very dark/bright images).", min=0.0, max=1.0)
    min_snr_gamma: float = opt(0.0, "Min-SNR loss weighting gamma (5 is common; 0 = off).", min=0.0, max=100.0)


@dataclass
class SampleConfig:
    prompts: list = opt([], "Preview prompts (empty = no previews).")
    negative_prompt: str = opt("", "Negative prompt for previews.")
    every_n_epochs: int = opt(1, "Make previews every N epochs (0 = only at the end).", min=0, max=100000)
    every_n_steps: int = opt(0, "Also every N steps (0 = off).", min=0, max=10_000_000)
    steps: int = opt(20, "Sampling steps per preview.", min=1, max=150)
    cfg_scale: float = opt(7.0, "Classifier-free guidance scale.", min=1.0, max=30.0)
    width: int = opt(512, "Preview width.", min=64, max=2048)
    height: int = opt(512, "Preview height.", min=64, max=2048)
    seed: int = opt(1234, "Preview seed (the same every time, so previews compare).", min=0, max=2**32 - 1)


@dataclass
class OutputConfig:
    name: str = opt("my_lora", "File name (without extension) and the name in prompts.")
    output_dir: str = opt("", "Where to write. Empty = the WebUI's folder for the method "
                              "(models/Lora, embeddings, models/hypernetworks) or ./output standalone.")
    save_every_n_epochs: int = opt(0, "Also save name-000002 etc. every N epochs (0 = only the final file).",
                                   min=0, max=100000)
    save_every_n_steps: int = opt(0, "Also save every N steps (embeddings: name-500).", min=0, max=10_000_000)
    save_precision: str = opt("fp16", "Precision of the saved weights.", choices=SAVE_PRECISIONS)
    overwrite: bool = opt(False, "Replace existing files of the same name.")
    comment: str = opt("", "Free text stored in the file's metadata (ss_training_comment).")
    trigger_words: str = opt("", "Activation text written beside the LoRA (shown by the WebUI).")
    preferred_weight: float = opt(0.8, "Weight suggested in <lora:name:weight>.", min=0.0, max=10.0)


SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "network": NetworkConfig, "embedding": EmbeddingConfig,
    "hypernetwork": HypernetworkConfig, "training": TrainingConfig, "sample": SampleConfig,
    "output": OutputConfig,
}


@dataclass
class ConfigProblem:
    field: str
    value: Any
    allowed: str

    def __str__(self) -> str:
        return f"{self.field} = {self.value!r}: {self.allowed}"


class ConfigError(ValueError):
    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Invalid training configuration ({len(problems)} problem(s)):\n{lines}")


@dataclass
class TrainConfig:
    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    hypernetwork: HypernetworkConfig = field(default_factory=HypernetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    # ---- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from nested dicts. Unknown sections/keys and uncoercible types are reported
        together as a ConfigError (so a typo in a TOML file is never silently ignored)."""
        problems: list[ConfigProblem] = []
        cfg = cls()
        for key, value in (data or {}).items():
            if key == "version":
                if value != CONFIG_VERSION:
                    problems.append(ConfigProblem("version", value, f"this version reads version {CONFIG_VERSION}"))
                continue
            if key not in SECTIONS:
                problems.append(ConfigProblem(key, value, f"unknown section; known: {', '.join(SECTIONS)}"))
                continue
            if not isinstance(value, dict):
                problems.append(ConfigProblem(key, value, "must be a table of options"))
                continue
            section = getattr(cfg, key)
            for name, v in value.items():
                _set_field(section, key, name, v, problems)
        if problems:
            raise ConfigError(problems)
        return cfg

    @classmethod
    def from_toml(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([ConfigProblem(str(path), "", f"not valid TOML: {e}")]) from None
        return cls.from_dict(data)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save_toml(self, path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    def set(self, dotted: str, raw: str) -> None:
        """Apply one `section.key=value` override; the value is parsed as TOML (falls back to a string)."""
        if "." not in dotted:
            raise ConfigError([ConfigProblem(dotted, raw, "use section.key, e.g. training.learning_rate")])
        section_name, name = dotted.split(".", 1)
        if section_name not in SECTIONS:
            raise ConfigError([ConfigProblem(dotted, raw, f"unknown section; known: {', '.join(SECTIONS)}")])
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        problems: list[ConfigProblem] = []
        _set_field(getattr(self, section_name), section_name, name, value, problems)
        if problems:
            raise ConfigError(problems)

    # ---- derived values ----------------------------------------------------------------------
    @property
    def is_lora_family(self) -> bool:
        return self.network.method in LORA_FAMILY

    @property
    def unet_lr(self) -> float:
        return self.training.learning_rate if self.training.unet_lr < 0 else self.training.unet_lr

    @property
    def text_encoder_lr(self) -> float:
        t = self.training
        return t.learning_rate if t.text_encoder_lr < 0 else t.text_encoder_lr

    @property
    def output_name(self) -> str:
        if self.network.method == "embedding" and self.embedding.token and self.output.name in ("", "my_lora"):
            return self.embedding.token
        return self.output.name

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> list[ConfigProblem]:
        problems: list[ConfigProblem] = []
        for sname in SECTIONS:
            section = getattr(self, sname)
            for f in dataclasses.fields(section):
                _check_field(sname, f, getattr(section, f.name), problems)
        self._check_relations(problems)
        return problems

    def check(self) -> "TrainConfig":
        problems = self.validate()
        if problems:
            raise ConfigError(problems)
        return self

    def _check_relations(self, problems: list[ConfigProblem]) -> None:
        from .export.naming import validate_output_name

        d, n, t, o = self.data, self.network, self.training, self.output
        add = lambda f, v, a: problems.append(ConfigProblem(f, v, a))  # noqa: E731
        if not d.train_dir:
            add("data.train_dir", d.train_dir, "required: the folder holding <repeats>_<name> image folders")
        if d.min_bucket_reso > d.max_bucket_reso:
            add("data.min_bucket_reso", d.min_bucket_reso, f"must be <= data.max_bucket_reso ({d.max_bucket_reso})")
        if d.bucket_reso_steps % 8:
            add("data.bucket_reso_steps", d.bucket_reso_steps, "must be a multiple of 8")
        if d.resolution % 8:
            add("data.resolution", d.resolution, "must be a multiple of 8")
        if self.is_lora_family and not (n.train_unet or n.train_text_encoder):
            add("network.train_unet", n.train_unet, "train_unet or train_text_encoder must be on")
        if t.lr_warmup_steps >= 1 and t.lr_warmup_steps != int(t.lr_warmup_steps):
            add("training.lr_warmup_steps", t.lr_warmup_steps, "a whole number of steps, or a ratio below 1")
        if t.lr_scheduler == "constant" and t.lr_warmup_steps:
            add("training.lr_warmup_steps", t.lr_warmup_steps, "the constant schedule has no warmup: "
                                                               "use constant_with_warmup")
        if self.unet_lr == 0 and self.text_encoder_lr == 0:
            add("training.learning_rate", t.learning_rate, "every learning rate is 0: nothing would train")
        name_error = validate_output_name(self.output_name)
        if name_error:
            add("output.name", self.output_name, name_error)
        if n.method == "embedding":
            err = validate_output_name(self.embedding.token) if self.embedding.token else "required for embeddings"
            if err:
                add("embedding.token", self.embedding.token, err + " (it is the word you type in prompts)")
            elif any(c.isspace() or c in "<>:,()[]" for c in self.embedding.token):
                add("embedding.token", self.embedding.token, "one word without spaces, commas, brackets or colons")
            if self.embedding.prompt_source == "template":
                from .data.templates import TemplateError, load_template

                try:
                    load_template(self.embedding.template)
                except TemplateError as e:
                    add("embedding.template", self.embedding.template, str(e))
            if d.reg_dir:
                add("data.reg_dir", d.reg_dir, "embeddings train without regularization images: leave it empty "
                                               "(their captions would get the embedding's word)")
        if n.method == "hypernetwork":
            h = self.hypernetwork
            ls = h.layer_structure
            if (not isinstance(ls, list) or len(ls) < 2 or not all(isinstance(x, (int, float)) and x > 0 for x in ls)
                    or ls[0] != 1 or ls[-1] != 1):
                add("hypernetwork.layer_structure", ls, "a list of positive numbers starting and ending with 1, "
                                                        "e.g. [1, 2, 1]")
            ds = h.dropout_structure
            if ds and (len(ds) != len(ls or []) or not all(_is_number(x) and 0 <= x < 1 for x in ds)
                       or ds[0] != 0 or ds[-1] != 0):
                add("hypernetwork.dropout_structure", ds,
                    "one rate in [0, 1) per layer_structure entry, first and last 0 (e.g. [0, 0.3, 0]), or empty")
            if (not h.sizes or not all(_is_number(x) and x == int(x) and x > 0 for x in h.sizes)
                    or len(set(h.sizes)) != len(h.sizes)):
                add("hypernetwork.sizes", h.sizes, "attention widths without repeats: SD1 768 320 640 1280, "
                                                   "SD2 1024 320 640 1280")
        for i, p in enumerate(self.sample.prompts):
            if not isinstance(p, str) or not p.strip():
                add(f"sample.prompts[{i}]", p, "a non-empty text")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _set_field(section, sname: str, name: str, value, problems: list[ConfigProblem]) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        problems.append(ConfigProblem(f"{sname}.{name}", value,
                                      f"unknown option; {sname} has: {', '.join(fields)}"))
        return
    f = fields[name]
    current = getattr(section, name)
    try:
        setattr(section, name, _coerce(value, type(current)))
    except (TypeError, ValueError):
        problems.append(ConfigProblem(f"{sname}.{name}", value, f"must be {_type_word(type(current))}"))


def _coerce(value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise TypeError
    if kind is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, int):
            return value
        raise TypeError
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str):
            return float(value.strip())
        if isinstance(value, (int, float)):
            return float(value)
        raise TypeError
    if kind is str:
        if isinstance(value, str):
            return value
        raise TypeError
    if kind is list:
        if isinstance(value, str):
            parsed = json.loads(value) if value.strip().startswith("[") else [
                _num_or_str(x) for x in value.split(",") if x.strip()]
            value = parsed
        if isinstance(value, (list, tuple)):
            return list(value)
        raise TypeError
    return value


def _num_or_str(x: str):
    x = x.strip()
    for conv in (int, float):
        try:
            return conv(x)
        except ValueError:
            pass
    return x


def _type_word(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text",
            list: "a list"}.get(kind, str(kind))


def _check_field(sname: str, f: dataclasses.Field, value, problems: list[ConfigProblem]) -> None:
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


def iter_fields():
    """(section, dataclasses.Field) for every option, in declaration order (UI and docs)."""
    for sname, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield sname, f


def commented_toml(cfg: "TrainConfig") -> str:
    """The config as TOML with every option's help text and limits as a comment above it."""
    lines = [f"version = {cfg.version}"]
    for sname, cls in SECTIONS.items():
        lines.append(f"\n[{sname}]")
        section = getattr(cfg, sname)
        for f in dataclasses.fields(cls):
            m = f.metadata
            allowed = f" ({', '.join(map(str, m['choices']))})" if m.get("choices") else ""
            lines.append(f"# {m.get('help', '')}{allowed}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def dumps_toml(data: dict) -> str:
    """TOML writer for our config shape (scalars, lists of scalars, one level of tables)."""
    try:
        import tomli_w

        return tomli_w.dumps(data)
    except ImportError:
        pass
    lines = []
    for k, v in data.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for kk, vv in v.items():
                lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
