"""Caption augmentation with sd-scripts' semantics (shuffle_caption, keep_tokens, tag and caption
dropout). Tags are the comma-separated parts of a caption."""
from __future__ import annotations

import random


def split_tags(caption: str) -> list[str]:
    """"a, b,,c " -> ["a", "b", "c"]: stripped, empty parts dropped."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def process_caption(caption: str, *, shuffle: bool = False, keep_tokens: int = 0, tag_dropout_rate: float = 0.0,
                    caption_dropout_rate: float = 0.0, rng: random.Random) -> str:
    """One epoch's version of `caption`.

    With probability caption_dropout_rate the whole caption becomes "" (unconditional sample).
    Otherwise the first keep_tokens tags stay in place; each later tag is dropped with
    probability tag_dropout_rate and, if shuffle, the survivors are shuffled. Without any
    augmentation the caption is returned unchanged.
    """
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    if not shuffle and tag_dropout_rate <= 0:
        return caption
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    if tag_dropout_rate > 0:
        rest = [t for t in rest if rng.random() >= tag_dropout_rate]
    if shuffle:
        rng.shuffle(rest)
    return ", ".join(kept + rest)


def tag_counts(captions: list[str]) -> dict[str, int]:
    """Tag -> number of occurrences over `captions`, lower-cased as in kohya's ss_tag_frequency."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in split_tags(caption):
            tag = tag.lower()
            counts[tag] = counts.get(tag, 0) + 1
    return counts
