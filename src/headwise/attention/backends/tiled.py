"""The tiled Triton kernels (FlashAttention-style, :mod:`headwise.kernels.tiled`).

Every head at once, never the ``Tq x Tk`` scores: forward and backward walk
tiles of keys and queries with an online softmax. Causal masks and key lengths
are handled inside the kernels (fully masked tiles are skipped), and grouped-query
attention reads each shared K/V head in place. It cannot return the weights, has
no dropout and takes no dense additive mask.

It runs on CUDA. On the CPU it runs only under ``TRITON_INTERPRET=1`` (the
Triton interpreter, for tests), and ``backend="auto"`` never picks it there
(``auto_devices``). Triton is imported at the first call, not when this module
is imported, because Triton reads ``TRITON_INTERPRET`` when kernels are defined.
"""

from __future__ import annotations

import os

import torch

from ..masks import MaskSpec
from .base import AttentionCall, Backend

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256  # as headwise.kernels.tiled.MAX_HEAD_DIM, without importing Triton


class TiledBackend(Backend):
    """FlashAttention-style Triton kernels (forward + backward)."""

    name = "tiled"
    priority = 30
    auto_devices: tuple[str, ...] = ("cuda",)  # "auto" never picks it on the CPU

    def unsupported(self, call: AttentionCall) -> str | None:
        if call.need_weights:
            return "it cannot return attention weights (need_weights=True)"
        if call.dropout_p > 0:
            return f"it has no attention dropout (dropout_p={call.dropout_p}, needs 0)"
        if call.mask.bias is not None:
            return "dense attn_mask/key_padding_mask bias; pass key_lengths instead"
        if call.dtype not in _DTYPES:
            return f"dtype {call.dtype} (supports float16, bfloat16, float32)"
        if not (1 <= call.head_dim <= _MAX_HEAD_DIM and 1 <= call.value_dim <= _MAX_HEAD_DIM):
            return (
                f"head_dim {call.head_dim} / value_dim {call.value_dim} "
                f"(supports 1..{_MAX_HEAD_DIM})"
            )
        device = call.device.type
        if device == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return (
                    "it runs on CPU only under TRITON_INTERPRET=1 (the Triton interpreter) "
                    "and only when asked for explicitly"
                )
        elif device != "cuda":
            return f"device {call.device} (supports cuda)"
        from ...kernels import triton_available

        if not triton_available():
            return "triton is not installed (pip install triton)"
        return None

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        from ...kernels import tiled_attention

        out = tiled_attention(
            q, k, v, causal=mask.causal, key_lengths=mask.key_lengths, scale=float(scale)
        )
        return out, None
