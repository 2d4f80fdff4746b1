"""Triton kernels (no nn.Modules here).

Submodules import Triton and define their kernels when first imported: Triton
reads ``TRITON_INTERPRET`` at that moment, so this package loads them lazily and
``import headwise.kernels`` alone never touches Triton.

* :func:`tiled_attention`, :func:`tiled_attention_lse` — FlashAttention-style
  forward and backward (``headwise.kernels.tiled``), registered as the
  custom ops ``torch.ops.headwise.tiled_attention_fwd`` / ``_bwd``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = ["tiled_attention", "tiled_attention_lse", "triton_available"]

_LAZY = {
    "tiled_attention": "tiled",
    "tiled_attention_lse": "tiled",
}


def triton_available() -> bool:
    """True when Triton can be imported (without defining any kernel)."""
    return importlib.util.find_spec("triton") is not None


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
