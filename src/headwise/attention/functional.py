"""attend(): run one attention call through the chosen backend.

This is the single door between the layer (projections, RoPE, cache) and the
backends, so that ``nn.MultiheadAttention`` and ``MultiHeadAttention`` share it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_real
from .backends import AttentionCall, get_backend
from .masks import MaskSpec

__all__ = ["attend"]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: MaskSpec,
    *,
    backend: str = "auto",
    scale: float | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T * scale + mask) v for every head at once.

    Args:
        q: ``(B, H, Tq, D)``; k: ``(B, Hkv, Tk, D)``; v: ``(B, Hkv, Tk, Dv)``, with
            ``H`` a multiple of ``Hkv``.
        mask: the canonical mask (see :mod:`headwise.attention.masks`).
        backend: ``"auto"`` or a registered backend name.
        scale: defaults to ``1 / sqrt(D)``.
        dropout_p: dropout on the attention probabilities.
        need_weights: also return the weights ``(B, H, Tq, Tk)`` (before dropout).

    Returns:
        ``(out (B, H, Tq, Dv), weights or None)``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be 4-D (batch, heads, seq, head_dim), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not isinstance(mask, MaskSpec):
        raise TypeError(f"mask must be a MaskSpec (from headwise.attention.normalize_mask), got "
                        f"{type(mask).__name__}")
    (b, _, tq, d), (bk, _, tk, dk) = q.shape, k.shape
    if v.shape[:3] != k.shape[:3] or (bk, dk) != (b, d):
        raise ValueError(
            f"k and v must share (batch, heads, seq), and q and k batch and head_dim: got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if (mask.batch, mask.q_len, mask.k_len) != (b, tq, tk):
        raise ValueError(
            f"mask was made for (batch, q_len, k_len) = {(mask.batch, mask.q_len, mask.k_len)}, but q and k give "
            f"{(b, tq, tk)}"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"the number of query heads ({q.shape[1]}) must be a multiple of the number of "
            f"key/value heads ({k.shape[1]})"
        )
    if not (q.is_floating_point() and k.is_floating_point() and v.is_floating_point()) or (
        (k.dtype != q.dtype or v.dtype != q.dtype) and not torch.is_autocast_enabled(q.device.type)
    ):  # (autocast's matmuls take mixed dtypes: nn.MultiheadAttention's fp32 bias_k joins bf16 keys)
        raise TypeError(f"q, k and v must be floating-point tensors of one dtype, got {q.dtype}, {k.dtype} "
                        f"and {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    if mask.bias is not None:
        full = (b, q.shape[1], tq, tk)
        if mask.bias.dim() != 4 or any(s not in (1, f) for s, f in zip(mask.bias.shape, full, strict=True)):
            raise ValueError(
                f"mask's bias of shape {tuple(mask.bias.shape)} does not fit (batch, heads, q_len, k_len) = "
                f"{full} (each dimension 1 or that size): normalize_mask(n_heads=...) must be given q's "
                f"number of heads, {q.shape[1]}"
            )
    dropout_p = check_real("dropout_p", dropout_p, minimum=0, maximum=1, max_open=True)
    if scale is not None:
        scale = check_real("scale", scale, what="a finite float")
    call = AttentionCall(
        dtype=q.dtype,
        device=q.device,
        head_dim=q.shape[-1],
        value_dim=v.shape[-1],
        n_heads=q.shape[1],
        n_kv_heads=k.shape[1],
        mask=mask,
        need_weights=need_weights,
        dropout_p=dropout_p,
        requires_grad=torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad),
    )
    chosen = get_backend(backend, call)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return chosen.attend(q, k, v, mask, scale=scale, dropout_p=dropout_p, need_weights=need_weights)
