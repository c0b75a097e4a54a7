"""Our attention processor for the diffusers view: what diffusers' AttnProcessor2_0 computes, with two
hooks — the K/V inputs (hypernetworks change them) and the attention kernel (the CPU bf16 fast path
in train/cpu_attention.py).

The trainer swaps it in for AttnProcessor2_0 while it runs and puts the original back after, so
previews and the host's own use see diffusers' processor.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..train.cpu_attention import attention


class SdpaAttnProcessor:
    """A plain object (not an nn.Module): it never shows up in the UNet's parameters or state dict."""

    def contexts(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs of to_k and to_v."""
        return context, context

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if getattr(attn, "spatial_norm", None) is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if getattr(attn, "group_norm", None) is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        else:
            context = encoder_hidden_states
            if getattr(attn, "norm_cross", None):
                context = attn.norm_encoder_hidden_states(context)
        context_k, context_v = self.contexts(context)
        key = attn.to_k(context_k)
        value = attn.to_v(context_v)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        # the kernel scales by 1/sqrt(head_dim); a module with another scale gets it folded into q
        # (SDPA's scale= argument is newer than torch 2.0)
        scale = getattr(attn, "scale", head_dim ** -0.5)
        if abs(scale - head_dim ** -0.5) > 1e-12:
            query = query * (scale * head_dim ** 0.5)
        out = attention(query, key, value, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if getattr(attn, "residual_connection", False):
            out = out + residual
        return out / getattr(attn, "rescale_output_factor", 1.0)


def use_own_attention(unet) -> Callable[[], int]:
    """Put SdpaAttnProcessor in place of every diffusers AttnProcessor2_0 of `unet` (other processors,
    a hypernetwork's or a user's, are left alone). Returns the undo, which says how many it restored."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    swapped = [(m, m.processor) for m in unet.modules()
               if isinstance(m, Attention) and type(m.processor) is AttnProcessor2_0]
    for m, _ in swapped:
        m.set_processor(SdpaAttnProcessor())

    def undo() -> int:
        for m, original in swapped:
            m.set_processor(original)
        return len(swapped)

    return undo
