"""The kernels' process state, without importing Triton: whether Triton is there, and
the caches of launch configs (:func:`reset_autotune_cache` empties them).

The caches are filled by :mod:`headwise.kernels.tiled_configs` (one ``triton.autotune``
wrapper per kernel, head-dim class and loader) and :mod:`headwise.kernels.tiled_launch`
(the first config that compiled, per kernel variant, when autotuning is off).
"""

from __future__ import annotations

import importlib.util

__all__ = ["triton_available", "reset_autotune_cache"]

TUNERS: dict[tuple, object] = {}
"""``(kind, dim_class, tma)`` -> the ``triton.autotune`` wrapper of that kernel."""
FIXED: dict[tuple, object] = {}
"""Without autotuning: ``(kind, dtype, *meta)`` -> the ``triton.Config`` that compiled."""


def triton_available() -> bool:
    """True when Triton can be imported (without defining any kernel)."""
    return importlib.util.find_spec("triton") is not None


def reset_autotune_cache() -> None:
    """Forget every autotuned and fixed launch config: the next launch of each kernel
    times (or tries) its configs again. Triton's compiled kernels stay cached."""
    TUNERS.clear()
    FIXED.clear()
