"""LoHa / LoKr training forward that keeps no full-size weight for backward.

lycoris' rebuild forward computes ΔW from the factors, adds it to the base weight, subtracts the
base again and runs the layer's op on that delta beside the base op. Autograd keeps the full-size
ΔW of every adapted layer (plus the Hadamard / Kronecker halves it came from) until backward: on
the SD1.5 UNet with conv layers that is several GiB, the whole model again and more. It also runs
the layer's op twice forward and twice backward.

Here one autograd function per layer runs the op once on the merged weight W + m·ΔW (as the WebUI
applies the file; rebuilt in bf16 when the layer computes in bf16, else in fp32) and saves only
the layer input, which the graph holds anyway. Backward rebuilds ΔW from the factors, takes the
input gradient through the merged weight and the weight gradient from input and output gradient,
and contracts that with the rebuilt halves into the factors' gradients (the formulas of lycoris'
`get_weight`, in as few full-size passes as they allow). Every full-size tensor lives only while
its layer runs. Cost per adapted layer: one op forward, two backward (input and weight gradient),
against lycoris' two and three, plus the memory-bound passes over the weight.

Where a LoHa layer computes few output positions (the big layers of the low-resolution levels),
those passes cost far more than the op, and it goes through its factors instead
(`_loha_factor_bypass`), which makes no full-size tensor at all. LoKr always does
(`_lokr_factor_bypass`): its Kronecker halves act on channel groups for about 1/a of the op.

Modules this does not cover (Tucker, rank dropout, DoRA, a trained scalar, non-zero padding modes,
quantised bases) keep lycoris' own forward.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ..model.autocast import autocast_off, compute_dtype

_CONVS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


def merged_eligible(lora) -> bool:
    base = lora.org_module[0]
    return (type(lora).__name__ in ("LohaModule", "LokrModule") and not lora.bypass_mode
            and not lora.tucker and not lora.wd and not lora.rank_dropout and not lora.is_quant
            and not isinstance(lora.scalar, torch.nn.Parameter)
            and (lora.module_type == "linear"
                 or (lora.module_type in _CONVS and getattr(base, "padding_mode", "zeros") == "zeros")))


class _LohaDelta:
    """m·ΔW = c·(w1a @ w1b) ⊙ (w2a @ w2b) as a [out, in·k] matrix, c = alpha/rank · m (lycoris' get_weight)."""

    def __init__(self, lora, c: float, dtype: torch.dtype):
        self.lora, self.c, self.dtype = lora, c, dtype
        self.p1 = (lora.hada_w1_a.detach() * c).to(dtype) @ lora.hada_w1_b.detach().to(dtype)
        self.p2 = lora.hada_w2_a.detach().to(dtype) @ lora.hada_w2_b.detach().to(dtype)

    def merged(self, weight: torch.Tensor, keep: bool) -> torch.Tensor:
        """weight + m·ΔW (in place over p1 unless the factor gradients still need it)."""
        delta = self.p1 * self.p2 if keep else self.p1.mul_(self.p2)
        return delta.add_(weight.reshape(delta.shape))

    def grads(self, g: torch.Tensor, wanted: list) -> dict:
        lora, c = self.lora, self.c
        params = lora.hada_w1_a, lora.hada_w1_b, lora.hada_w2_a, lora.hada_w2_b
        w1a, w1b, w2a, w2b = (w.detach().to(self.dtype) for w in params)
        g = g.reshape(self.p1.shape)
        t = g * self.p2  # dL/d(c·w1a w1b)
        found = [(t @ w1b.t()) * c, (w1a * c).t() @ t]
        torch.mul(g, self.p1, out=t)  # dL/d(w2a w2b), c already inside p1
        found += [t @ w2b.t(), w2a.t() @ t]
        return {p: f.to(p.dtype) for p, f in zip(params, found)}


class _LokrDelta:
    """m·ΔW = c·kron(w1, w2), c = lycoris' scale · m, each half a full matrix or a low-rank product.

    Seen as [a, p, b, q] blocks (out = a·p, in·k = b·q), ΔW[i, x, j, y] = c·w1[i, j]·w2[x, y], so the
    merged weight is one broadcast add and the halves' gradients are two contractions of the
    weight gradient; the small halves pass theirs on to their factors by autograd."""

    def __init__(self, lora, c: float, dtype: torch.dtype):
        self.lora, self.c, self.dtype = lora, c, dtype
        with torch.no_grad():
            self.w1, self.w2 = (h.to(dtype) for h in self.halves(lora))

    @staticmethod
    def halves(lora) -> tuple[torch.Tensor, torch.Tensor]:
        """w1 [a, b] and w2 [p, q·k], each a full matrix or its low-rank product."""
        w1 = lora.lokr_w1 if lora.use_w1 else lora.lokr_w1_a @ lora.lokr_w1_b
        if lora.use_w2:
            w2 = lora.lokr_w2
        else:
            w2 = lora.lokr_w2_a @ lora.lokr_w2_b.reshape(lora.lokr_w2_b.shape[0], -1)
        return w1, w2.reshape(w2.shape[0], -1)

    def _blocks(self, t: torch.Tensor) -> torch.Tensor:
        (a, b), (p, q) = self.w1.shape, self.w2.shape
        return t.reshape(a, p, b, q)

    def merged(self, weight: torch.Tensor, keep: bool) -> torch.Tensor:
        delta = (self.w1 * self.c)[:, None, :, None] * self.w2[None, :, None, :]
        return delta.add_(self._blocks(weight)).reshape(self.w1.shape[0] * self.w2.shape[0], -1)

    def grads(self, g: torch.Tensor, wanted: list) -> dict:
        g4 = self._blocks(g)
        grad_w1 = torch.einsum("apbq,pq->ab", g4, self.w2).float().mul_(self.c)
        grad_w2 = torch.einsum("apbq,ab->pq", g4, self.w1).float().mul_(self.c)
        with torch.enable_grad():
            w1, w2 = self.halves(self.lora)
        halves = [(h, gh) for h, gh in ((w1, grad_w1), (w2, grad_w2)) if h.requires_grad]
        if not halves:
            return {}
        found = torch.autograd.grad([h for h, _ in halves], wanted, [gh for _, gh in halves], allow_unused=True)
        return dict(zip(wanted, found))


def _scale(lora, multiplier: float) -> float:
    """c in m·ΔW = c·(the factors' product): lycoris' alpha/rank scale, its fixed scalar, the multiplier."""
    return float(lora.scale) * float(lora.scalar) * multiplier


def _rebuild(lora, c: float, compute: torch.dtype):
    """The module's m·ΔW, rebuilt in bf16 when the layer computes in bf16 (the full-size passes are
    memory-bound: half the bytes, and no cast of the merged weight), else in fp32."""
    dtype = torch.bfloat16 if compute == torch.bfloat16 else torch.float32
    return (_LohaDelta if type(lora).__name__ == "LohaModule" else _LokrDelta)(lora, c, dtype)


def _run_op(lora, x: torch.Tensor, weight: torch.Tensor, bias, dtype: torch.dtype) -> torch.Tensor:
    with autocast_off(x.device):
        return lora.op(x.to(dtype), weight, None if bias is None else bias.to(dtype), **lora.kw_dict)


class _MergedOp(torch.autograd.Function):
    """y = op(x, W + m·ΔW, b); saves x only; the factors get their gradients from the rebuilt ΔW."""

    @staticmethod
    def forward(ctx, x, lora, c, *params):
        base = lora._current_weight()
        dtype = compute_dtype(x.device, base.dtype)
        with torch.no_grad(), autocast_off(x.device):
            weight = _rebuild(lora, c, dtype).merged(base, keep=False).to(dtype).view(base.shape)
        y = _run_op(lora, x, weight, lora._current_bias(), dtype)
        ctx.save_for_backward(x)
        ctx.lora, ctx.c, ctx.params = lora, c, params
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        lora, dtype = ctx.lora, grad_y.dtype
        wanted = [p for p, need in zip(ctx.params, ctx.needs_input_grad[3:]) if need]
        base = lora._current_weight()
        with autocast_off(x.device):
            delta = _rebuild(lora, ctx.c, dtype)
            with torch.no_grad():
                weight = delta.merged(base, keep=True).to(dtype).view(base.shape)
            xc = x.to(dtype)
            if lora.module_type == "linear":
                g2 = grad_y.reshape(-1, grad_y.shape[-1])
                grad_x = (g2 @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
                grad_w = g2.t() @ xc.reshape(-1, xc.shape[-1]) if wanted else None
            else:
                kw, dims = lora.kw_dict, _CONVS[lora.module_type]
                grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                    grad_y, xc, weight, None, _tuple(kw["stride"], dims), _tuple(kw["padding"], dims),
                    _tuple(kw["dilation"], dims), False, [0] * dims, kw["groups"],
                    [ctx.needs_input_grad[0], bool(wanted), False])
            del weight, xc
            found = delta.grads(grad_w.to(delta.dtype), wanted) if wanted else {}
        param_grads = [found.get(p) if need else None for p, need in zip(ctx.params, ctx.needs_input_grad[3:])]
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        return (grad_x, None, None, *param_grads)


def _tuple(value, dims: int) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value] * dims


# What one full-size pass over a weight (read or write, memory-bound) costs, in multiply-adds per
# weight element: a bf16 GEMM here runs ~200 G multiply-adds/s, memory moves ~5 G elements/s.
PASS_COST = 40
# Full-size passes the merged form makes per step (rebuild, merge, weight gradient, contractions).
MERGED_PASSES = 26


def _columns(lora, x: torch.Tensor) -> int:
    """How many output positions the layer computes: tokens for a linear, batch x pixels for a conv."""
    if lora.module_type == "linear":
        return x.numel() // x.shape[-1]
    kw, dims = lora.kw_dict, _CONVS[lora.module_type]
    count = x.shape[0]
    for size, k, stride, pad, dil in zip(x.shape[2:], lora.shape[2:], _tuple(kw["stride"], dims),
                                         _tuple(kw["padding"], dims), _tuple(kw["dilation"], dims)):
        count *= (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    return count


def _loha_prefers_factors(lora, columns: int) -> bool:
    """LoHa's ΔW is a rank-(r1·r2) product (see _loha_factor_bypass). Through those factors the
    extra work is ~3·n·r1·r2·(in·k + out) multiply-adds and no full-size tensor; merged it is the
    weight gradient n·out·in·k plus MERGED_PASSES passes over the weight. Few output positions
    (the low-resolution levels, where the big layers are) favour the factors."""
    if lora.module_type != "linear" and lora.kw_dict.get("groups", 1) != 1:
        return False
    out, in_k = lora.shape[0], lora.hada_w1_b.shape[1]
    r2 = lora.hada_w1_b.shape[0] * lora.hada_w2_b.shape[0]
    return 3 * columns * r2 * (in_k + out) < out * in_k * (columns + MERGED_PASSES * PASS_COST)


def _lokr_prefers_factors(lora) -> bool:
    """LoKr through its halves costs about 1/a of the layer's op and makes no full-size tensor; the
    merged form stays for grouped convolutions, which the channel groups here would cut across."""
    return lora.module_type == "linear" or lora.kw_dict.get("groups", 1) == 1


def _loha_factor_bypass(lora, x: torch.Tensor, c: float) -> torch.Tensor:
    """base(x) + x·ΔWᵀ with ΔW = c·(w1a w1b) ⊙ (w2a w2b) written as up @ down, where
    down[(r,s), i] = w1b[r, i]·w2b[s, i] and up[o, (r,s)] = c·w1a[o, r]·w2a[o, s]: a LoRA of rank
    r1·r2 built from the factors each step, so autograd keeps rank-sized tensors only."""
    w1a, w1b, w2a, w2b = lora.hada_w1_a, lora.hada_w1_b, lora.hada_w2_a, lora.hada_w2_b
    rank = w1b.shape[0] * w2b.shape[0]
    dtype = compute_dtype(x.device, x.dtype)  # the input's, as lycoris' bypass (a half-precision base, no autocast)
    down = (w1b[:, None, :] * w2b[None, :, :]).reshape(rank, -1).to(dtype)
    up = ((w1a[:, :, None] * w2a[:, None, :]).reshape(w1a.shape[0], rank) * c).to(dtype)
    if lora.module_type == "linear":
        delta = F.linear(F.linear(x, down), up)
    else:
        dims = _CONVS[lora.module_type]
        hidden = lora.op(x, down.view(rank, *lora.shape[1:]), None, **lora.kw_dict)
        delta = lora.op(hidden, up.view(*up.shape, *[1] * dims))
    return lora.org_forward(x) + delta


def _lokr_factor_bypass(lora, x: torch.Tensor, c: float) -> torch.Tensor:
    """base(x) + x·ΔWᵀ with ΔW = c·kron(w1, w2) and no full-size tensor: input channels come in b
    groups of q, output channels in a groups of p, so the delta is w2 applied within every input
    group (a linear, or a convolution over each group as its own image) and w1 mixing the groups."""
    dtype = compute_dtype(x.device, x.dtype)  # the input's, as lycoris' bypass (a half-precision base, no autocast)
    halves = _LokrDelta.halves(lora)
    w1, w2 = (halves[0] * c).to(dtype), halves[1].to(dtype)
    b, p = w1.shape[1], w2.shape[0]
    if lora.module_type == "linear":
        inner = F.linear(x.unflatten(-1, (b, -1)), w2)                            # [..., b, p]
        delta = torch.matmul(w1, inner).flatten(-2)                               # [..., a·p]
    else:
        n = x.shape[0]
        grouped = x.reshape(n * b, -1, *x.shape[2:])                             # [n·b, q, ...]
        inner = lora.op(grouped, w2.view(p, -1, *lora.shape[2:]), None, **lora.kw_dict)
        inner = inner.unflatten(0, (n, b))                                        # [n, b, p, ...]
        delta = torch.einsum("ij,njp...->nip...", w1, inner).flatten(1, 2)
    return lora.org_forward(x) + delta


def merged_forward(lora, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What lycoris' rebuild forward computes (base op + op on m·ΔW): LoKr, and a LoHa layer with
    few output positions, through their factors; otherwise as one op on the merged weight."""
    if scale == 0:
        return lora.org_forward(x)
    c = _scale(lora, scale)
    if type(lora).__name__ == "LohaModule" and _loha_prefers_factors(lora, _columns(lora, x)):
        return _loha_factor_bypass(lora, x, c)
    if type(lora).__name__ == "LokrModule" and _lokr_prefers_factors(lora):
        return _lokr_factor_bypass(lora, x, c)
    return _MergedOp.apply(x, lora, c, *lora.parameters())


def use_merged_forward(loras) -> int:
    """Route every eligible LoHa/LoKr module through the merged forward. lycoris' own `forward`
    (which applies module dropout) calls `bypass_forward` when `bypass_mode` is set, so the
    function goes there as an instance attribute; `restore` and the saved keys are unaffected."""
    count = 0
    for lora in loras:
        if merged_eligible(lora):
            lora.bypass_mode = True
            lora.bypass_forward = partial(merged_forward, lora)
            count += 1
    return count
