"""The tiled kernels as torch custom ops: ``torch.ops.headwise.tiled_attention_fwd``
and ``tiled_attention_bwd``, with fake (meta) implementations for tracing and the
autograd formula that joins them.

Each op takes the :class:`~headwise.kernels.options.TiledOptions` fields as its last
arguments (``autotune, bwd, tma, fwd, dkdv``, defaulting to ``TiledOptions()``), so
that ``torch.compile`` sees them as constants and the backward runs with the options
of its forward. Importing this module imports Triton (through the launchers).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .options import TiledOptions
from .tiled_launch import backward, empty_bhtd, forward

__all__: list[str] = []

_D = TiledOptions()


@functools.lru_cache(maxsize=64)
def _options(*args: object) -> TiledOptions:
    """The options an op was called with (validated once per distinct set, not per call)."""
    return TiledOptions(*args)


@torch.library.custom_op("headwise::tiled_attention_fwd", mutates_args=())
def _tiled_attention_fwd(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None,
                         causal: bool, scale: float, autotune: bool = _D.autotune,
                         bwd: str = _D.bwd, tma: bool | None = _D.tma, fwd: str = _D.fwd,
                         dkdv: str = _D.dkdv) -> tuple[Tensor, Tensor]:
    options = _options(autotune, bwd, tma, fwd, dkdv)
    return forward(q, k, v, key_lengths, causal, scale, options)


@_tiled_attention_fwd.register_fake
def _(q, k, v, key_lengths, causal, scale, autotune=_D.autotune, bwd=_D.bwd, tma=_D.tma,
      fwd=_D.fwd, dkdv=_D.dkdv):
    b, h, tq, _ = q.shape
    out = empty_bhtd(b, h, tq, v.shape[3], q)
    return out, q.new_empty((b, h, tq), dtype=torch.float32)


@torch.library.custom_op("headwise::tiled_attention_bwd", mutates_args=())
def _tiled_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                         lse: Tensor, dlse: Tensor | None, key_lengths: Tensor | None,
                         causal: bool, scale: float, autotune: bool = _D.autotune,
                         bwd: str = _D.bwd, tma: bool | None = _D.tma, fwd: str = _D.fwd,
                         dkdv: str = _D.dkdv) -> tuple[Tensor, Tensor, Tensor]:
    options = _options(autotune, bwd, tma, fwd, dkdv)
    return backward(dout, q, k, v, out, lse, dlse, key_lengths, causal, scale, options)


@_tiled_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, key_lengths, causal, scale, autotune=_D.autotune,
      bwd=_D.bwd, tma=_D.tma, fwd=_D.fwd, dkdv=_D.dkdv):
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    return (empty_bhtd(b, h, tq, d, q), empty_bhtd(b, hkv, tk, d, k),
            empty_bhtd(b, hkv, tk, v.shape[3], v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_lengths, causal, scale, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths)
    ctx.causal, ctx.scale, ctx.n_inputs = causal, scale, len(inputs)
    ctx.options = _options(*options).op_args()  # unpassed trailing ones: the defaults


def _backward_rule(ctx, dout, dlse):
    q, k, v, out, lse, key_lengths = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _tiled_attention_bwd(dout, q, k, v, out, lse, dlse, key_lengths,
                                      ctx.causal, ctx.scale, *ctx.options)
    return dq, dk, dv, *([None] * (ctx.n_inputs - 3))


_tiled_attention_fwd.register_autograd(_backward_rule, setup_context=_setup_context)
