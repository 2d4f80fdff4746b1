"""The tiled Triton kernels (FlashAttention-style, :mod:`headwise.kernels.tiled`).

Every head at once, never the ``Tq x Tk`` scores: forward and backward walk
tiles of keys and queries with an online softmax. Causal masks and key lengths
are handled inside the kernels (fully masked tiles are skipped), and grouped-query
attention reads each shared K/V head in place. It cannot return the weights, has
no dropout and takes no dense additive mask.

It runs on CUDA, where ``backend="auto"`` times it against ``sdpa`` once per shape
class and takes the faster (:mod:`.dispatch`). On the CPU it runs only under
``TRITON_INTERPRET=1`` (the Triton interpreter, for tests), and ``auto`` never picks
it there (``auto_devices``). Triton is imported at the first call, not when this module
is imported (:mod:`headwise.kernels` defers it), because Triton reads ``TRITON_INTERPRET``
when kernels are defined.
"""

from __future__ import annotations

from ...kernels import tiled_attention  # no Triton until the first call
from ...kernels.inputs import MAX_HEAD_DIM, TILED_DTYPES
from ..masks import MaskSpec
from .base import AttentionCall, Backend, triton_kernel_unsupported


class TiledBackend(Backend):
    """FlashAttention-style Triton kernels (forward + backward)."""

    name = "tiled"
    priority = 30
    timed_by_auto = True  # on CUDA, auto times it against the other candidates
    auto_devices: tuple[str, ...] = ("cuda",)  # "auto" never picks it on the CPU

    def unsupported(self, call: AttentionCall) -> str | None:
        return triton_kernel_unsupported(call, TILED_DTYPES, MAX_HEAD_DIM)

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        out = tiled_attention(
            q, k, v, causal=mask.causal, key_lengths=mask.key_lengths, scale=float(scale)
        )
        return out, None
