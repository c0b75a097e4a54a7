"""CLIP tokenizers from vocab.json + merges.txt, padded the way each SD version was trained."""
from __future__ import annotations

from pathlib import Path

from .bundle import SD2


def clip_tokenizer(folder: Path, version: str = "sd1", *, fast: bool = True):
    """Prefers the fast tokenizer for real vocabularies (the slow one mis-tokenizes some strings
    without ftfy); the tiny character vocabulary uses the slow one, which the WebUI also holds."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    vocab, merges = str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt")
    tok = None
    if fast:
        try:
            tok = CLIPTokenizerFast(vocab_file=vocab, merges_file=merges, model_max_length=77)
        except Exception:  # noqa: BLE001 - building the fast one needs `tokenizers`; slow always works
            tok = None
    if tok is None:
        tok = CLIPTokenizer(vocab, merges, model_max_length=77)
    return pad_for_version(tok, version)


def pad_for_version(tok, version: str):
    """SD2 (OpenCLIP) pads with "!" (id 0), SD1 with the end token. Set AFTER construction: given
    to the constructor, newer transformers register "!" as a special token split out of the text,
    so a prompt's "!" would become the pad id instead of the word-final "!</w>"."""
    tok.pad_token = "!" if version == SD2 else "<|endoftext|>"
    return tok
