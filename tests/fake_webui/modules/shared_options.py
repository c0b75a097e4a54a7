"""Fake of modules/shared_options.py (1.10.1): the built-in settings the extension may read, with the
real keys and defaults (the real file defines a few hundred)."""
from modules.options import OptionInfo, options_section

options_templates = {}

options_templates.update(options_section(('training', "Training", "training"), {
    "unload_models_when_training": OptionInfo(False, "Move VAE and CLIP to RAM when training if possible. Saves VRAM."),
    "pin_memory": OptionInfo(False, "Turn on pin_memory for DataLoader."),
    "save_optimizer_state": OptionInfo(False, "Saves Optimizer state as separate *.optim file."),
    "training_xattention_optimizations": OptionInfo(False, "Use cross attention optimizations while training"),
}))

options_templates.update(options_section(('sd', "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "sd_checkpoints_limit": OptionInfo(1, "Maximum number of checkpoints loaded at the same time"),
    "sd_checkpoint_cache": OptionInfo(0, "Checkpoints to cache in RAM"),
    "CLIP_stop_at_last_layers": OptionInfo(1, "Clip skip", None, {"minimum": 1, "maximum": 12, "step": 1}, infotext="Clip skip"),
    "upcast_attn": OptionInfo(False, "Upcast cross attention layer to float32"),
}))

options_templates.update(options_section(('vae', "VAE", "sd"), {
    "sd_vae": OptionInfo("Automatic", "SD VAE", infotext='VAE'),
    "sd_vae_overrides_per_model_preferences": OptionInfo(True, "Selected VAE overrides per-model preferences"),
}))

options_templates.update(options_section(('optimizations', "Optimizations", "sd"), {
    "fp8_storage": OptionInfo("Disable", "FP8 weight", None, {"choices": ["Disable", "Enable for SDXL", "Enable"]}),
    "cache_fp16_weight": OptionInfo(False, "Cache FP16 weight for LoRA"),
}))

options_templates.update(options_section(('system', "System", "system"), {
    "memmon_poll_rate": OptionInfo(8, "VRAM usage polls per second during generation."),
}))

options_templates.update(options_section(('profiler', "Profiler", "system"), {
    "profiling_enable": OptionInfo(False, "Enable profiling"),
}))

options_templates.update(options_section(('textual_inversion', "Textual Inversion", "sd"), {
    "textual_inversion_print_at_load": OptionInfo(False, "Print a list of Textual Inversion embeddings when loading model"),
}))

options_templates.update(options_section(('interrogate', "Interrogate"), {
    "interrogate_keep_models_in_memory": OptionInfo(False, "Keep models in VRAM"),
    "interrogate_return_ranks": OptionInfo(False, "Include ranks of model tags matches in results."),
    "interrogate_clip_num_beams": OptionInfo(1, "BLIP: num_beams"),
    "interrogate_clip_min_length": OptionInfo(24, "BLIP: minimum description length"),
    "interrogate_clip_max_length": OptionInfo(48, "BLIP: maximum description length"),
    "interrogate_deepbooru_score_threshold": OptionInfo(0.5, "deepbooru: score threshold"),
    "deepbooru_sort_alpha": OptionInfo(True, "deepbooru: sort tags alphabetically"),
    "deepbooru_use_spaces": OptionInfo(True, "deepbooru: use spaces in tags"),
    "deepbooru_escape": OptionInfo(True, "deepbooru: escape (\\) brackets"),
    "deepbooru_filter_tags": OptionInfo("", "deepbooru: filter out those tags"),
}))

options_templates.update(options_section(('ui', "User interface", "ui"), {
    "ui_tab_order": OptionInfo([], "UI tab order").needs_reload_ui(),
    "hidden_tabs": OptionInfo([], "Hidden UI tabs").needs_reload_ui(),
}))

options_templates.update(options_section(('ui', "Live previews", "ui"), {
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "live_previews_image_format": OptionInfo("png", "Live preview file format", None, {"choices": ["jpeg", "png", "webp"]}),
    "show_progress_grid": OptionInfo(True, "Show previews of all images generated in a batch as a grid"),
    "show_progress_every_n_steps": OptionInfo(10, "Live preview display period"),
}))

# added by extensions-builtin/Lora/scripts/lora_script.py on_ui_settings
options_templates.update(options_section(('extra_networks', "Extra Networks", "sd"), {
    "lora_functional": OptionInfo(False, "Lora/Networks: use old method that takes longer when you have multiple Loras active"),
    "lora_show_all": OptionInfo(False, "Always show all networks on the Lora page"),
    "lora_hide_unknown_for_versions": OptionInfo([], "Hide networks of unknown versions for model versions"),
}))
