"""One place that turns a device string (``--device``) into a ``torch.device``.

Every command and the trainer call :func:`resolve_device`, so a bad device is refused
the same way everywhere: a ``ValueError`` that names the string, what is wrong with it
(an unknown device type, CUDA not available, an index out of range) and what is
accepted on this machine.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "accepted_devices"]


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def accepted_devices() -> str:
    """The device strings this machine accepts, in words."""
    names = ["auto", "cpu"]
    n = _cuda_count()
    if n == 1:
        names += ["cuda", "cuda:0"]
    elif n > 1:
        names += ["cuda", f"cuda:N (N from 0 to {n - 1})"]
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


def resolve_device(name: str | torch.device, *, what: str = "device") -> torch.device:
    """``torch.device`` for ``name``: ``auto`` (the first GPU if there is one, else the
    CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` where available.

    Args:
        name: the device string (or a ``torch.device``, checked the same way).
        what: how the caller names the setting in the error, e.g. ``"--device"``.

    Raises:
        ValueError: naming ``name``, what is wrong with it and what is accepted.
    """
    if isinstance(name, torch.device):
        dev = name
        text = str(name)
    else:
        text = str(name).strip()
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise ValueError(
                f"{what} {text!r}: unknown device type; accepted: {accepted_devices()}"
            ) from None
    if dev.type == "cpu":
        # torch takes cpu:0, but a checkpoint's reader does not ("device cpu:0 is invalid")
        if dev.index not in (None, 0):
            raise ValueError(f"{what} {text!r}: there is one CPU device, cpu (or cpu:0); accepted: "
                             f"{accepted_devices()}")
        return torch.device("cpu")
    if dev.type == "cuda":
        n = _cuda_count()
        if n == 0:
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "no GPU is visible")
            raise ValueError(
                f"{what} {text!r}: CUDA is not available ({why}); accepted: {accepted_devices()}"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(
                f"{what} {text!r}: GPU index {dev.index} is out of range, this machine has {n} GPU(s) "
                f"(cuda:0 to cuda:{n - 1}); accepted: {accepted_devices()}"
            )
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"{what} {text!r}: MPS is not available; accepted: {accepted_devices()}")
        return dev
    raise ValueError(
        f"{what} {text!r}: device type {dev.type!r} is not supported here; accepted: {accepted_devices()}"
    )
