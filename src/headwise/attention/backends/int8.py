"""int8 attention: SageAttention-style int8 ``Q K^T`` in Triton
(:mod:`headwise.kernels.int8_attention`), softmax and ``P V`` in fp16/bf16.

Lossy (about 1e-2 relative error on the output) and forward only: it serves
inference calls on CUDA with float16/bfloat16 tensors. ``backend="auto"`` considers
it only on CUDA and ranks it below every exact backend, so in practice it runs when
asked for by name (``backend="int8"``, or ``headwise.quantize(model, "int8",
attention="int8")``). On the CPU it runs only under ``TRITON_INTERPRET=1``, for tests.
"""

from __future__ import annotations

from ...kernels.inputs import INT8_DTYPES, MAX_HEAD_DIM
from ..masks import MaskSpec
from .base import AttentionCall, Backend, triton_kernel_unsupported


class Int8Backend(Backend):
    """int8 ``Q K^T`` with per-tile scales (forward only)."""

    name = "int8"
    priority = 5  # below math (10), sdpa, tiled: "auto" never trades accuracy away silently
    auto_devices: tuple[str, ...] = ("cuda",)

    def unsupported(self, call: AttentionCall) -> str | None:
        if call.requires_grad:
            return "it is forward-only (inference): no backward, but gradients are required here"
        return triton_kernel_unsupported(call, INT8_DTYPES, MAX_HEAD_DIM)

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        # Triton is an optional dependency: this module defines kernels when imported
        from ...kernels.int8_attention import int8_attention

        out = int8_attention(q, k, v, causal=mask.causal, key_lengths=mask.key_lengths, scale=float(scale))
        return out, None
