"""Fake of modules/sd_hijack_open_clip.py (1.10.1): the wrapper around the SD2 OpenCLIP text encoder.

`.wrapped` is the ldm FrozenOpenCLIPEmbedder (its `.model` the open_clip model); the real one takes
token ids from open_clip's tokenizer (start 49406, end 49407, pad 0). tokenize(texts) and
encode_embedding_init_text(text, nvpt) use that tokenizer (tests/fake_webui/open_clip) as the real one does.
"""
import torch


class FrozenOpenCLIPEmbedderWithCustomWords(torch.nn.Module):
    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        self.chunk_length = 75
        self.id_start = 49406
        self.id_end = 49407
        self.id_pad = 0

    def tokenize(self, texts):
        from open_clip import tokenizer
        return [tokenizer._tokenizer.encode(text) for text in texts]

    def encode_embedding_init_text(self, init_text, nvpt):
        from open_clip import tokenizer
        embedding = self.wrapped.model.token_embedding.wrapped
        ids = torch.asarray([tokenizer._tokenizer.encode(init_text)], device=embedding.weight.device, dtype=torch.int)
        return embedding(ids).squeeze(0)

    def forward(self, texts):
        raise NotImplementedError("fake WebUI: prompt encoding is not faked; use .wrapped.model")
