"""The textbook: one head at a time, explicit scores, softmax and weighted sum.

Slow on purpose and easy to check by eye; it is the ground truth that every other
backend is tested against, and it can return the attention weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import MaskSpec
from .base import Backend, safe_softmax


class ReferenceBackend(Backend):
    name = "reference"
    priority = 0

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        n_heads, n_kv = q.shape[1], k.shape[1]
        group = n_heads // n_kv
        additive = mask.additive(q.dtype, q.device)  # (B|1, H|1, Tq, Tk) or None
        outs: list[Tensor] = []
        weights: list[Tensor] = []
        for h in range(n_heads):
            q_h = q[:, h]  # (B, Tq, D)
            k_h = k[:, h // group]  # the K/V head shared by this query head's group
            v_h = v[:, h // group]
            scores = (q_h @ k_h.transpose(-1, -2)) * scale  # (B, Tq, Tk)
            if additive is not None:
                scores = scores + additive[:, h if additive.shape[1] > 1 else 0]
            # no key at all: nothing to normalise, the output rows are zero
            p = safe_softmax(scores, dim=-1) if scores.shape[-1] > 0 else scores
            weights.append(p)
            if dropout_p > 0:
                p = F.dropout(p, dropout_p)
            outs.append(p @ v_h)  # (B, Tq, Dv)
        out = torch.stack(outs, dim=1)
        return out, (torch.stack(weights, dim=1) if need_weights else None)
