"""Preview prompt lines with sd-scripts' per-prompt options (--n --w --h --s --l --d)."""
import numpy as np
import pytest

from extensions_lib.config.prompt_line import PromptLineError, check_prompt_line, parse_prompt_line
from extensions_lib.train.preview import sample_images
from helpers import tiny_bundle

DEFAULTS = dict(negative="lowres", width=512, height=576, steps=20, cfg_scale=7.0, seed=1234)


def test_every_option_is_read_in_any_order_and_case():
    a = parse_prompt_line("a photo of sks dog --n blurry, ugly --w 640 --h 768 --s 30 --l 6.5 --d 42", **DEFAULTS)
    b = parse_prompt_line("a photo of sks dog --D 42 --l 6.5 --S 30 --h 768 --W 640 --n blurry, ugly", **DEFAULTS)
    assert a == b
    assert (a.prompt, a.negative, a.width, a.height, a.steps, a.cfg_scale, a.seed) == (
        "a photo of sks dog", "blurry, ugly", 640, 768, 30, 6.5, 42)


def test_repeated_spaces_and_tabs_around_options_do_not_matter():
    p = parse_prompt_line("  sks   dog \t --w    64 \t--h\t128   --n   dark   room  ", **DEFAULTS)
    assert (p.prompt, p.width, p.height, p.negative) == ("sks   dog", 64, 128, "dark   room")


def test_dashes_inside_words_are_prompt_text():
    p = parse_prompt_line("a well--lit room, sks--style, x-- y --w 64", **DEFAULTS)
    assert p.prompt == "a well--lit room, sks--style, x-- y" and p.width == 64
    # a bare "--" followed by a space names no option either
    assert parse_prompt_line("before -- after", **DEFAULTS).prompt == "before -- after"


def test_what_a_line_leaves_out_comes_from_the_sample_settings():
    p = parse_prompt_line("sks dog --s 5", **DEFAULTS)
    assert (p.prompt, p.steps) == ("sks dog", 5)
    assert (p.negative, p.width, p.height, p.cfg_scale, p.seed) == ("lowres", 512, 576, 7.0, 1234)
    plain = parse_prompt_line("sks dog", **DEFAULTS)
    assert plain == parse_prompt_line("sks dog --s 20", **DEFAULTS) and plain.prompt == "sks dog"
    # "--n" with nothing after it: no negative prompt for this line, whatever sample.negative_prompt says
    assert parse_prompt_line("sks dog --n", **DEFAULTS).negative == ""


@pytest.mark.parametrize("line, option, why", [
    ("sks --w 70", "--w", "multiple of 8"),
    ("sks --h 100", "--h", "multiple of 8"),
    ("sks --w 4096", "--w", "outside 64..2048"),
    ("sks --s 0", "--s", "outside 1..150"),
    ("sks --s two", "--s", "whole number"),
    ("sks --l abc", "--l", "number like 7.5"),
    ("sks --l inf", "--l", "finite"),
    ("sks --d -1", "--d", "outside"),
    ("sks --d", "--d", "needs a value"),
    ("sks --w 64 --w 72", "--w", "twice"),
    ("sks --x 3", "--x", "unknown option"),
    ("sks --ss euler_a", "--ss", "sd-scripts option"),
    ("--w 64 --h 64", "", "prompt before the options is empty"),
])
def test_a_bad_line_is_refused_naming_the_line_and_the_option(line, option, why):
    with pytest.raises(PromptLineError) as e:
        check_prompt_line(line)
    message = str(e.value)
    assert f"sample.prompts line {line!r}" in message and option in message and why in message, message


def test_a_good_line_passes_the_check():
    check_prompt_line("sks dog --n blurry --w 64 --h 128 --s 2 --l 5 --d 7")


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_line_sets_the_preview_size_and_its_seed_reproduces_it():
    bundle = tiny_bundle()
    line = "a photo of sks --w 64 --h 128 --s 2 --d 7"
    first, = sample_images(bundle, [line], width=64, height=64, steps=3, seed=99)
    assert first.size == (64, 128)
    # the line's seed, not the run's seed or the line's position, decides the noise
    again = sample_images(bundle, ["sks", line], width=64, height=64, steps=3, seed=5)[1]
    assert np.array_equal(_pixels(first), _pixels(again))
    other, = sample_images(bundle, [line.replace("--d 7", "--d 8")], width=64, height=64, steps=3, seed=99)
    assert other.size == (64, 128)
    assert np.abs(_pixels(first) - _pixels(other)).mean() > 1.0


def test_lines_without_a_seed_keep_the_run_seed_plus_their_position():
    bundle = tiny_bundle()
    kw = dict(width=64, height=64, steps=2)
    second = sample_images(bundle, ["sks", "a photo of sks"], seed=7, **kw)[1]
    alone, = sample_images(bundle, ["a photo of sks"], seed=8, **kw)
    assert second.size == (64, 64)
    assert np.array_equal(_pixels(second), _pixels(alone))


def test_a_bad_line_stops_sample_images_before_any_sampling():
    bundle = tiny_bundle()
    calls = []
    forward = bundle.unet.forward
    bundle.unet.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    with pytest.raises(PromptLineError, match="--w 70"):
        sample_images(bundle, ["sks", "sks --w 70"], width=64, height=64, steps=2)
    assert calls == []


def test_a_bad_prompt_line_is_refused_by_the_config_check_before_training():
    from extensions_lib.config import ConfigError, TrainConfig

    cfg = TrainConfig()
    cfg.data.train_dir = "/anywhere"
    cfg.sample.prompts = ["a photo of sks --w 512", "a photo of sks --w 70"]
    with pytest.raises(ConfigError) as e:
        cfg.check()
    assert [p.field for p in e.value.problems] == ["sample.prompts[1]"]
    assert "--w 70 is not a multiple of 8" in str(e.value)
