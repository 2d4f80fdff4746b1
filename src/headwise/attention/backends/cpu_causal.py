"""Causal self-attention on the CPU that skips the masked half, in blocks around
torch's fused CPU flash-attention kernel.

torch's CPU kernel (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its
backward) walks keys in blocks of 512 and, with ``is_causal``, stops only at the
block that holds the last visible key. For sequences shorter than ~768 there is one
key block, so every query is scored against every key and the future is masked
afterwards: causal attention costs as much as full attention (measured: 81 ms
causal vs 81 ms full, forward+backward, B=8, H=8, T=512, D=64, 2 threads).

Here the same kernel is called on blocks that hold only visible keys:

* forward, by query blocks: queries ``[s, e)`` against keys ``[0, e)`` with an
  additive mask for the diagonal part; outputs and log-sum-exps go straight into
  their rows;
* backward, by key blocks: keys ``[a, b)`` against queries ``[a, T)``. Given the
  full rows' output and log-sum-exp, the kernel's ``P = exp(S - lse)`` and
  ``delta = rowsum(dO * O)`` are those of the whole row, so each key block's dK and
  dV are complete; only dQ is summed over key blocks (in float32 for 16-bit inputs).

That is ``(n + 1) / 2n`` of the full work for ``n`` blocks (62.5% at T=512 with
128-key blocks). Gradients are laid out ``(B, T, H, D)`` (returned as ``(B, H, T, D)``
views) so the layer's reshape back to ``(B, T, H * D)`` needs no copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BLOCK", "MIN_LEN", "MAX_LEN", "blocked_causal_applies", "blocked_causal_attention"]

BLOCK = 128
"""Queries (forward) or keys (backward) per kernel call."""
MIN_LEN = 384
"""Below this the blocks are too few and too small to beat one full call (T=256: a tie)."""
MAX_LEN = 768
"""From here on torch's kernel uses 256-query blocks and skips key blocks itself, and
wins (T=1024: 105 ms vs 111 ms blocked)."""

_DTYPES = (torch.float32, torch.float64)
"""What :func:`blocked_causal_applies` serves. In 16 bits each block call costs torch's
kernel more than the blocks save: bf16 at B=8, H=8, D=64 took 133 ms blocked vs 115 ms
unblocked at T=512, 93 vs 76 at T=640 (fp32: 101 vs 131, 68 vs 80), on a 2-core
AVX512-BF16 EPYC. :func:`blocked_causal_attention` itself still takes them."""
_fwd_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_bwd_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def blocked_causal_applies(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> bool:
    """Whether :func:`blocked_causal_attention` serves (and speeds up) this causal call:
    CPU, float32 or float64, square (self-attention without a cache), no dropout, a length in
    ``[MIN_LEN, MAX_LEN)``, as many key/value heads as query heads, contiguous head
    dims (what torch's fused kernel reads)."""
    t = q.shape[2]
    return (
        q.device.type == "cpu"
        and q.dtype in _DTYPES
        and dropout_p == 0.0
        and MIN_LEN <= t < MAX_LEN
        and k.shape[2] == t
        and k.shape[1] == q.shape[1]
        and q.shape[-1] == k.shape[-1] == v.shape[-1]
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    )


def _causal_mask(rows: range, cols: range, dtype: torch.dtype) -> Tensor:
    """Additive mask: 0 where key ``c <= `` query ``r``, ``-inf`` after."""
    r = torch.arange(rows.start, rows.stop)[:, None]
    c = torch.arange(cols.start, cols.stop)[None, :]
    return torch.zeros((len(rows), len(cols)), dtype=dtype).masked_fill_(c > r, float("-inf"))


def _bthd(like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty ``(B, H, T, D)`` view of a ``(B, T, H, D)`` buffer."""
    b, h, t, d = like.shape
    return torch.empty((b, t, h, d), dtype=dtype or like.dtype, device=like.device).transpose(1, 2)


def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    t = q.shape[2]
    out = _bthd(q)
    lses = []
    for s in range(0, t, BLOCK):
        e = min(t, s + BLOCK)
        o, lse = _fwd_op(q[:, :, s:e], k[:, :, :e], v[:, :, :e], 0.0, False,
                         attn_mask=_causal_mask(range(s, e), range(0, e), q.dtype), scale=scale)
        out[:, :, s:e] = o
        lses.append(lse)
    return out, torch.cat(lses, dim=2)


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              scale: float, dq: Tensor, dk: Tensor, dv: Tensor) -> None:
    """Write the gradients into ``dq, dk, dv`` (``(B, H, T, D)`` views of any layout)."""
    t = q.shape[2]
    low = q.dtype in (torch.bfloat16, torch.float16)
    dq_acc = _bthd(q, torch.float32) if low else dq
    for a in range(0, t, BLOCK):
        b = min(t, a + BLOCK)
        gq, gk, gv = _bwd_op(dout[:, :, a:], q[:, :, a:], k[:, :, a:b], v[:, :, a:b],
                             out[:, :, a:], lse[:, :, a:], 0.0, False,
                             attn_mask=_causal_mask(range(a, t), range(a, b), q.dtype), scale=scale)
        if a == 0:
            dq_acc.copy_(gq)  # the first key block is seen by every query
        else:
            dq_acc[:, :, a:] += gq
        dk[:, :, a:b] = gk
        dv[:, :, a:b] = gv
    if low:
        dq.copy_(dq_acc)


class _BlockedCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        out, lse = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _bthd(q), _bthd(k), _bthd(v)
        _backward(dout, q, k, v, out, lse, ctx.scale, dq, dk, dv)
        return dq, dk, dv, None


def _unpack(qkv: Tensor, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous ``(B, T, 3 * H * D)`` (or ``(B * T, 3 * H * D)``) -> ``q, k, v (B, H,
    T, D)`` views, for ``shape = (B, T, H)``."""
    b, t, h = shape
    q, k, v = qkv.view(b, t, 3, h, -1).transpose(1, 3).unbind(2)
    return q, k, v


class _BlockedCausalPacked(torch.autograd.Function):
    """The same on the fused projection ``(B, T, 3 * H * D)`` that q, k, v are views of:
    the backward writes dQ, dK, dV into one such buffer, so autograd does not
    concatenate three gradients into it afterwards (one pass over 3 * B*T*H*D less)."""

    @staticmethod
    def forward(ctx, qkv: Tensor, shape: tuple[int, int, int], scale: float) -> Tensor:
        out, lse = _forward(*_unpack(qkv, shape), scale)
        ctx.save_for_backward(qkv, out, lse)
        ctx.shape, ctx.scale = shape, scale
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        qkv, out, lse = ctx.saved_tensors
        dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        _backward(dout, *_unpack(qkv, ctx.shape), out, lse, ctx.scale, *_unpack(dqkv, ctx.shape))
        return dqkv, None, None


def _packed_source(q: Tensor, k: Tensor, v: Tensor) -> Tensor | None:
    """The contiguous ``(B, T, 3 * H * D)`` or ``(B * T, 3 * H * D)`` tensor whose
    slices q, k, v are (the layer's fused QKV projection), or None."""
    base = q._base
    if base is None or k._base is not base or v._base is not base:
        return None
    b, h, t, d = q.shape
    if base.shape[-1] != 3 * h * d or base.numel() != b * t * 3 * h * d or not base.is_contiguous():
        return None
    expected = _unpack(base, (b, t, h))
    for mine, want in zip((q, k, v), expected, strict=True):
        if mine.stride() != want.stride() or mine.storage_offset() != want.storage_offset():
            return None
    return base


def blocked_causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal ``softmax(q k^T * scale) v`` for ``q, k, v (B, H, T, D)`` on the CPU,
    computing only the visible query/key blocks (see the module docstring). Check
    :func:`blocked_causal_applies` first. Returns ``(B, H, T, D)``."""
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return _forward(q, k, v, scale)[0]
    if not torch.compiler.is_compiling():
        packed = _packed_source(q, k, v)
        if packed is not None and packed.requires_grad:
            return _BlockedCausalPacked.apply(packed, (q.shape[0], q.shape[2], q.shape[1]), scale)
    return _BlockedCausal.apply(q, k, v, scale)
