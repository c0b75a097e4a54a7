"""Attention for bf16 training on the CPU: three batched GEMMs with the probabilities kept for backward.

Why: PyTorch's CPU flash-attention kernel computes bf16 inputs in fp32 and recomputes the
probabilities in its backward. On a 2-core EPYC it ran the UNet's attention at 100-170 GFLOP/s.
Plain bf16 GEMMs (oneDNN) plus a softmax whose result is saved were 1.3-2.7x faster for
forward + backward at every SD shape tried:
- 1024x1024 self-attention: 22 ms against 32;
- 77-token cross-attention: 2.5 against 6.4;
- 4096x4096 self-attention (512 px): 0.38 s against 0.50.
bench/bench_cpu_attention.py prints them.

Those gains need freed memory to stay in the heap (train/cpu_heap.py): with glibc's default every
large score matrix is a fresh mmap, and the big shapes get 20% slower than SDPA instead. So the
limit on scores per call is MAX_SCORES while the heap is kept, and MAX_SCORES_UNKEPT otherwise.

The price is memory: the probabilities (batch x heads x queries x keys, bf16) are kept until
backward. MAX_SCORES (64 MiB of bf16 per call) covers every attention of a 256 px step and all
but the 4096-token self-attention of a 512 px one. Taking those too (256 MiB each) made the
512 px bf16 step ~0.3 s faster but raised its peak RSS from 4.2 to 6.8 GiB, above sd-scripts' 6.3.
With gradient checkpointing only one block's probabilities live at a time, so the trainer raises
the limit to MAX_SCORES_CHECKPOINTED (`scores_limit`): 10.2 -> 8.9 s at 512 px, peak RSS unchanged.

The precision is that of the attention every trainer used before SDPA, in bf16 (scores and
probabilities rounded to bf16; within 2.5% of fp32 at SD shapes, where flash is within 0.7%).
It is only taken where it pays off: CPU, bf16, gradients on, no mask, no dropout. Everything else
goes to F.scaled_dot_product_attention unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from .cpu_heap import heap_kept

MAX_SCORES = 2**25
MAX_SCORES_CHECKPOINTED = 2**27
MAX_SCORES_UNKEPT = 2**22
_limit: Optional[int] = None   # set by scores_limit() for a run


@contextmanager
def scores_limit(limit: int) -> Iterator[None]:
    """Use `limit` instead of MAX_SCORES (while the heap is kept) until the block exits."""
    global _limit
    saved, _limit = _limit, limit
    try:
        yield
    finally:
        _limit = saved


class _SavedProbsAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale) v on [batch·heads, tokens, head_dim] tensors."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        with torch.autocast("cpu", enabled=False):  # CPU autocast would run the softmax in fp32
            return _SavedProbsAttention._forward(ctx, q, k, v, scale)

    @staticmethod
    def _forward(ctx, q, k, v, scale: float):
        scores = torch.bmm(q, k.transpose(1, 2).contiguous())  # a contiguous kᵀ: oneDNN is 1.7x faster
        probs = torch.softmax(scores.mul_(scale), dim=-1)
        del scores
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.bmm(probs, v)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_v = torch.bmm(probs.transpose(1, 2), grad_out)
        grad_probs = torch.bmm(grad_out, v.transpose(1, 2).contiguous())
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).mul_(ctx.scale)
        del grad_probs
        grad_q = torch.bmm(grad_scores, k)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q)
        return grad_q, grad_k, grad_v, None


def uses_saved_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                     dropout_p: float = 0.0) -> bool:
    b, h, n, _ = q.shape
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.bfloat16 and attn_mask is None
            and not dropout_p and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
            and b * h * n * k.shape[2] <= ((_limit or MAX_SCORES) if heap_kept() else MAX_SCORES_UNKEPT))


def saved_probs_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(head_dim)) v on [batch, heads, tokens, head_dim], probabilities saved for backward."""
    b, h, n, d = q.shape
    m = k.shape[2]
    out = _SavedProbsAttention.apply(q.reshape(b * h, n, d), k.reshape(b * h, m, d), v.reshape(b * h, m, d),
                                     d ** -0.5)
    return out.view(b, h, n, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p) on [batch, heads, tokens, head_dim]
    (scale 1/sqrt(head_dim)), with the saved-probabilities form where it is faster."""
    if uses_saved_probs(q, k, v, attn_mask, dropout_p):
        return saved_probs_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=False)
