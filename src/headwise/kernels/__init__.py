"""The kernels: Triton attention for GPUs, and oneDNN float32 linears for CPUs (no
nn.Modules here).

``import headwise.kernels`` never touches Triton: the modules that define kernels
(Triton reads ``TRITON_INTERPRET`` when a kernel is defined) are imported at the
first call.

* :func:`tiled_attention`, :func:`tiled_attention_lse` — FlashAttention-style
  forward and backward (``headwise.kernels.tiled``), registered as the
  custom ops ``torch.ops.headwise.tiled_attention_fwd`` / ``_bwd``.
* :class:`TiledOptions` — how they run; :func:`set_tiled_options` and the
  :func:`tiled_options` context manager set the process default, which
  :func:`get_tiled_options` returns.
* :func:`reset_autotune_cache` — forget the launch configs found so far.
* ``headwise.kernels.int8_attention.int8_attention`` — int8 ``Q K^T`` (forward only).
* ``headwise.kernels.cpu_linear.linear`` — ``F.linear`` whose float32 CPU GEMMs
  (forward and backward) run in oneDNN where that beats torch's MKL (AMD CPUs with
  AVX-512: 2.2x); every model's projections call it.
"""

from __future__ import annotations

from .options import TiledOptions, get_tiled_options, set_tiled_options, tiled_options
from .runtime import reset_autotune_cache, triton_available
from .tiled import tiled_attention, tiled_attention_lse

__all__ = [
    "tiled_attention",
    "tiled_attention_lse",
    "triton_available",
    "TiledOptions",
    "get_tiled_options",
    "set_tiled_options",
    "tiled_options",
    "reset_autotune_cache",
]
