"""What the Triton attention kernels accept: their dtypes, head dims and input checks.

Without Triton: the backends read :data:`MAX_HEAD_DIM` and the dtypes from here to say
why they cannot serve a call, and the checks run before any kernel module is imported.
Key lengths are checked by :func:`headwise.checks.check_key_lengths`, as the masks
check them (without reading the values: the kernels clamp them to ``[0, Tk]``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import check_key_lengths, check_real

__all__ = ["MAX_HEAD_DIM", "TILED_DTYPES", "INT8_DTYPES", "check_tiled_inputs", "check_int8_inputs"]

MAX_HEAD_DIM = 256
"""The largest head dim (of queries/keys and of values) of every kernel here."""
TILED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INT8_DTYPES = (torch.float16, torch.bfloat16)  # int8 attention keeps P V in them


def _check_qkv(q: object, k: object, v: object, dtypes: tuple[torch.dtype, ...],
               dtype_words: str) -> tuple[Tensor, Tensor, Tensor]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}"
            )
        if t.dtype not in dtypes:
            raise TypeError(f"{name} must be {dtype_words}, got dtype {t.dtype}")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    return q, k, v


def _check_heads(h: int, hkv: int) -> None:
    if hkv == 0 or h % hkv != 0:
        raise ValueError(
            f"the number of query heads ({h}) must be a multiple of the number of key/value "
            f"heads ({hkv})"
        )


def check_tiled_inputs(q: object, k: object, v: object, key_lengths: object, causal: object,
                       scale: object) -> float:
    """Check the arguments of :func:`headwise.kernels.tiled_attention`; returns the
    scale (``1 / sqrt(D)`` for None). ``TypeError``/``ValueError`` name what is wrong."""
    q, k, v = _check_qkv(q, k, v, TILED_DTYPES, "float16, bfloat16 or float32")
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(
            f"q, k, v must share the batch size, got shapes {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must have the same (heads, seq), got shapes {tuple(k.shape)} and "
            f"{tuple(v.shape)}"
        )
    _check_heads(h, k.shape[1])
    if k.shape[3] != d:
        raise ValueError(f"q and k must share head_dim, got {d} and {k.shape[3]}")
    for name, dim in (("head_dim", d), ("value head_dim", v.shape[3])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {dim}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if key_lengths is not None:
        check_key_lengths(key_lengths, b, k.shape[2], q.device, other="q is", values=False)
    if scale is None:
        return 1.0 / math.sqrt(d)
    return check_real("scale", scale, what="a finite float or None", error=TypeError)


def check_int8_inputs(q: object, k: object, v: object, key_lengths: object) -> None:
    """Check the tensors of :func:`headwise.kernels.int8_attention.int8_attention`."""
    q, k, v = _check_qkv(q, k, v, INT8_DTYPES,
                         "float16 or bfloat16 (int8 attention keeps P V in it)")
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[3] != d or k.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"q, k, v shapes do not fit together: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)} (need k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv))")
    _check_heads(h, k.shape[1])
    if not (1 <= d <= MAX_HEAD_DIM and 1 <= v.shape[3] <= MAX_HEAD_DIM):
        raise ValueError(f"head dims must be in 1..{MAX_HEAD_DIM}, got {d} and {v.shape[3]}")
    if key_lengths is not None:
        check_key_lengths(key_lengths, b, k.shape[2], q.device, other="q is", values=False)
