"""Fake of modules/sd_hijack_clip.py (1.10.1): the wrapper the WebUI puts around the SD1 text encoder.

FrozenCLIPEmbedderWithCustomWords(wrapped, hijack): `.wrapped` is the ldm FrozenCLIPEmbedder
(with .transformer = transformers CLIPTextModel and .tokenizer = CLIPTokenizer), `.hijack` the
model_hijack, `.tokenizer` the same tokenizer; chunk_length 75; id_start/id_end/id_pad from the
tokenizer (bos/eos). tokenize(texts) (ids without start/end) and encode_embedding_init_text(text,
nvpt) (the token embedding's vectors for a text, which the embedding database reads its width from)
as in the real one. Prompt chunking and emphasis are not faked.
"""
import torch


class FrozenCLIPEmbedderWithCustomWords(torch.nn.Module):
    def __init__(self, wrapped, hijack):
        super().__init__()
        self.wrapped = wrapped
        self.hijack = hijack
        self.chunk_length = 75
        self.is_trainable = getattr(wrapped, 'is_trainable', False)
        self.input_key = getattr(wrapped, 'input_key', 'txt')
        self.return_pooled = getattr(self.wrapped, 'return_pooled', False)
        self.legacy_ucg_val = None
        self.tokenizer = wrapped.tokenizer
        self.id_start = getattr(self.tokenizer, "bos_token_id", None)
        self.id_end = getattr(self.tokenizer, "eos_token_id", None)
        self.id_pad = self.id_end

    def _tokenizer(self):
        if self.tokenizer is None:
            raise RuntimeError("fake WebUI: this model was built without a tokenizer (make_fake_sd_model(..., tokenizer))")
        return self.tokenizer

    def tokenize(self, texts):
        return self._tokenizer()(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def encode_embedding_init_text(self, init_text, nvpt):
        embedding_layer = self.wrapped.transformer.text_model.embeddings
        ids = self._tokenizer()(init_text, max_length=nvpt, truncation=True, return_tensors="pt",
                                add_special_tokens=False)["input_ids"]
        weight = embedding_layer.token_embedding.wrapped.weight
        return embedding_layer.token_embedding.wrapped(ids.to(weight.device)).squeeze(0)

    def forward(self, texts):
        raise NotImplementedError("fake WebUI: prompt encoding is not faked; use .wrapped.transformer")
