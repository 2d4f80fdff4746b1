"""What a backend is: a way of computing softmax(Q K^T * scale + mask) V for all heads.

A backend receives already-projected tensors ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``,
``v (B, Hkv, Tk, Dv)`` (``H`` a multiple of ``Hkv``: grouped-query attention) and a
:class:`~headwise.attention.masks.MaskSpec`, and returns ``(out (B, H, Tq, Dv),
weights (B, H, Tq, Tk) or None)``. It knows nothing of projections or models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..masks import MaskSpec

__all__ = ["AttentionCall", "Backend", "safe_softmax", "zero_masked_rows"]


@dataclass(frozen=True)
class AttentionCall:
    """Everything a backend needs to know to say whether it can serve a call."""

    dtype: torch.dtype
    device: torch.device
    head_dim: int
    value_dim: int
    n_heads: int
    n_kv_heads: int
    mask: MaskSpec
    need_weights: bool
    dropout_p: float
    requires_grad: bool


class Backend:
    """Base class. Subclasses set ``name`` and ``priority`` (higher = preferred by
    ``backend="auto"``) and implement :meth:`unsupported` and :meth:`attend`."""

    name: str = ""
    priority: int = 0

    def unsupported(self, call: AttentionCall) -> str | None:
        """``None`` if this backend can serve ``call``, else a short reason naming
        what it lacks (shown to the user)."""
        raise NotImplementedError

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: MaskSpec,
        *,
        scale: float,
        dropout_p: float,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Return ``(out (B, H, Tq, Dv), weights (B, H, Tq, Tk) | None)``."""
        raise NotImplementedError


def safe_softmax(scores: Tensor, dim: int = -1) -> Tensor:
    """Softmax whose fully ``-inf`` rows come out as zeros instead of NaN."""
    row_max = scores.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max.detach())
    denom = e.sum(dim=dim, keepdim=True)
    return e / torch.where(denom == 0, torch.ones_like(denom), denom)


def zero_masked_rows(out: Tensor, mask: MaskSpec) -> Tensor:
    """Set to zero the output rows of queries that can see no key."""
    empty = mask.fully_masked_rows(out.device)
    if empty is None:
        return out
    return out.masked_fill(empty, 0.0)
