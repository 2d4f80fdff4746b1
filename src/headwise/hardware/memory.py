"""Keep freed memory in the process instead of handing it back to the OS (glibc malloc).

torch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above its
mmap threshold (adjusted on the fly, at most 32 MiB) with fresh pages from the OS and
hands the top of its heap back once more than twice that is free, so a training step,
which frees and allocates the same activations again and again, faults much of its
memory in afresh every time. On a 2-core Zen 5 EPYC an fp32 electra-small step took
51,627 minor page faults (CLM), 31,024 (RTD) and 20,224 (MLM) with glibc's defaults;
with the mmap threshold fixed at 32 MiB and the heap never trimmed, 3, 3,103 and 14,624,
and the steps ran 1.084x, 1.070x and 1.031x faster (``python bench/malloc.py --pairs 4``,
fresh processes alternating; bench/results/malloc_zen5.json). The cost is that the
process's resident memory stays at its peak, which a training run reaches at every step
anyway (peak RSS was the same within 5% in those runs).

:func:`keep_freed_memory` makes that setting with ``mallopt`` once per process, where the
C library is glibc. It leaves the process as it is, and says why, where the environment
already sets glibc's own variables for it (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``), where ``HEADWISE_MALLOC=default`` asks
for glibc's defaults, and where the C library is another one. The trainer calls it on
the CPU and records the answer in the run directory (``precision.json``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory", "ENV", "CHOICES", "MMAP_THRESHOLD", "GLIBC_VARIABLES"]

ENV = "HEADWISE_MALLOC"
"""``keep`` (the default) or ``default`` (leave glibc's malloc as it is)."""
CHOICES = ("keep", "default")
MMAP_THRESHOLD = 32 << 20
"""Blocks above this still get their own pages (glibc's largest allowed value on 64-bit)."""
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int

_done: dict | None = None


def keep_freed_memory() -> dict:
    """Keep freed memory in this process (see the module's text); once per process.

    Returns ``{"setting": "keep" | "default", "applied": bool, "why": str}``. Raises
    ValueError when :data:`ENV` holds anything but ``keep`` or ``default``."""
    global _done
    setting = os.environ.get(ENV, "keep")
    if setting not in CHOICES:
        raise ValueError(f"{ENV} must be keep or default; got {setting!r}")
    if _done is not None and _done["setting"] == setting:
        return dict(_done)
    if _done is not None and _done["applied"]:  # a setting made cannot be taken back
        return dict(_done, why=_done["why"] + f" (earlier in this process; {ENV}={setting} now)")
    _done = {"setting": setting, **_apply(setting)}
    return dict(_done)


def _apply(setting: str) -> dict:
    if setting == "default":
        return {"applied": False, "why": f"{ENV}=default: glibc's malloc as it is"}
    own = [v for v in GLIBC_VARIABLES if v in os.environ]
    if own:
        return {"applied": False, "why": f"the environment sets {', '.join(own)}: left to it"}
    if platform.libc_ver()[0] != "glibc":
        return {"applied": False, "why": "the C library is not glibc: its malloc is left as it is"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    except (OSError, AttributeError) as e:
        return {"applied": False, "why": f"glibc's mallopt could not be called ({e})"}
    if not (mmap_ok and trim_ok):
        refused = [n for n, ok in (("mmap threshold", mmap_ok), ("trim threshold", trim_ok)) if not ok]
        return {"applied": mmap_ok or trim_ok,
                "why": f"glibc's mallopt refused the {' and the '.join(refused)}"}
    return {"applied": True,
            "why": f"glibc keeps freed memory: mmap threshold {MMAP_THRESHOLD >> 20} MiB, heap never trimmed"}
