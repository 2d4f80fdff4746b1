"""What a backend is: a way of computing softmax(Q K^T * scale + mask) V for all heads.

A backend receives already-projected tensors ``q (B, H, Tq, D)``, ``k (B, Hkv, Tk, D)``,
``v (B, Hkv, Tk, Dv)`` (``H`` a multiple of ``Hkv``: grouped-query attention) and a
:class:`~headwise.attention.masks.MaskSpec`, and returns ``(out (B, H, Tq, Dv),
weights (B, H, Tq, Tk) or None)``. It knows nothing of projections or models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ... import kernels
from ..masks import MaskSpec

__all__ = ["AttentionCall", "Backend", "safe_softmax", "zero_masked_rows", "triton_kernel_unsupported"]


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

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *,
           need_weights: bool = False, dropout_p: float = 0.0) -> AttentionCall:
        """The call that ``attend(q, k, v, mask, ...)`` makes (gradients are required
        when grad mode is on and any input requires them)."""
        return cls(
            dtype=q.dtype, device=q.device, head_dim=q.shape[-1], value_dim=v.shape[-1],
            n_heads=q.shape[1], n_kv_heads=k.shape[1], mask=mask, need_weights=need_weights,
            dropout_p=dropout_p,
            requires_grad=torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad),
        )


class Backend:
    """Base class. Subclasses set ``name`` and ``priority`` (higher = preferred by
    ``backend="auto"`` where it does not measure, and the order of its reasons) and
    implement :meth:`attend`, and :meth:`unsupported` where they cannot serve every
    call. ``timed_by_auto = True`` makes
    it a candidate that ``auto`` times against the others on CUDA
    (:mod:`.dispatch`); ``auto_devices`` (a tuple of device types), when set, limits
    the devices where ``auto`` considers it at all."""

    name: str = ""
    priority: int = 0
    timed_by_auto: bool = False

    def unsupported(self, call: AttentionCall) -> str | None:
        """``None`` if this backend can serve ``call``, else a short reason naming
        what it lacks (shown to the user). By default every call is served."""
        return None

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


def triton_kernel_unsupported(
    call: AttentionCall, dtypes: tuple[torch.dtype, ...], max_head_dim: int
) -> str | None:
    """What the Triton kernel backends (``tiled``, ``int8``) share: no weights, no
    dropout, no dense bias (key lengths and the causal flag are native), ``dtypes``,
    head dims up to ``max_head_dim``, CUDA (or the CPU under ``TRITON_INTERPRET=1``),
    and Triton installed. ``None`` when the call fits, else the reason."""
    if call.need_weights:
        return "it cannot return attention weights (need_weights=True)"
    if call.dropout_p > 0:
        return f"it has no attention dropout (dropout_p={call.dropout_p}, needs 0)"
    if call.mask.bias is not None:
        return "dense attn_mask/key_padding_mask bias; pass key_lengths instead"
    if call.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"dtype {call.dtype} (supports {names})"
    if not (1 <= call.head_dim <= max_head_dim and 1 <= call.value_dim <= max_head_dim):
        return f"head_dim {call.head_dim} / value_dim {call.value_dim} (supports 1..{max_head_dim})"
    device = call.device.type
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return ("it runs on CPU only under TRITON_INTERPRET=1 (the Triton interpreter) "
                    "and only when asked for explicitly")
    elif device != "cuda":
        return f"device {call.device} (supports cuda)"
    if not kernels.triton_available():  # looked up at each call (tests patch it)
        return "triton is not installed (pip install triton)"
    return None
