"""Caption -> text-encoder conditioning, the way the WebUI builds it at generation time.

Long captions are cut into 75-token chunks, each wrapped in its own start/end tokens and encoded
separately, then concatenated (max_token_length 150 -> 2 chunks -> 154 context tokens). Clip skip
takes the N-th last hidden layer through the final layer norm, as the WebUI does.
"""
from __future__ import annotations

import torch

CHUNK = 75


def tokenize(tokenizer, captions: list[str], max_token_length: int = 75) -> torch.Tensor:
    """(B, chunks*77) token ids."""
    n_chunks = max(1, max_token_length // CHUNK)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for text in captions:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        ids = ids[: n_chunks * CHUNK]
        row = []
        for c in range(n_chunks):
            part = ids[c * CHUNK:(c + 1) * CHUNK]
            chunk = [bos] + part + [eos]
            chunk += [pad] * (CHUNK + 2 - len(chunk))
            row.extend(chunk)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def encode(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """(B, chunks*77) ids -> (B, chunks*77, width) conditioning."""
    b, total = ids.shape
    n = total // (CHUNK + 2)
    flat = ids.reshape(b * n, CHUNK + 2).to(text_encoder.device)
    if clip_skip > 1:
        out = text_encoder(flat, output_hidden_states=True)
        hidden = out.hidden_states[-clip_skip]
        hidden = text_encoder.text_model.final_layer_norm(hidden)
    else:
        hidden = text_encoder(flat).last_hidden_state
    return hidden.reshape(b, n * (CHUNK + 2), hidden.shape[-1])


class TextConditioner:
    """Encodes captions; remembers outputs when the text encoder is frozen and captions repeat."""

    def __init__(self, tokenizer, text_encoder, *, max_token_length: int, clip_skip: int, cache: bool):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_token_length = max_token_length
        self.clip_skip = clip_skip
        self.cache = {} if cache else None

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if self.cache is None:
            return encode(self.text_encoder, tokenize(self.tokenizer, captions, self.max_token_length),
                          self.clip_skip)
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            with torch.no_grad():
                out = encode(self.text_encoder, tokenize(self.tokenizer, missing, self.max_token_length),
                             self.clip_skip)
            for c, h in zip(missing, out):
                self.cache[c] = h.float()
        return torch.stack([self.cache[c] for c in captions])
