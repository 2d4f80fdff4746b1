"""Argument checks shared by every layer: the one home of "an int that is not a bool",
"a finite real number in a range", "one of these choices" and "a key-lengths tensor";
and :func:`naming_errors`, which makes a failed write name its file.

Each check raises with the argument's name, what it got and what is accepted, and
returns the value (so ``self.n = check_int("n", n)`` reads as one statement). This module
imports only torch: it sits below every package (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["is_int", "is_real", "check_int", "check_real", "check_choice", "check_setting",
           "check_switch", "check_key_lengths", "naming_errors"]


def is_int(value: Any) -> bool:
    """``value`` is an int and not a bool (``True`` is an ``int`` to Python, never to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """``value`` is an int or a float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_phrase(minimum: int | None, maximum: int | None) -> str:
    if maximum is not None:
        return f"an int in [{minimum}, {maximum}]" if minimum is not None else f"an int <= {maximum}"
    if minimum == 1:
        return "a positive int"
    return f"an int >= {minimum}" if minimum is not None else "an int"


def check_int(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = None,
              none_ok: bool = False, what: str | None = None) -> Any:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]`` (or None when
    ``none_ok``); else ``ValueError("NAME must be a positive int, got VALUE")`` and the like
    (``what`` replaces the phrase: ``"a token id in [0, 50)"``)."""
    if none_ok and value is None:
        return value
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        what = _int_phrase(minimum, maximum) if what is None else what
        raise ValueError(f"{name} must be {'None or ' if none_ok else ''}{what}, got {value!r}")
    return value


def _interval(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    lo = "(" if min_open or minimum is None else "["
    hi = ")" if max_open or maximum is None else "]"
    return f"{lo}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{hi}"


def check_real(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
               min_open: bool = False, max_open: bool = False, what: str | None = None,
               error: type[Exception] = ValueError) -> float:
    """``float(value)`` if it is a finite int or float (not a bool) in the interval
    (``min_open``/``max_open`` exclude an end); else ``error("NAME must be WHAT, got
    VALUE")``, WHAT defaulting to "a float in [lo, hi]" (or "a positive float" for (0, inf))."""
    ok = is_real(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if min_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if max_open else value <= maximum
    if not ok:
        if what is None:
            if minimum == 0 and min_open and maximum is None:
                what = "a positive float"
            else:
                what = f"a float in {_interval(minimum, maximum, min_open, max_open)}"
        raise error(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, accepted: Iterable[Any]) -> Any:
    """``value`` if it is one of ``accepted``; else ``ValueError`` listing them."""
    accepted = list(accepted)
    if value not in accepted:
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}")
    return value


def check_setting(where: str, what: str, value: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of a process setting's ``choices``; else ``ValueError``
    saying where it came from (a setter's name, an environment variable) and listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{where}: the {what} must be one of {', '.join(choices)}; got {value!r}")
    return value


_SWITCH_ON = ("1", "true", "yes", "on")
_SWITCH_OFF = ("0", "false", "no", "off")


def check_switch(name: str, value: str | None, default: bool | None, *, also: str = "") -> bool | None:
    """An on/off setting's text (an environment variable ``name``): ``default`` when
    unset, empty or the word ``also`` (a third setting such as ``auto``); True for 1,
    true, yes, on and False for 0, false, no, off (any case, spaces around ignored);
    else ``ValueError`` naming ``name``, the value and those words (so a typo is never
    taken for one of them)."""
    word = "" if value is None else value.strip().lower()
    if not word or (also and word == also):
        return default
    if word in _SWITCH_ON or word in _SWITCH_OFF:
        return word in _SWITCH_ON
    raise ValueError(f"{name} must be 1, true, yes or on (on), {'' if also else 'or '}0, false, no or off (off)"
                     + (f", or {also}" if also else "") + f"; got {value!r}")


def check_key_lengths(key_lengths: Any, batch: int, k_len: int, device: torch.device,
                      *, other: str = "the inputs are", values: bool = True) -> None:
    """Check that ``key_lengths`` is a ``(batch,)`` integer tensor of valid key counts in
    ``[0, k_len]`` on ``device``; ``TypeError``/``ValueError`` naming what is wrong otherwise.
    ``other`` names what ``device`` belongs to in the message ("q is"). Reads the values (one host
    sync) to check the range, unless ``values`` is False (the kernels clamp them to ``[0, k_len]``,
    and a check under ``torch.compile`` must not read a tensor's data)."""
    if not isinstance(key_lengths, Tensor):
        raise TypeError(
            f"key_lengths must be a torch.Tensor of shape ({batch},), got {type(key_lengths).__name__}"
        )
    dtype = key_lengths.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"key_lengths must be an integer tensor, got dtype {dtype}")
    if tuple(key_lengths.shape) != (batch,):
        raise ValueError(
            f"key_lengths must have shape ({batch},) (one length per sequence), got {tuple(key_lengths.shape)}"
        )
    if key_lengths.device != device:
        raise ValueError(f"key_lengths is on {key_lengths.device} but {other} on {device}")
    if values and key_lengths.numel():
        lo, hi = int(key_lengths.min()), int(key_lengths.max())
        if lo < 0 or hi > k_len:
            raise ValueError(
                f"key_lengths must lie in [0, {k_len}] (the key length), got values in [{lo}, {hi}]"
            )


@contextlib.contextmanager
def naming_errors(path: str | os.PathLike) -> Iterator[None]:
    """Within, an OSError that names no file (a write's: a full disk, a file past the size
    limit) is raised again naming ``path``: "RUN/metrics.jsonl: File too large"."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e
