"""The Trainer tab's widgets: where each one goes, made from its TrainConfig field.

`build_layout` only creates components (inside the caller's gr.Blocks) and returns them by name in
a TabLayout; what they do is wired in handlers.py. Every option is a widget made from its field
(label, help as tooltip text, limits), listed once in LAYOUT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import TrainConfig
from ..hosts.base import Host
from . import compat
from .compat import gr
from .fields import METHOD_LABELS, SPECS, FieldSpec, config_to_values
from .presets import DEFAULTS, preset_names
from .summary import dataset_summary, summary_html

ELEM_ID = "trainer_ext"

# Rows of fields per section; a section's "advanced" rows go in a closed accordion.
LAYOUT: dict[str, dict[str, list[list[str]]]] = {
    "Dataset": {
        "rows": [["data.reg_dir", "data.caption_extension"],
                 ["data.resolution", "data.enable_buckets", "data.cache_latents"]],
        "advanced": [["data.min_bucket_reso", "data.max_bucket_reso", "data.bucket_reso_steps"],
                     ["data.bucket_no_upscale", "data.random_crop", "data.flip_aug", "data.cache_latents_to_disk"],
                     ["data.shuffle_caption", "data.keep_tokens", "data.max_token_length"],
                     ["data.caption_dropout_rate", "data.caption_tag_dropout_rate", "data.prior_loss_weight"],
                     ["data.validation_split", "data.validation_dir", "training.validate_every_n_steps",
                      "output.keep_best_validation"]],
    },
    "Network": {
        "rows": [["network.dim", "network.alpha", "network.conv_dim", "network.conv_alpha"],
                 ["network.train_unet", "network.train_text_encoder", "network.lokr_factor"]],
        "advanced": [["network.dropout", "network.rank_dropout", "network.module_dropout"],
                     ["network.multiplier", "network.initial_weights"]],
    },
    "Embedding": {
        "rows": [["embedding.token", "embedding.init_text", "embedding.num_vectors"],
                 ["embedding.prompt_source", "embedding.template", "embedding.save_pt"]],
        "advanced": [],
    },
    "Hypernetwork": {
        "rows": [["hypernetwork.layer_structure", "hypernetwork.activation", "hypernetwork.weight_init"],
                 ["hypernetwork.layer_norm", "hypernetwork.use_dropout", "hypernetwork.dropout_structure"]],
        "advanced": [["hypernetwork.activate_output", "hypernetwork.last_layer_dropout", "hypernetwork.sizes"]],
    },
    "Training": {
        "rows": [["training.max_train_epochs", "training.max_train_steps", "training.train_batch_size",
                  "training.gradient_accumulation_steps"],
                 ["training.learning_rate", "training.unet_lr", "training.text_encoder_lr"],
                 ["training.optimizer", "training.lr_scheduler", "training.lr_warmup_steps"],
                 ["training.mixed_precision", "training.gradient_checkpointing", "training.seed"]],
        "advanced": [["model.clip_skip", "training.noise_offset", "training.min_snr_gamma"],
                     ["training.weight_decay", "training.max_grad_norm", "training.lr_scheduler_num_cycles",
                      "training.lr_scheduler_power"]],
    },
    "Samples": {
        "rows": [["sample.prompts"], ["sample.negative_prompt"],
                 ["sample.every_n_epochs", "sample.every_n_steps", "sample.seed"],
                 ["sample.width", "sample.height", "sample.steps", "sample.cfg_scale"],
                 ["sample.sample_at_first"]],
        "advanced": [],
    },
    "Output": {
        "rows": [["output.name", "output.save_precision", "output.overwrite"],
                 ["output.trigger_words", "output.preferred_weight"],
                 ["output.save_every_n_epochs", "output.save_every_n_steps"],
                 ["output.save_state", "output.keep_last_n_states", "training.resume"]],
        "advanced": [["output.output_dir"], ["output.comment"]],
    },
    "Model": {   # only where the host loads the checkpoint the form names (the WebUI lends its own)
        "rows": [["model.checkpoint"], ["model.vae", "model.tokenizer", "model.v_prediction"]],
        "advanced": [],
    },
}
# below the Dataset accordion and the method radio, in this order
SECTIONS = ("Network", "Embedding", "Hypernetwork", "Training", "Samples", "Output", "Model")
# placed by hand: the dataset folder (with its live summary) and the method radio
SPECIAL = ("data.train_dir", "network.method")
# fields that only some methods read: hidden for the others
METHOD_ONLY = {"network.conv_dim": ("locon", "loha", "lokr"), "network.conv_alpha": ("locon", "loha", "lokr"),
               "network.lokr_factor": ("lokr",)}
OPEN_SECTIONS = ("Dataset", "Network", "Embedding", "Hypernetwork", "Training", "Output", "Model")


def shows_model_section(host: Host) -> bool:
    """Whether the form needs the Model fields: only for a host that loads the checkpoint the form
    names (Host.model_from_config)."""
    return bool(host.model_from_config)


def layout_keys(show_model_section: bool) -> list[str]:
    """Every config key that gets a widget, in the order the handlers receive their values."""
    keys = list(SPECIAL)
    for section, parts in LAYOUT.items():
        if section == "Model" and not show_model_section:
            continue
        for row in parts["rows"] + parts["advanced"]:
            keys.extend(row)
    return keys


def section_visible(section: str, method: str) -> bool:
    if section == "Network":
        return method in ("lora", "locon", "loha", "lokr")
    if section == "Embedding":
        return method == "embedding"
    if section == "Hypernetwork":
        return method == "hypernetwork"
    return True


def widget(spec: FieldSpec, value, **extra):
    """The component for one config field: radio, checkbox, dropdown, slider, number or text."""
    common = dict(label=spec.label, info=spec.help, elem_id=spec.elem_id, **extra)
    if spec.key == "network.method":
        return compat.make(gr.Radio, choices=list(METHOD_LABELS), value=value, **common)
    if spec.kind is bool:
        return compat.make(gr.Checkbox, value=value, **common)
    if spec.choices is not None:
        choices = [str(c) for c in spec.choices]
        if len(choices) <= 4:
            return compat.make(gr.Radio, choices=choices, value=value, **common)
        return compat.make(gr.Dropdown, choices=choices, value=value, **common)
    if spec.kind in (int, float):
        if spec.kind is float and spec.minimum == 0.0 and spec.maximum == 1.0:
            return compat.make(gr.Slider, minimum=0.0, maximum=1.0, step=0.01, value=value, **common)
        return compat.make(gr.Number, value=value, precision=0 if spec.kind is int else None, **common)
    lines = 3 if spec.key == "sample.prompts" else 1
    return compat.make(gr.Textbox, value=value, lines=lines, max_lines=12 if lines > 1 else 1, **common)


def _resume_list():
    """The runs that can go on (training states in the output folder): a list filled by Find, whose
    choice fills training.resume."""
    with gr.Row():
        states = compat.make(gr.Dropdown, choices=[], value=None, label="Resumable runs",
                             info="training states in the output folder; pick one to go on from it",
                             elem_id=f"{ELEM_ID}_states", scale=4)
        find_states = compat.make(gr.Button, value="Find runs to resume", elem_id=f"{ELEM_ID}_find_states",
                                  size="sm", scale=1)
    return states, find_states


@dataclass
class TabLayout:
    """The tab's components by role. `fields` maps config keys to widgets; `keys` is their order."""
    keys: list[str]
    fields: dict[str, Any]
    sections: dict[str, Any]         # the accordions whose visibility follows the method
    preset: Any
    preset_info: Any
    config_path: Any
    save_config: Any
    load_config: Any
    upload: Any
    summary: Any
    start: Any
    stop: Any
    sample_now: Any
    save_now: Any
    message: Any
    status: Any
    result: Any
    copy: Any
    plot: Any
    gallery: Any
    log: Any
    states: Any
    find_states: Any

    @property
    def inputs(self) -> list:
        return [self.fields[k] for k in self.keys]

    @property
    def run_buttons(self) -> list:
        """Start, then the buttons that act on a running training (enabled only while one runs)."""
        return [self.start, self.stop, self.sample_now, self.save_now]


def build_layout(defaults: TrainConfig, *, show_model_section: bool, status_html: str) -> TabLayout:
    """Create the widgets inside the current gr.Blocks: the toolbar, the settings column and the run
    column. `status_html` is what the status shows before the first poll."""
    keys = layout_keys(show_model_section)
    initial = dict(zip(keys, config_to_values(defaults, keys)))
    fields: dict = {}

    def place(key: str, **extra):
        if key in METHOD_ONLY:
            extra.setdefault("visible", defaults.network.method in METHOD_ONLY[key])
        fields[key] = widget(SPECS[key], initial[key], **extra)

    def rows(parts: list[list[str]]):
        for row in parts:
            with gr.Row():
                for key in row:
                    place(key)

    with gr.Row(elem_id=f"{ELEM_ID}_toolbar"):
        preset = compat.make(gr.Dropdown, choices=[DEFAULTS] + preset_names(), value=None, label="Preset",
                             info="Sets the options that matter for a kind of job; the dataset is kept.",
                             elem_id=f"{ELEM_ID}_preset", scale=2)
        config_path = compat.make(gr.Textbox, label="Config file (TOML, same as the CLI)",
                                  placeholder="/path/to/config.toml", elem_id=f"{ELEM_ID}_config_path",
                                  info="Save writes every option; Load fills the form.", scale=3)
        with compat.make(gr.Column, scale=1, min_width=140, elem_id=f"{ELEM_ID}_config_buttons"):
            save_config = compat.make(gr.Button, value="Save config", elem_id=f"{ELEM_ID}_save", size="sm")
            load_config = compat.make(gr.Button, value="Load config", elem_id=f"{ELEM_ID}_load", size="sm")
            upload = compat.make(gr.UploadButton, label="Upload .toml", file_types=[".toml"], size="sm",
                                 elem_id=f"{ELEM_ID}_upload", **compat.file_kwargs())
    preset_info = gr.Markdown("", elem_id=f"{ELEM_ID}_preset_info")

    sections: dict = {}
    with gr.Row(equal_height=False):
        with compat.make(gr.Column, scale=3, elem_id=f"{ELEM_ID}_settings"):
            with compat.make(gr.Accordion, label="Dataset", open=True, elem_id=f"{ELEM_ID}_dataset"):
                place("data.train_dir", placeholder="/path/to/dataset  (holds e.g. 10_sks dog/)")
                summary = gr.HTML(summary_html(dataset_summary(defaults)), elem_id=f"{ELEM_ID}_dataset_summary")
                rows(LAYOUT["Dataset"]["rows"])
                with compat.make(gr.Accordion, label="Buckets, captions, augmentation", open=False):
                    rows(LAYOUT["Dataset"]["advanced"])
            with compat.make(gr.Group, elem_id=f"{ELEM_ID}_method_group"):
                place("network.method")
            for section in SECTIONS:
                if section == "Model" and not show_model_section:
                    continue
                with compat.make(gr.Accordion, label=section, open=section in OPEN_SECTIONS,
                                 elem_id=f"{ELEM_ID}_{section.lower()}",
                                 visible=section_visible(section, defaults.network.method)) as accordion:
                    sections[section] = accordion
                    rows(LAYOUT[section]["rows"])
                    if section == "Output":
                        states, find_states = _resume_list()
                    if LAYOUT[section]["advanced"]:
                        with compat.make(gr.Accordion, label="Advanced", open=False):
                            rows(LAYOUT[section]["advanced"])

        with compat.make(gr.Column, scale=2, elem_id=f"{ELEM_ID}_run"):
            with gr.Row():
                start = compat.make(gr.Button, value="Start training", variant="primary", elem_id=f"{ELEM_ID}_start")
                stop = compat.make(gr.Button, value="Stop", variant="stop", elem_id=f"{ELEM_ID}_stop",
                                   interactive=False)
            with compat.make(gr.Row, elem_id=f"{ELEM_ID}_now_row"):
                sample_now = compat.make(gr.Button, value="Sample now", elem_id=f"{ELEM_ID}_sample_now", size="sm",
                                         interactive=False)
                save_now = compat.make(gr.Button, value="Save now", elem_id=f"{ELEM_ID}_save_now", size="sm",
                                       interactive=False)
            message = gr.HTML("", elem_id=f"{ELEM_ID}_message")
            status = gr.HTML(status_html, elem_id=f"{ELEM_ID}_status")
            with compat.make(gr.Row, elem_id=f"{ELEM_ID}_result_row", equal_height=True):
                result = compat.make(gr.Textbox, value="", label="Use it in a prompt", lines=1, max_lines=1,
                                     placeholder="e.g. <lora:name:0.8>, when training ends",
                                     interactive=False, elem_id=f"{ELEM_ID}_result", scale=4)
                copy = compat.make(gr.Button, value="Copy", elem_id=f"{ELEM_ID}_copy", size="sm", scale=1,
                                   min_width=80)
            plot = compat.make(gr.Image, value=None, type="pil", label="Loss", interactive=False,
                               elem_id=f"{ELEM_ID}_loss_plot", show_download_button=False,
                               show_share_button=False, height=220)
            gallery = compat.make(gr.Gallery, value=None, label="Previews", elem_id=f"{ELEM_ID}_gallery",
                                  columns=4, height=200, object_fit="contain", show_share_button=False)
            with compat.make(gr.Accordion, label="Log", open=False, elem_id=f"{ELEM_ID}_log_box"):
                log = compat.make(gr.Textbox, value="", lines=8, max_lines=16, show_label=False,
                                  interactive=False, elem_id=f"{ELEM_ID}_log")

    return TabLayout(keys=keys, fields=fields, sections=sections, preset=preset, preset_info=preset_info,
                     config_path=config_path, save_config=save_config, load_config=load_config, upload=upload,
                     summary=summary, start=start, stop=stop, sample_now=sample_now, save_now=save_now,
                     message=message, status=status, result=result, copy=copy, plot=plot, gallery=gallery,
                     log=log, states=states, find_states=find_states)
