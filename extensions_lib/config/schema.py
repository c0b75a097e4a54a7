"""The options themselves: one dataclass per config section, each field with its default, help text
and limits. Everything else (the tab, the CLI, the README table, validation) reads this metadata."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator

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
    caption_extension: str = opt(".txt", "Caption file extension next to each image, like .txt (.caption is tried "
                                          "too); no folders.")
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
    validation_split: float = opt(0.0, "Hold out this fraction of the training images (chosen with training.seed, "
                                       "never trained on) to measure a validation loss. 0 = off.", min=0.0, max=0.5)
    validation_dir: str = opt("", "Optional folder of validation images in the same <repeats>_<name> layout "
                                  "(never trained on; repeats are ignored). Empty = none.")


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
    initial_weights: str = opt("", "Continue training this LoRA-family .safetensors file (kohya's --network_weights): "
                                   "it must be of network.method's kind; its rank and alpha replace dim, alpha, "
                                   "conv_dim and conv_alpha. Empty = start from scratch.")


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
    layer_structure: list = opt([1, 2, 1], "Layer widths as multiples of the input width; starts and ends with 1, "
                                           "each at most 16.")
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
    validate_every_n_steps: int = opt(0, "Measure the validation loss (fixed noise and timesteps, no "
                                         "gradients) every N steps; 0 = at each epoch's end. Only with "
                                         "data.validation_split or data.validation_dir.", min=0, max=10_000_000)
    resume: str = opt("", "Go on from a training state folder (<name>-state, written with output.save_state): "
                          "same dataset and options; only the length, saves and previews may change. "
                          "Empty = start fresh.")


@dataclass
class SampleConfig:
    prompts: list = opt([], "Preview prompts (empty = no previews). A line may end with sd-scripts' options "
                            "--n negative --w W --h H --s steps --l cfg --d seed (W, H multiples of 8); the rest "
                            "comes from sample.*.")
    negative_prompt: str = opt("", "Negative prompt for previews.")
    every_n_epochs: int = opt(1, "Make previews every N epochs (0 = only at the end).", min=0, max=100000)
    every_n_steps: int = opt(0, "Also every N steps (0 = off).", min=0, max=10_000_000)
    steps: int = opt(20, "Sampling steps per preview.", min=1, max=150)
    cfg_scale: float = opt(7.0, "Classifier-free guidance scale.", min=1.0, max=30.0)
    width: int = opt(512, "Preview width.", min=64, max=2048)
    height: int = opt(512, "Preview height.", min=64, max=2048)
    seed: int = opt(1234, "Preview seed (the same every time, so previews compare).", min=0, max=2**32 - 1)
    sample_at_first: bool = opt(False, "Also make previews before the first step (the untrained starting point).")


@dataclass
class OutputConfig:
    name: str = opt("my_lora", "File name (without extension) and the name in prompts.")
    output_dir: str = opt("", "Where to write. Empty = the WebUI's folder for the method "
                              "(models/Lora, embeddings, models/hypernetworks) or ./output standalone.")
    save_every_n_epochs: int = opt(0, "Also save name-000002 etc. every N epochs (0 = only the final file).",
                                   min=0, max=100000)
    save_every_n_steps: int = opt(0, "Also save every N steps (embeddings: name-500).", min=0, max=10_000_000)
    save_precision: str = opt("fp16", "Precision of the saved weights.", choices=SAVE_PRECISIONS)
    save_state: bool = opt(False, "Also write the full training state (weights, optimizer, schedule, step, random "
                                  "generators) to <name>-state at every save and on stop, to resume later with "
                                  "training.resume.")
    keep_last_n_states: int = opt(1, "How many training states to keep (older ones are named <name>-state-<step>).",
                                  min=1, max=1000)
    keep_best_validation: bool = opt(False, "With a validation loss (data.validation_split or data.validation_dir): "
                                            "also keep <name>-best, the weights at the lowest validation loss so "
                                            "far (replaced each time it improves).")
    overwrite: bool = opt(False, "Replace existing files of the same name.")
    comment: str = opt("", "Free text stored in the file's metadata (ss_training_comment); at most 64 KiB.")
    trigger_words: str = opt("", "Activation text written beside the LoRA (shown by the WebUI); at most 4 KiB.")
    preferred_weight: float = opt(0.8, "Weight suggested in <lora:name:weight>.", min=0.0, max=10.0)


SECTIONS = {
    "model": ModelConfig, "data": DataConfig, "network": NetworkConfig, "embedding": EmbeddingConfig,
    "hypernetwork": HypernetworkConfig, "training": TrainingConfig, "sample": SampleConfig,
    "output": OutputConfig,
}


def iter_fields() -> Iterator[tuple[str, dataclasses.Field]]:
    """(section, dataclasses.Field) for every option, in declaration order (UI and docs)."""
    for sname, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield sname, f
