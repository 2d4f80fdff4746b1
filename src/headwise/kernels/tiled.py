"""FlashAttention-style tiled attention in Triton, forward and backward: the public
functions. Importing this module does not import Triton; the first call does.

The forward pass (:mod:`.tiled_forward`) walks the key/value tiles of one query tile
with an online softmax, so the ``Tq x Tk`` score matrix never exists, and returns the
output and each query row's log-sum-exp; the backward (:mod:`.tiled_backward`)
recomputes the probabilities tile by tile from them. :mod:`.tiled_launch` picks each
kernel's variant and config (:mod:`.tiled_configs`) from a :class:`TiledOptions`, and
:mod:`.tiled_ops` registers the custom ops ``torch.ops.headwise.tiled_attention_fwd``
and ``_bwd`` that these functions call.

Masks: causal (bottom-right aligned: query ``i`` sees key ``j`` iff
``j <= i + Tk - Tq``) and key lengths (keys ``>= key_lengths[b]`` are padding).
Tiles that are masked out entirely are never visited (the loop bounds exclude
them), tiles that are entirely visible run without mask arithmetic, and only the
tiles on a boundary pay for ``tl.where``. A query row that sees no key gets an
output of exactly 0, a log-sum-exp of ``-inf`` and zero gradients.

Head dims up to 256 of any size: tiles are padded to the next power of two
(at least 16, the smallest ``tl.dot``) with masked loads. Any strides: the
launchers pass every stride, so the ``(B, H, T, D)`` views that the layer makes
by transposing ``(B, T, H, D)`` buffers are read in place.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import check_tiled_inputs
from .options import TiledOptions, get_tiled_options

__all__ = ["tiled_attention", "tiled_attention_lse"]


def tiled_attention_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
    options: TiledOptions | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v with the tiled Triton kernels, plus the
    log-sum-exp of each query row's masked, scaled scores.

    Args:
        q: ``(B, H, Tq, D)``; k: ``(B, Hkv, Tk, D)``; v: ``(B, Hkv, Tk, Dv)``, with
            ``H`` a multiple of ``Hkv`` (query head ``h`` reads K/V head
            ``h // (H // Hkv)``); float16, bfloat16 or float32; any strides;
            ``D, Dv <= 256``.
        causal: query ``i`` sees key ``j`` iff ``j <= i + Tk - Tq``.
        key_lengths: ``(B,)`` integers; keys at positions ``>= key_lengths[b]`` are
            padding (values are clamped to ``[0, Tk]``).
        scale: score scale, default ``1 / sqrt(D)``.
        options: how the kernels run (forward and backward); default the process
            default (:func:`headwise.kernels.set_tiled_options`).

    Returns:
        ``out (B, H, Tq, Dv)`` in the inputs' dtype (a view of a ``(B, Tq, H, Dv)``
        buffer) and ``lse (B, H, Tq)`` float32, natural log; rows that see no key
        give ``out = 0`` and ``lse = -inf``. Both are differentiable.
    """
    scale_f = check_tiled_inputs(q, k, v, key_lengths, causal, scale)
    if options is None:
        options = get_tiled_options()
    elif not isinstance(options, TiledOptions):
        raise TypeError(f"options must be a TiledOptions or None, got {type(options).__name__}")
    # Triton is an optional dependency: the ops (and Triton) load at the first call
    from . import tiled_ops  # noqa: F401  (registers torch.ops.headwise.tiled_attention_*)

    return torch.ops.headwise.tiled_attention_fwd(q, k, v, key_lengths, causal, scale_f,
                                                  *options.op_args())


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
    options: TiledOptions | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v for every head at once with the tiled Triton
    kernels; returns ``out (B, H, Tq, Dv)``. Arguments as in
    :func:`tiled_attention_lse`."""
    return tiled_attention_lse(q, k, v, causal=causal, key_lengths=key_lengths, scale=scale,
                               options=options)[0]
