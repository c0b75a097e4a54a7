"""Fake of modules/sd_hijack.py (1.10.1): model_hijack (with embedding_db) and EmbeddingsWithFixes.

What hijack(m) does to an SD1/SD2 model is what the extension meets in shared.sd_model:
- SD1: m.cond_stage_model.transformer.text_model.embeddings.token_embedding is wrapped in
  EmbeddingsWithFixes (the nn.Embedding is its `.wrapped`), then m.cond_stage_model is wrapped in
  sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords (the ldm embedder is its `.wrapped`).
- SD2: m.cond_stage_model.model.token_embedding is wrapped the same way and m.cond_stage_model in
  sd_hijack_open_clip.FrozenOpenCLIPEmbedderWithCustomWords.
So sd_model.state_dict() has keys like cond_stage_model.wrapped.transformer.text_model.
embeddings.token_embedding.wrapped.weight, not the checkpoint's keys. undo_hijack(m) reverses it.
Optimizations, circular padding and the weighted-loss patch are not faked.
"""
import torch

from modules import devices, sd_hijack_clip, sd_hijack_open_clip
from modules.shared_cmd_options import cmd_opts


class StableDiffusionModelHijack:
    fixes = None
    layers = None
    circular_enabled = False
    clip = None
    optimization_method = None

    def __init__(self):
        import modules.textual_inversion.textual_inversion
        self.extra_generation_params = {}
        self.comments = []
        self.embedding_db = modules.textual_inversion.textual_inversion.EmbeddingDatabase()
        self.embedding_db.add_embedding_dir(cmd_opts.embeddings_dir)

    def hijack(self, m):
        cond = m.cond_stage_model
        if hasattr(cond, "transformer"):      # ldm FrozenCLIPEmbedder (SD1)
            emb = cond.transformer.text_model.embeddings
            emb.token_embedding = EmbeddingsWithFixes(emb.token_embedding, self)
            m.cond_stage_model = sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(cond, self)
        elif hasattr(cond, "model"):          # ldm FrozenOpenCLIPEmbedder (SD2)
            cond.model.token_embedding = EmbeddingsWithFixes(cond.model.token_embedding, self)
            m.cond_stage_model = sd_hijack_open_clip.FrozenOpenCLIPEmbedderWithCustomWords(cond, self)
        self.clip = m.cond_stage_model
        self.layers = [x for x in m.modules()]

    def undo_hijack(self, m):
        cond = m.cond_stage_model
        if type(cond) is sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords:
            m.cond_stage_model = cond.wrapped
            emb = m.cond_stage_model.transformer.text_model.embeddings
            if type(emb.token_embedding) is EmbeddingsWithFixes:
                emb.token_embedding = emb.token_embedding.wrapped
        elif type(cond) is sd_hijack_open_clip.FrozenOpenCLIPEmbedderWithCustomWords:
            cond.wrapped.model.token_embedding = cond.wrapped.model.token_embedding.wrapped
            m.cond_stage_model = cond.wrapped
        self.layers = None
        self.clip = None

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}


class EmbeddingsWithFixes(torch.nn.Module):
    """Token embedding that splices textual-inversion vectors in at the offsets in embeddings.fixes."""

    def __init__(self, wrapped, embeddings, textual_inversion_key='clip_l'):
        super().__init__()
        self.wrapped = wrapped
        self.embeddings = embeddings  # the hijack object, not a module
        self.textual_inversion_key = textual_inversion_key

    def forward(self, input_ids):
        batch_fixes = self.embeddings.fixes
        self.embeddings.fixes = None
        inputs_embeds = self.wrapped(input_ids)
        if not batch_fixes or max(len(x) for x in batch_fixes) == 0:
            return inputs_embeds
        rows = []
        for fixes, row in zip(batch_fixes, inputs_embeds):
            for offset, embedding in fixes:
                vec = embedding.vec[self.textual_inversion_key] if isinstance(embedding.vec, dict) else embedding.vec
                vec = devices.cond_cast_unet(vec)
                n = min(row.shape[0] - offset - 1, vec.shape[0])
                row = torch.cat([row[0:offset + 1], vec[0:n], row[offset + 1 + n:]]).to(dtype=inputs_embeds.dtype)
            rows.append(row)
        return torch.stack(rows)


model_hijack = StableDiffusionModelHijack()


def reset():
    """Fake-only: a fresh hijack object (new embedding_db pointing at the current embeddings_dir)."""
    global model_hijack
    model_hijack = StableDiffusionModelHijack()
