"""The fake WebUI behaves like the real 1.10.1 where the extension depends on it.

Restore helpers give back bit-identical weights after a merged LoRA, the queue lock serialises
callers, shared.state and the call wrappers follow the real semantics, the fake model holds the
very tensors it was built from.
"""
import json
import os
import struct
import sys
import threading
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "fake_webui")
if FAKE not in sys.path:
    sys.path.insert(0, FAKE)

import fake_sd_model as fsm  # noqa: E402
import fake_webui_control as fw  # noqa: E402
import networks  # noqa: E402
from modules import (call_queue, errors, progress, script_callbacks, sd_hijack, sd_models,  # noqa: E402
                     shared, shared_items)


@pytest.fixture(autouse=True)
def fresh_webui(tmp_path):
    fw.reset(tmp_path / "webui")
    yield
    fw.reset(tmp_path / "webui")


@pytest.fixture
def sd():
    return fsm.tiny_sd1_state_dict(seed=1)


@pytest.fixture
def model(sd):
    return fw.load_model(fsm.make_fake_sd_model(sd, None))


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


# --- the fake model -----------------------------------------------------------------------------

def test_model_holds_the_very_tensors_it_was_built_from(sd, model):
    params = dict(model.named_parameters())
    assert params["model.diffusion_model.input_blocks.0.0.weight"].data_ptr() == sd["model.diffusion_model.input_blocks.0.0.weight"].data_ptr()
    assert params["first_stage_model.quant_conv.weight"].data_ptr() == sd["first_stage_model.quant_conv.weight"].data_ptr()
    te = model.cond_stage_model.wrapped.transformer
    q = te.text_model.encoder.layers[1].self_attn.q_proj.weight
    assert q.data_ptr() == sd["cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"].data_ptr()
    tok = te.text_model.embeddings.token_embedding
    assert type(tok).__name__ == "EmbeddingsWithFixes" and isinstance(tok.wrapped, torch.nn.Embedding)
    assert tok.wrapped.weight.data_ptr() == sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].data_ptr()


def test_model_looks_like_the_webui_one(model):
    assert model is shared.sd_model
    assert model.is_sd1 and not (model.is_sd2 or model.is_sdxl or model.is_sd3)
    assert model.sd_model_hash == model.sd_checkpoint_info.shorthash and len(model.sd_model_hash) == 10
    assert model.sd_checkpoint_info.title == f"fake-sd15.safetensors [{model.sd_model_hash}]"
    assert model.lowvram is False and model.parameterization == "eps" and model.scale_factor == 0.18215
    assert model.alphas_cumprod.dtype == torch.float32 and model.alphas_cumprod.shape == (1000,)
    assert abs(float(model.alphas_cumprod[0]) - (1 - 0.00085)) < 1e-6
    keys = set(model.state_dict())
    # after sd_hijack the text encoder keys are NOT the checkpoint's
    assert "cond_stage_model.wrapped.transformer.text_model.embeddings.token_embedding.wrapped.weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    # ldm freezes VAE and text encoder only
    assert model.model.diffusion_model.time_embed[0].weight.requires_grad
    assert not model.first_stage_model.quant_conv.weight.requires_grad
    assert not any(p.requires_grad for p in model.cond_stage_model.parameters())
    # the Lora extension's model_loaded callback named every module
    assert model.model.diffusion_model.time_embed[0].network_layer_name == "diffusion_model_time_embed_0"
    assert model.network_layer_mapping["transformer_text_model_encoder_layers_0_self_attn_q_proj"] is \
        model.cond_stage_model.wrapped.transformer.text_model.encoder.layers[0].self_attn.q_proj


def test_undo_hijack_gives_back_checkpoint_keys(sd, model):
    sd_hijack.model_hijack.undo_hijack(model)
    schedule = set(fsm.SCHEDULE_BUFFERS)
    # transformers >= 4.31 keeps CLIP's position_ids out of the state dict (4.30, the WebUI pin, keeps it)
    pos = {"cond_stage_model.transformer.text_model.embeddings.position_ids"}
    assert set(model.state_dict()) - schedule - pos == set(sd) - pos


def test_text_encoder_is_a_working_clip(model):
    te = model.cond_stage_model.wrapped.transformer
    ids = torch.tensor([[0, 5, 9, 2]])
    out = te(input_ids=ids).last_hidden_state
    assert out.shape == (1, 4, 32) and torch.isfinite(out).all()
    assert torch.equal(te.text_model.embeddings.position_ids[0, :5], torch.arange(5))


def test_sd2_layout_builds_an_openclip_tree_with_multihead_attention():
    sd = fsm.tiny_sd1_state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("cond_stage_model.")}
    p = "cond_stage_model.model."
    sd.update({f"{p}token_embedding.weight": torch.randn(64, 16), f"{p}positional_embedding": torch.randn(77, 16),
               f"{p}transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
               f"{p}transformer.resblocks.0.attn.in_proj_bias": torch.randn(48),
               f"{p}transformer.resblocks.0.attn.out_proj.weight": torch.randn(16, 16),
               f"{p}transformer.resblocks.0.attn.out_proj.bias": torch.randn(16),
               f"{p}transformer.resblocks.0.ln_1.weight": torch.randn(16), f"{p}transformer.resblocks.0.ln_1.bias": torch.randn(16),
               f"{p}ln_final.weight": torch.randn(16), f"{p}ln_final.bias": torch.randn(16)})
    m = fw.load_model(fsm.make_fake_sd_model(sd, parameterization="v"))
    assert m.is_sd2 and not m.is_sd1 and m.parameterization == "v"
    oc = m.cond_stage_model.wrapped.model
    attn = oc.transformer.resblocks[0].attn
    assert isinstance(attn, torch.nn.MultiheadAttention)
    assert isinstance(oc.transformer.resblocks[0].ln_1, torch.nn.LayerNorm)
    assert type(oc.token_embedding).__name__ == "EmbeddingsWithFixes"
    before = snapshot(m)
    fsm.apply_merged_lora(m, {f"{p}transformer.resblocks.0.attn.in_proj_weight": torch.ones(48, 16),
                              f"{p}transformer.resblocks.0.attn.out_proj.weight": torch.ones(16, 16)})
    assert isinstance(attn.network_weights_backup, tuple)
    assert not torch.equal(attn.in_proj_weight, before["cond_stage_model.wrapped.model.transformer.resblocks.0.attn.in_proj_weight"])
    assert fsm.restore_all(m) == 1
    after = snapshot(m)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_state_dicts_are_refused_with_the_expected_layout():
    with pytest.raises(ValueError, match="model.diffusion_model"):
        fsm.make_fake_sd_model({"unet.conv_in.weight": torch.zeros(1)})
    sd = {k: v for k, v in fsm.tiny_sd1_state_dict().items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(ValueError, match="no text encoder"):
        fsm.make_fake_sd_model(sd)


# --- merged LoRA and the restore helpers --------------------------------------------------------

def lora_deltas():
    return {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.full((32, 32), 0.5),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight": torch.full((32, 32), 0.25),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.bias": torch.full((32,), 1.0),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.full((32, 32, 1, 1), -0.5),
        "model.diffusion_model.input_blocks.1.1.norm.weight": torch.full((32,), 0.1),
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": torch.full((32, 32), 0.3),
    }


def test_restore_gives_back_bit_identical_weights_in_the_same_storage(model):
    before = snapshot(model)
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    touched = fsm.apply_merged_lora(model, lora_deltas())
    assert len(touched) == 5
    merged = model.state_dict()
    q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(merged[q], before[q] + 0.5)
    assert merged[q].data_ptr() == ptrs[q]                          # merged in place
    te_q = "cond_stage_model.wrapped.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[te_q], before[te_q])
    for m in touched:
        assert m.network_weights_backup.device.type == "cpu"
        assert m.network_current_names == (("fake_lora", 1.0, 1.0, None),)

    with call_queue.queue_lock:
        for m in model.modules():
            with torch.no_grad():
                networks.network_restore_weights_from_backup(m)
            networks.network_reset_cached_weight(m)

    after = model.state_dict()
    for k in before:
        assert torch.equal(after[k], before[k]), k
        assert after[k].data_ptr() == ptrs[k], k
    assert all(getattr(m, "network_weights_backup", None) is None for m in touched)
    assert all(m.network_current_names == () for m in touched)


def test_restore_without_reset_leaves_the_module_believing_it_is_merged(model):
    # REFERENCE: restore alone makes the next generation skip re-applying
    fsm.apply_merged_lora(model, lora_deltas())
    mod = model.model.diffusion_model.input_blocks[1][1].proj_in
    with torch.no_grad():
        networks.network_restore_weights_from_backup(mod)
    assert mod.network_current_names != ()
    assert mod.network_weights_backup is not None


def test_restore_outside_no_grad_fails_on_unet_weights_like_the_real_one(model):
    fsm.apply_merged_lora(model, lora_deltas())
    mod = model.model.diffusion_model.input_blocks[1][1].proj_in
    with pytest.raises(RuntimeError, match="requires grad"):
        networks.network_restore_weights_from_backup(mod)


def test_reapplying_the_same_lora_is_a_noop_and_another_one_replaces_it(model):
    key = "model.diffusion_model.time_embed.0.weight"
    original = model.state_dict()[key].clone()
    fsm.apply_merged_lora(model, {key: torch.ones(128, 32)})
    fsm.apply_merged_lora(model, {key: torch.ones(128, 32)})
    assert torch.equal(model.state_dict()[key], original + 1)
    fsm.apply_merged_lora(model, {key: torch.full((128, 32), 3.0)}, network_name="other")
    assert torch.equal(model.state_dict()[key], original + 3)     # restored first, not stacked
    fsm.restore_all(model)
    assert torch.equal(model.state_dict()[key], original)


def test_apply_merged_lora_refuses_unknown_names(model):
    with pytest.raises(KeyError, match="not a parameter"):
        fsm.apply_merged_lora(model, {"model.diffusion_model.nope.weight": torch.zeros(1)})


# --- queue lock, task registry, wrappers ----------------------------------------------------------

def test_queue_lock_blocks_a_second_caller_until_the_first_is_done():
    events = []
    inside = threading.Event()
    release = threading.Event()

    def first(id_task):
        events.append("first-start")
        inside.set()
        release.wait(5)
        events.append("first-end")
        return ["", "done"]

    def second(id_task):
        events.append("second-start")
        return ["", "done"]

    t1 = threading.Thread(target=call_queue.wrap_gradio_gpu_call(first), args=("task(a)",))
    t1.start()
    assert inside.wait(5)
    t2 = threading.Thread(target=call_queue.wrap_gradio_gpu_call(second), args=("task(b)",))
    t2.start()
    time.sleep(0.2)
    assert events == ["first-start"]                     # second waits on queue_lock
    assert progress.current_task == "task(a)"
    assert "task(b)" in progress.pending_tasks
    assert progress.progressapi(progress.ProgressRequest(id_task="task(b)"))["textinfo"] == "In queue: 1/1"
    assert call_queue.queue_lock.acquire(blocking=False) is False
    release.set()
    t1.join(5)
    t2.join(5)
    assert events == ["first-start", "first-end", "second-start"]
    assert progress.finished_tasks[-2:] == ["task(a)", "task(b)"]
    assert not call_queue.queue_lock.locked()


def test_gpu_call_runs_begin_end_and_appends_stats_to_the_last_output():
    seen = {}

    def job(id_task, x):
        seen["job"] = shared.state.job
        seen["job_count"] = shared.state.job_count
        shared.state.interrupt()
        return [x * 2, "<p>ok</p>"]

    out = call_queue.wrap_gradio_gpu_call(job)("task(x1)", 21)
    assert seen == {"job": "task(x1)", "job_count": -1}
    assert out[0] == 42 and out[1].startswith("<p>ok</p><div class='performance'>")
    assert shared.state.job == "" and shared.state.job_count == 0
    assert shared.state.interrupted is False                # wrap_gradio_call resets it
    assert progress.recorded_results[-1] == ("task(x1)", [42, "<p>ok</p>"])


def test_gpu_call_turns_an_exception_into_outputs_and_releases_the_lock():
    def boom(id_task):
        raise ValueError("bad folder")

    out = call_queue.wrap_gradio_gpu_call(boom, extra_outputs=[None])("task(e)")
    assert out[0] is None and "ValueError: bad folder" in out[1]
    assert not call_queue.queue_lock.locked()
    assert progress.current_task is None and "task(e)" in progress.finished_tasks
    assert any("Error completing request" in r for r in errors.reported)


def test_gpu_call_needs_a_string_last_output_like_the_real_one():
    with pytest.raises(TypeError):
        call_queue.wrap_gradio_gpu_call(lambda: [1, 2])()


def test_state_begin_end_interrupt_like_the_real_one():
    st = shared.state
    st.interrupt()
    st.skip()
    assert st.interrupted and st.skipped
    st.begin(job="train")
    assert (st.job, st.job_count, st.job_no, st.sampling_step, st.interrupted, st.skipped, st.textinfo) == ("train", -1, 0, 0, False, False, None)
    st.job_count, st.sampling_steps, st.sampling_step = 1, 100, 25
    st.textinfo = "step 25/100"
    progress.start_task("task(t)")
    info = progress.progressapi(progress.ProgressRequest(id_task="task(t)", live_preview=False))
    assert info["active"] and info["progress"] == pytest.approx(0.25) and info["textinfo"] == "step 25/100"
    st.interrupt()
    assert st.interrupted
    st.end()
    assert st.job == "" and st.job_count == 0
    assert st.interrupted  # end() does not clear it; the next begin() or wrap_gradio_call does
    from PIL import Image
    st.assign_current_image(Image.new("RGBA", (8, 8)))
    assert st.id_live_preview == 1 and st.current_image.mode == "RGBA"
    shared.opts.live_previews_image_format = "jpeg"
    st.assign_current_image(Image.new("RGBA", (8, 8)))
    assert st.current_image.mode == "RGB"


def test_wrap_queued_call_holds_the_lock():
    seen = []
    call_queue.wrap_queued_call(lambda: seen.append(call_queue.queue_lock.locked()))()
    assert seen == [True] and not call_queue.queue_lock.locked()


# --- callbacks, options, command line, model property, refresh hooks --------------------------------

def test_ui_tabs_callbacks_are_collected_and_failures_reported():
    script_callbacks.on_ui_tabs(lambda: [("blocks", "Trainer", "trainer")])
    script_callbacks.on_ui_tabs(lambda: 1 / 0)
    script_callbacks.on_ui_tabs(lambda: None)
    assert script_callbacks.ui_tabs_callback() == [("blocks", "Trainer", "trainer")]
    assert any("ui_tabs_callback" in r for r in errors.reported)
    got = []
    script_callbacks.on_app_started(lambda demo, app: got.append((demo, app)))
    script_callbacks.app_started_callback(None, "app")
    assert got == [(None, "app")]


def test_opts_add_option_keeps_a_saved_value_and_onchange_runs():
    shared.opts.data["trainer_x"] = 7
    info = shared.OptionInfo(3, "X", section=("trainer", "Trainer")).info("hint").needs_reload_ui()
    shared.opts.add_option("trainer_x", info)
    shared.opts.add_option("trainer_y", shared.OptionInfo("a", "Y", section=("trainer", "Trainer")))
    assert shared.opts.trainer_x == 7 and shared.opts.trainer_y == "a"
    assert "(hint)" in info.comment_after and "Reload UI" in info.comment_after
    calls = []
    shared.opts.onchange("trainer_y", lambda: calls.append(shared.opts.trainer_y), call=False)
    assert shared.opts.set("trainer_y", "b") is True and calls == ["b"]
    assert shared.opts.CLIP_stop_at_last_layers == 1 and shared.opts.sd_vae == "Automatic"
    assert shared.opts.hidden_tabs == [] and shared.opts.ui_tab_order == []


def test_cmd_opts_have_webui_folders_and_this_extensions_preload_options(tmp_path):
    opts = fw.reset(tmp_path / "w", argv=["--trainer-max-resolution", "768", "--trainer-disable-api"])
    assert opts.lora_dir == str(tmp_path / "w" / "models" / "Lora")
    assert opts.embeddings_dir == str(tmp_path / "w" / "embeddings")
    assert opts.hypernetwork_dir == str(tmp_path / "w" / "models" / "hypernetworks")
    assert opts.trainer_max_resolution == 768 and opts.trainer_disable_api and opts.trainer_output_dir is None
    assert shared.cmd_opts is opts


@pytest.mark.parametrize("value", ["700", "big", "0"])
def test_bad_max_resolution_is_refused_with_the_option_name(tmp_path, value, capsys):
    with pytest.raises(SystemExit):
        fw.reset(tmp_path / "w", argv=["--trainer-max-resolution", value])
    assert "--trainer-max-resolution" in capsys.readouterr().err


def test_reading_sd_model_before_any_load_asks_the_webui_to_load_one():
    assert shared.sd_model is None
    assert sd_models.load_model_calls == [None]
    sd_models.fake_loader = lambda: fsm.make_fake_sd_model(fsm.tiny_sd1_state_dict())
    m = shared.sd_model
    assert m is not None and m.is_sd1 and shared.sd_model is m


def write_safetensors(path, metadata):
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")


def test_refresh_hooks_find_new_files():
    from pathlib import Path
    import network
    lora_dir = Path(shared.cmd_opts.lora_dir)
    write_safetensors(lora_dir / "mine.safetensors", {"ss_output_name": "my_alias", "ss_tag_frequency": '{"a": {"b": 1}}'})
    write_safetensors(lora_dir / "v2.safetensors", {"ss_v2": "True"})
    networks.list_available_networks()
    assert networks.list_available_networks_calls == 1
    entry = networks.available_networks["mine"]
    assert entry.alias == "my_alias" and entry.sd_version == network.SdVersion.SD1
    assert entry.metadata["ss_tag_frequency"] == {"a": {"b": 1}}
    assert networks.available_networks["v2"].sd_version == network.SdVersion.SD2
    assert networks.available_network_aliases["my_alias"] is entry


    (Path(shared.cmd_opts.hypernetwork_dir) / "hn.pt").write_bytes(b"x")
    shared.reload_hypernetworks()
    assert shared_items.reload_hypernetworks_calls == 1 and list(shared.hypernetworks) == ["hn"]


@pytest.fixture
def model_with_tokenizer(tmp_path):
    tiny = pytest.importorskip("extensions_lib.model.tiny")
    sd, tok = tiny.tiny_ldm_state_dict(tmp_path / "tok", seed=0)
    return fw.load_model(fsm.make_fake_sd_model(sd, tok))


def test_embedding_database_loads_reports_and_skips_like_the_webui(tmp_path, model_with_tokenizer):
    from pathlib import Path

    import safetensors.torch
    from PIL import Image

    width = model_with_tokenizer.cond_stage_model.encode_embedding_init_text(",", 1).shape[1]
    d = Path(shared.cmd_opts.embeddings_dir)
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": torch.ones(2, width)}, "name": "webui", "step": 5}, d / "webui.pt")
    safetensors.torch.save_file({"emb": torch.ones(width)}, str(d / "concept.safetensors"))
    safetensors.torch.save_file({"a": torch.ones(1, width), "b": torch.ones(1, width)}, str(d / "two.safetensors"))
    safetensors.torch.save_file({"emb": torch.ones(1, width + 1)}, str(d / "wide.safetensors"))
    torch.save({"string_to_param": {"*": torch.ones(1, width)}, "code": Path("x")}, d / "code.pt")
    (d / "garbage.pt").write_bytes(b"x")
    (d / "empty.pt").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(d / "webui.preview.png")

    db = sd_hijack.model_hijack.embedding_db
    db.load_textual_inversion_embeddings()            # first scan: the folder is new
    assert list(db.word_embeddings) == ["concept", "webui"]
    assert db.word_embeddings["webui"].vectors == 2 and db.word_embeddings["webui"].step == 5
    assert db.word_embeddings["concept"].vectors == 1 and db.word_embeddings["concept"].shape == width
    assert list(db.skipped_embeddings) == ["wide"]
    reported = "\n".join(errors.reported)
    for bad in ("two.safetensors", "code.pt", "garbage.pt"):
        assert bad in reported, reported
    assert "empty.pt" not in reported and "preview" not in reported
    db.load_textual_inversion_embeddings()            # nothing changed: no rescan
    assert db.load_calls == [False, False] and list(db.word_embeddings) == ["concept", "webui"]


@pytest.mark.parametrize("kohya, webui", [
    ("lora_unet_conv_in", "diffusion_model_input_blocks_0_0"),
    ("lora_unet_down_blocks_1_attentions_0_proj_in", "diffusion_model_input_blocks_4_1_proj_in"),
    ("lora_unet_down_blocks_2_resnets_0_conv_shortcut", "diffusion_model_input_blocks_7_0_skip_connection"),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", "diffusion_model_input_blocks_9_0_op"),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
     "diffusion_model_middle_block_1_transformer_blocks_0_attn1_to_q"),
    ("lora_unet_mid_block_resnets_1_conv2", "diffusion_model_middle_block_2_out_layers_3"),
    ("lora_unet_up_blocks_0_resnets_2_time_emb_proj", "diffusion_model_output_blocks_2_0_emb_layers_1"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "diffusion_model_output_blocks_2_1_conv"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "diffusion_model_output_blocks_8_2_conv"),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "diffusion_model_output_blocks_11_1_proj_out"),
    ("lora_unet_time_embedding_linear_2", "diffusion_model_time_embed_2"),
    ("lora_te_text_model_encoder_layers_11_self_attn_q_proj", "transformer_text_model_encoder_layers_11_self_attn_q_proj"),
])
def test_lora_names_become_the_sd15_layer_names(kohya, webui):
    """SD1.5's layer names (ldm input_blocks 4 = level 1's first attention, output_blocks 2 holds the first
    upsampler, ...), which the WebUI's Lora support matches kohya names to."""
    assert networks.convert_diffusers_name_to_compvis(kohya, is_sd2=False) == webui


def test_sd2_text_encoder_names_become_openclip_names():
    conv = networks.convert_diffusers_name_to_compvis
    assert conv("lora_te_text_model_encoder_layers_3_mlp_fc1", True) == "model_transformer_resblocks_3_mlp_c_fc"
    assert conv("lora_te_text_model_encoder_layers_3_self_attn_out_proj", True) == \
        "model_transformer_resblocks_3_attn_out_proj"


def _lora_file(path, tensors):
    import safetensors.torch

    safetensors.torch.save_file(tensors, str(path))
    import network
    return network.NetworkOnDisk(path.stem, str(path))


def test_load_network_matches_modules_and_refuses_wrong_shapes(tmp_path, model):
    te_q = model.cond_stage_model.wrapped.transformer.text_model.encoder.layers[0].self_attn.q_proj
    width = te_q.weight.shape[1]
    good = _lora_file(tmp_path / "good.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, width),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(width, 2),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha": torch.tensor(1.0),
        "lora_unet_nowhere.lora_down.weight": torch.ones(2, 4),
    })
    net = networks.load_network("good", good)
    (mod,) = net.modules.values()
    assert mod.sd_module is te_q and mod.kind == "lora" and mod.dim == 2
    assert list(net.keys_failed_to_match) == ["lora_unet_nowhere.lora_down.weight"]
    torch.testing.assert_close(mod.calc_updown(te_q.weight), torch.full_like(te_q.weight, 2.0 * 0.5))

    bad = _lora_file(tmp_path / "bad.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(2, width + 1),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.ones(width, 2),
    })
    (mod,) = networks.load_network("bad", bad).modules.values()
    with pytest.raises(ValueError, match="cannot be added"):
        mod.calc_updown(te_q.weight)
    odd = _lora_file(tmp_path / "odd.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.something": torch.ones(2)})
    with pytest.raises(AssertionError, match="module type"):
        networks.load_network("odd", odd)


def test_extension_scripts_import_with_the_extension_on_sys_path_only_while_loading(tmp_path):
    ext = tmp_path / "ext"
    (ext / "scripts").mkdir(parents=True)
    (ext / "mypkg_fakecheck").mkdir()
    (ext / "mypkg_fakecheck" / "__init__.py").write_text("NAME = 'Trainer'\n")
    (ext / "scripts" / "tab.py").write_text(
        "import mypkg_fakecheck\nfrom modules import script_callbacks\n"
        "script_callbacks.on_ui_tabs(lambda: [(None, mypkg_fakecheck.NAME, 'trainer')])\n")
    fw.load_extension_scripts(str(ext))
    assert str(ext) not in sys.path
    assert script_callbacks.ui_tabs_callback() == [(None, "Trainer", "trainer")]


def test_builds_from_the_projects_tiny_ldm_state_dict_and_computes_like_its_bundle(tmp_path):
    ldm = pytest.importorskip("extensions_lib.model.ldm")
    tiny = pytest.importorskip("extensions_lib.model.tiny")
    sd, tok = tiny.tiny_ldm_state_dict(tmp_path / "tok", seed=3)
    m = fw.load_model(fsm.make_fake_sd_model(sd, tok))
    held = m.state_dict()
    for key, tensor in sd.items():   # every checkpoint tensor is held, in place, under its WebUI name
        name = fsm.webui_param_name(key)
        if name not in held and key.startswith("cond_stage_model.") and not key.startswith(fsm.TE1):
            name = "cond_stage_model.wrapped." + key[len("cond_stage_model."):]
        if key.endswith("position_ids") and name not in held:
            continue                 # transformers >= 4.31 keeps it out of the state dict
        assert held[name].data_ptr() == tensor.data_ptr(), key
    bundle = tiny.build_tiny_bundle(tmp_path / "tok", seed=3)
    ids = tok(["a photo of sks"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ours = m.cond_stage_model.wrapped.transformer(ids).last_hidden_state
        theirs = bundle.text_encoder(ids).last_hidden_state
    assert torch.equal(ours, theirs)
