"""The attention backends: every way of computing attention, behind one name.

One file per backend (``reference``, ``math``, ``sdpa``, ``tiled``, ``int8``), the
registry that names them (:mod:`.registry`) and what ``backend="auto"`` picks
(:mod:`.dispatch`).
"""

from __future__ import annotations

from .base import AttentionCall, Backend
from .registry import (
    DISPATCHER,
    available_backends,
    backend_refusal,
    backends_serving,
    check_backend_name,
    get_backend,
    register_backend,
)

__all__ = ["AttentionCall", "Backend", "register_backend", "get_backend", "available_backends",
           "check_backend_name", "backend_refusal", "backends_serving", "DISPATCHER"]
