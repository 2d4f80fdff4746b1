"""The backend registry: every way of computing attention, behind one name.

``get_backend("auto", call)`` returns, on the CPU, the highest-priority backend that
can serve ``call``; on CUDA, the one measured fastest on the device for the call's
shape class among those that can serve it (``sdpa`` while nothing is measured; see
:mod:`.dispatch`). An explicit name that cannot serve the call raises ``ValueError``
naming what it lacks. The built-in backends are registered when this module is
imported; others add themselves with :func:`register_backend`.
"""

from __future__ import annotations

from collections.abc import Iterable

from .base import AttentionCall, Backend
from .dispatch import Dispatcher
from .int8 import Int8Backend
from .math import MathBackend
from .reference import ReferenceBackend
from .sdpa import SdpaBackend
from .tiled import TiledBackend

__all__ = ["register_backend", "get_backend", "available_backends", "check_backend_name",
           "backend_refusal", "backends_serving", "DISPATCHER"]

_REGISTRY: dict[str, Backend] = {}
_ORDERED: list[Backend] = []  # the registry, highest priority first


def _ordered() -> list[Backend]:
    return _ORDERED


DISPATCHER = Dispatcher(_ordered)
"""``auto``'s settings and measured choices (see :mod:`.dispatch`)."""


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under ``backend.name`` (replacing any previous)."""
    if not backend.name or backend.name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto', got {backend.name!r}")
    _REGISTRY[backend.name] = backend
    _ORDERED[:] = sorted(_REGISTRY.values(), key=lambda b: -b.priority)
    DISPATCHER.forget_settled()
    return backend


def available_backends() -> list[str]:
    """Names of the registered backends, most preferred first."""
    return [b.name for b in _ORDERED]


def check_backend_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is ``"auto"`` or a registered backend."""
    if name != "auto" and name not in _REGISTRY:
        raise ValueError(
            f"backend must be 'auto' or one of {available_backends()}, got {name!r}"
        )


def get_backend(name: str, call: AttentionCall) -> Backend:
    """The backend that will serve ``call``: ``name`` itself, or for ``"auto"`` the
    highest-priority one that supports it (CPU) or the one measured fastest for the
    call's shape class (CUDA; timing it first if the class is new)."""
    check_backend_name(name)
    if name == "auto":
        return DISPATCHER.backend_for(call)
    backend = _REGISTRY[name]
    reason = backend.unsupported(call)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot serve this call: {reason}")
    return backend


def backend_refusal(name: str, calls: Iterable[AttentionCall]) -> str | None:
    """Why the backend ``name`` cannot serve one of ``calls`` (the reason for the first
    it refuses, as :func:`get_backend` would give it), or None when it serves them all.
    ``"auto"`` serves every call that some registered backend serves. Raises
    ``ValueError`` for an unknown name (:func:`check_backend_name`)."""
    check_backend_name(name)
    for call in calls:
        if name == "auto":
            if not any(b.unsupported(call) is None for b in _ORDERED):
                return "no registered backend can serve this call"
            continue
        reason = _REGISTRY[name].unsupported(call)
        if reason is not None:
            return reason
    return None


def backends_serving(calls: Iterable[AttentionCall]) -> list[str]:
    """The registered backends that can serve every one of ``calls``, most preferred first."""
    calls = list(calls)
    return [b.name for b in _ORDERED if all(b.unsupported(c) is None for c in calls)]


# tiled.py and int8.py import no Triton until their first call, so a missing Triton
# cannot break this import (those backends then report "triton is not installed").
for _b in (ReferenceBackend(), MathBackend(), SdpaBackend(), TiledBackend(), Int8Backend()):
    register_backend(_b)
