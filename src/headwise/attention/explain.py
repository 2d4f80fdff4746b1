"""Asking ``backend="auto"`` about a call: which backend it gets and why
(:func:`explain_backend`), fixing the choice (:func:`pin_backend`), and ``auto``'s
settings (:func:`set_backend_autotune`, :func:`set_dispatch_cache`,
:func:`clear_dispatch_cache`). The measuring itself is :mod:`.backends.dispatch`; this
module sits above it and the layer, as it takes a layer's call as well as q, k, v."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..checks import check_int
from .backends import DISPATCHER, AttentionCall, get_backend
from .backends.dispatch import BackendChoice
from .layer import MultiHeadAttention
from .masks import MaskSpec, normalize_mask

__all__ = ["explain_backend", "pin_backend", "set_backend_autotune", "set_dispatch_cache",
           "clear_dispatch_cache"]


def set_backend_autotune(enabled: bool | None = None, *, budget_ms: float | None = None,
                         warmup: int | None = None, reps: int | None = None) -> dict:
    """Turn ``auto``'s timing on or off (``None`` leaves it to ``HEADWISE_AUTOTUNE_BACKEND``,
    default on) and set its budget and call counts. Returns the settings now in force."""
    d = DISPATCHER
    if budget_ms is not None and not budget_ms >= 0:
        raise ValueError(f"budget_ms must be >= 0, got {budget_ms}")
    check_int("warmup", warmup, minimum=0, none_ok=True)
    check_int("reps", reps, minimum=1, none_ok=True)
    d.enabled = enabled
    if budget_ms is not None:
        d.budget_ms = float(budget_ms)
    if warmup is not None:
        d.warmup = warmup
    if reps is not None:
        d.reps = reps
    return {"enabled": d.timing_enabled(), "budget_ms": d.budget(), "warmup": d.warmup, "reps": d.reps}


def set_dispatch_cache(path: str | os.PathLike | None) -> None:
    """Keep ``auto``'s measurements in the JSON file ``path`` too (read at the first
    call of a device, written after each new measurement), keyed by GPU name and the
    torch and Triton versions. ``None`` goes back to ``HEADWISE_DISPATCH_CACHE``
    (unset: memory only). ValueError for a folder or a file headwise did not write."""
    DISPATCHER.use_cache_file(None if path is None else Path(path).expanduser())


def clear_dispatch_cache() -> None:
    """Forget the choices held in memory (a cache file is not touched)."""
    DISPATCHER.clear()


def _call_from(target, args: tuple, kwargs: dict) -> tuple[AttentionCall, str]:
    """An AttentionCall and the backend name from explain/pin's arguments."""
    if isinstance(target, AttentionCall):
        if args or kwargs:
            raise TypeError("with an AttentionCall, pass nothing else")
        return target, "auto"
    if isinstance(target, Tensor):  # q, k, v as attend() takes them
        q, (k, v, *rest) = target, args
        if len(rest) > 1:
            raise TypeError("explain_backend(q, k, v[, mask], ...) takes at most one MaskSpec")
        mask = rest[0] if rest else kwargs.pop("mask", None)
        backend = kwargs.pop("backend", "auto")
        need_weights = kwargs.pop("need_weights", False)
        dropout_p = kwargs.pop("dropout_p", 0.0)
        if mask is None:
            mask = normalize_mask(batch=q.shape[0], n_heads=q.shape[1], q_len=q.shape[2],
                                  k_len=k.shape[2], device=q.device, float_dtype=q.dtype, **kwargs)
        elif kwargs or not isinstance(mask, MaskSpec):
            raise TypeError("pass either a MaskSpec or mask keywords (causal=, key_lengths=, ...)")
        return AttentionCall.of(q, k, v, mask, need_weights=need_weights, dropout_p=dropout_p), backend
    if isinstance(target, MultiHeadAttention):
        return _layer_call(target, *args, **kwargs), target.backend
    raise TypeError(f"expected an AttentionCall, q/k/v tensors or a MultiHeadAttention layer with its "
                    f"inputs, got {type(target).__name__}")


def _layer_call(layer: MultiHeadAttention, x: Tensor, context: Tensor | None = None, *, causal: bool = False,
                key_padding_mask=None, key_lengths=None, attn_mask=None, kv_cache=None,
                need_weights: bool = False) -> AttentionCall:
    """The AttentionCall ``layer(x, context, ...)`` would make, without running it."""
    b, tq = x.shape[0], x.shape[1]
    tk = (x if context is None else context).shape[1] + (0 if kv_cache is None else len(kv_cache))
    mask = normalize_mask(batch=b, n_heads=layer.n_heads, q_len=tq, k_len=tk, device=x.device,
                          causal=causal, key_padding_mask=key_padding_mask, key_lengths=key_lengths,
                          attn_mask=attn_mask, float_dtype=x.dtype)
    wants = any(w for _, w in layer._head_hooks.values())
    grad = torch.is_grad_enabled() and (
        x.requires_grad or (context is not None and context.requires_grad)
        or any(p.requires_grad for p in layer.parameters()))
    return AttentionCall(dtype=x.dtype, device=x.device, head_dim=layer.head_dim,
                         value_dim=layer.head_dim, n_heads=layer.n_heads, n_kv_heads=layer.n_kv_heads,
                         mask=mask, need_weights=need_weights or wants,
                         dropout_p=layer.dropout if layer.training else 0.0, requires_grad=grad)


def explain_backend(target, *args, measure: bool = True, show: bool = False, **kwargs) -> BackendChoice:
    """Which backend a call gets and why.

    ``target`` is an :class:`AttentionCall`; or ``q, k, v`` tensors (and a
    :class:`MaskSpec` or ``causal=``/``key_lengths=``/... keywords, ``need_weights=``,
    ``backend=``), as :func:`headwise.attention.attend` takes them; or a
    :class:`~headwise.attention.MultiHeadAttention` layer followed by the arguments of
    its call (``explain_backend(layer, x, causal=True)``). With ``measure=True``
    (default) a new shape class is timed now, as its first call would time it; with
    ``measure=False`` nothing runs. ``show=True`` also prints the explanation.

    A backend named by the layer or call (not ``"auto"``) is reported as such, and
    raises the ``ValueError`` the call would raise if it cannot serve it."""
    call, name = _call_from(target, args, kwargs)
    if name != "auto":
        get_backend(name, call)  # raises as the call would
        choice = BackendChoice(name, "named", f"named explicitly (backend={name!r}); auto is not consulted")
    else:
        choice = DISPATCHER.choose(call, measure=measure)
    if show:
        print(choice)
    return choice


def pin_backend(name: str, target, *args, **kwargs) -> BackendChoice:
    """Make ``name`` auto's choice for the shape class of a call (given as for
    :func:`explain_backend`) on its device, in memory and in the cache file if one is
    set. ``name`` must be able to serve the call. Returns the new explanation."""
    call, _ = _call_from(target, args, kwargs)
    get_backend(name, call)  # raises ValueError unless it can serve the call
    d = DISPATCHER
    if call.device.type not in d.timed_devices:
        raise ValueError(f"auto does not measure on {call.device.type} (it goes by priority there); "
                         f"name the backend instead (backend={name!r})")
    d.pin(call, name)
    return d.choose(call, measure=False)
