"""The checks :class:`~headwise.attention.MultiHeadAttention` makes of its sizes (at
construction) and of its inputs (at every call), each naming the argument, the value
and what is accepted."""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_int

__all__ = ["layer_sizes", "check_layer_input", "is_autocast_input"]


def layer_sizes(d_model: int, n_heads: int, head_dim: int | None, n_kv_heads: int | None,
                kdim: int | None, vdim: int | None, *,
                dtype: torch.dtype | None = None) -> tuple[int, int, int, int, int, int]:
    """``(d_model, n_heads, head_dim, n_kv_heads, kdim, vdim)`` with the defaults filled in
    (``d_model // n_heads``, ``n_heads``, ``d_model``, ``d_model``), or ``ValueError``; and
    ``TypeError`` unless the weights' ``dtype`` is None or floating-point."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        # (else nn.Parameter's 'Only Tensors of floating point ... can require gradients')
        raise TypeError(f"dtype must be None or a floating-point dtype, got {dtype}")
    check_int("d_model", d_model)
    check_int("n_heads", n_heads)
    if head_dim is None:
        if d_model % n_heads != 0:
            raise ValueError(
                f"n_heads ({n_heads}) must divide d_model ({d_model}) when head_dim is "
                f"not given; pass head_dim explicitly to use heads of another width"
            )
        head_dim = d_model // n_heads
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kdim = d_model if kdim is None else kdim
    vdim = d_model if vdim is None else vdim
    for name, value in (("head_dim", head_dim), ("n_kv_heads", n_kv_heads), ("kdim", kdim), ("vdim", vdim)):
        check_int(name, value)
    if n_heads % n_kv_heads != 0:
        raise ValueError(
            f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads}) "
            f"(grouped-query attention shares each K/V head among a whole group)"
        )
    return d_model, n_heads, head_dim, n_kv_heads, kdim, vdim


def check_layer_input(name: str, t: object, width: int, dtype: torch.dtype | None,
                      device: torch.device | None) -> None:
    """``t`` must be a floating-point ``(batch, seq, width)`` tensor on ``device`` and, when
    ``dtype`` is given, of that dtype (or the one an active ``torch.autocast`` computes
    in); ``TypeError``/``ValueError`` naming ``name`` otherwise."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(
            f"{name} must be 3-D (batch, seq, {width}), got {t.dim()}-D with shape "
            f"{tuple(t.shape)}"
        )
    if t.shape[-1] != width:
        raise ValueError(
            f"{name} must have last dimension {width}, got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if dtype is not None and t.dtype != dtype and not is_autocast_input(t):
        raise TypeError(
            f"{name} has dtype {t.dtype} but the layer's weights are {dtype}; "
            f"convert one of them (e.g. layer.to({t.dtype}))"
        )
    if device is not None and t.device != device:
        raise ValueError(
            f"{name} is on {t.device} but the layer's weights are on {device}"
        )


def is_autocast_input(t: Tensor) -> bool:
    """Whether ``t`` is in the dtype an active ``torch.autocast`` computes in: the
    projections then cast the (fp32) weights themselves, so mixed dtypes are right."""
    kind = t.device.type
    return torch.is_autocast_enabled(kind) and t.dtype == torch.get_autocast_dtype(kind)
