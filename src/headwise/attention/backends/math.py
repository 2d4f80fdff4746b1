"""All heads at once in plain PyTorch: batched matmuls and an explicit softmax.

The fastest backend that can return the attention weights ``(B, H, Tq, Tk)``; it
holds the full score matrix, so its memory grows with Tq x Tk.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..masks import MaskSpec
from .base import Backend, safe_softmax


class MathBackend(Backend):
    name = "math"
    priority = 10

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        b, n_heads, tq, d = q.shape
        n_kv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
        group = n_heads // n_kv
        # Grouped queries share a K/V head: fold the group into the query axis so
        # K and V are used as they are, never repeated in memory. (Sizes are spelled
        # out, not -1: any of them may be 0, an empty batch or sequence.)
        qg = q.reshape(b, n_kv, group * tq, d)
        scores = (qg @ k.transpose(-1, -2)).view(b, n_heads, tq, tk) * scale
        additive = mask.additive(q.dtype, q.device)
        if additive is not None:
            scores = scores + additive
        # no key at all: nothing to normalise, every output row is zero (as for a fully masked row)
        p = safe_softmax(scores, dim=-1) if tk > 0 else scores
        p_used = F.dropout(p, dropout_p) if dropout_p > 0 else p
        out = (p_used.reshape(b, n_kv, group * tq, tk) @ v).view(b, n_heads, tq, dv)
        return out, (p if need_weights else None)
