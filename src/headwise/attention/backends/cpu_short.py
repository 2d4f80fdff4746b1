"""Short bfloat16 attention on the CPU as two bf16 GEMMs around a float32 softmax.

torch's fused CPU kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``) is
slow in bfloat16: at the lengths a CPU trains on it takes about twice as long as in
float32, and its backward was a fifth of a bf16 training step at ``electra-small``
widths. The plain formulation, ``Q K^T`` and ``P V`` as bf16 matmuls (float32
accumulation) with the scale, the mask and the softmax in float32, is faster while
the score matrix stays in cache. Forward + backward, 64-wide heads, on a 2-core
AVX512-BF16 EPYC (``python bench/attention_bf16_cpu.py``, medians of 9 alternating
rounds; full / causal):

    ==========  ===========  ==============
    B, H, T     here         torch's kernel
    ==========  ===========  ==============
    64, 4, 64   14 / 13 ms   29 / 27 ms
    32, 4, 128  19 / 22 ms   39 / 38 ms
    8, 8, 128   6.1 / 6.7    17 / 18 ms
    ==========  ===========  ==============

(bench/results/attention_bf16_cpu.json). At T=256 it was a tie (an earlier run of the
script with the bound at 256: 33 / 48 ms vs 41 / 45 ms at B=16, H=4, and 41 / 45 vs
44 / 45 at B=8, H=8), so this path serves bf16 calls with at most :data:`MAX_LEN`
keys, the batch cut into pieces of at most :data:`CHUNK_SCORES` scores, and at most
:data:`MAX_SCORES` scores in all (it keeps them for the backward, in float32 and
bf16); everything else stays with torch's kernel. The scores leave the bf16 GEMM
rounded to bf16, as in any eager bf16 attention, where torch's kernel keeps them in
float32: the error against float64 is 1-3x that kernel's
(tests/attention/test_cpu_short.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import MaskSpec
from .base import safe_softmax

__all__ = ["MAX_LEN", "MAX_SCORES", "CHUNK_SCORES", "short_bf16_applies", "short_bf16_attention"]

MAX_LEN = 128
"""Longest key sequence served (T=256 ties torch's kernel, T=512 is 2x slower)."""
MAX_SCORES = 1 << 24
"""Most ``B * H * Tq * Tk`` score elements per call: 16M, about 100 MB kept for the backward."""
CHUNK_SCORES = 1 << 21
"""Score elements per piece: the batch is split so that each piece's scores (8 MB in
float32) stay in cache; at twice that the path only ties torch's kernel."""


def short_bf16_applies(q: Tensor, k: Tensor) -> bool:
    """Whether :func:`short_bf16_attention` serves (and speeds up) this call: CPU,
    bfloat16, at most :data:`MAX_LEN` keys and :data:`MAX_SCORES` score elements."""
    b, h, tq, _ = q.shape
    tk = k.shape[2]
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and 0 < tk <= MAX_LEN
        and b * h * tq * tk <= MAX_SCORES
    )


def short_bf16_attention(q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, *, scale: float,
                         dropout_p: float) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` for ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk,
    D)``, ``v (B, Hkv, Tk, Dv)``: matmuls in bf16, the scale, mask and softmax in float32,
    query rows that see no key all zeros. Returns ``(B, H, Tq, Dv)`` in bf16."""
    b, n_heads, tq, _ = q.shape
    per_row = n_heads * tq * k.shape[2]
    step = max(1, CHUNK_SCORES // per_row)
    if b <= step:
        return _attend(q, k, v, mask, scale, dropout_p)
    pieces = [_attend(q[s:s + step], k[s:s + step], v[s:s + step], mask.rows(s, s + step),
                      scale, dropout_p) for s in range(0, b, step)]
    return torch.cat(pieces)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: MaskSpec, scale: float,
            dropout_p: float) -> Tensor:
    b, n_heads, tq, d = q.shape
    n_kv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = n_heads // n_kv
    # grouped queries share a K/V head: fold the group into the query axis
    qg = q.reshape(b, n_kv, group * tq, d)
    scores = (qg @ k.transpose(-1, -2)).view(b, n_heads, tq, tk).float().mul_(scale)
    additive = mask.additive(torch.float32, q.device)
    if additive is not None:
        scores.add_(additive)
    if not mask.may_empty_rows:
        p = torch.softmax(scores, dim=-1)
    else:  # a row with no key must come out zero, not NaN (nor NaN gradients)
        p = safe_softmax(scores, dim=-1)
    p = p.to(q.dtype)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return (p.reshape(b, n_kv, group * tq, tk) @ v).view(b, n_heads, tq, dv)
