"""Which number format a training run uses: ``--precision auto|fp32|bf16``.

bf16 autocast pays only where the hardware multiplies bf16 natively: NVIDIA GPUs of
compute capability 8.0 (Ampere) and later, x86 CPUs with AVX512-BF16 or AMX-BF16,
Arm CPUs with the BF16 extension. The check itself is :func:`bf16_math_support`
(shared with ``headwise eval --format bf16``; :mod:`headwise.formats` re-exports it).
Elsewhere ``torch.autocast`` still runs (every bf16 matmul converts to fp32 and back),
which is correct but slower than fp32. :func:`resolve_precision` turns the setting into
what runs and a sentence that says why; nothing is changed silently: ``auto`` chooses,
``fp32`` and ``bf16`` are kept as asked.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from ..checks import check_choice

__all__ = ["PRECISIONS", "Precision", "cpu_capabilities", "bf16_math_support", "native_bf16",
           "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_capabilities() -> dict:
    """The CPU's instruction-set flags as torch reports them (``{"avx512_bf16": True,
    "amx_bf16": ...}``); empty where this torch build does not say."""
    try:
        caps = torch._C._cpu._get_cpu_capability()  # a dict of flags in torch >= 2.8
        return caps if isinstance(caps, dict) else {}
    except Exception:  # older or other builds: no flags to read
        return {}


def bf16_math_support(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """``(True, what)`` when ``device`` computes in bf16 natively, else ``(False, why)``.

    CPU: x86 needs AVX512_BF16 or AMX-BF16 (oneDNN then runs bf16 GEMMs faster than
    fp32); Arm needs the BF16 extension. Without them every bf16 op converts to fp32
    and back, which is slower than staying in fp32. CUDA: compute capability >= 8.0.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, f"CUDA compute capability {major}.{minor} has bf16 tensor cores"
        return False, (f"CUDA compute capability {major}.{minor} < 8.0 has no bf16 tensor cores "
                       f"(bf16 is emulated)")
    if device.type != "cpu":
        return False, f"no bf16 capability check for device type {device.type!r}"
    caps = cpu_capabilities()
    arch = platform.machine().lower()
    if arch in ("x86_64", "amd64", "i386", "i686"):
        found = [f for f in ("amx_bf16", "avx512_bf16") if caps.get(f)]
        if found:
            return True, f"this CPU has {' and '.join(f.upper() for f in found)}"
        return False, ("this CPU lacks AVX512_BF16 and AMX-BF16 (torch CPU capability "
                       f"{torch.backends.cpu.get_cpu_capability()!r}), so bf16 math is emulated "
                       "by converting to fp32 and back")
    if arch in ("aarch64", "arm64"):
        if _arm_has_bf16():
            return True, "this Arm CPU has the BF16 extension"
        return False, "this Arm CPU lacks the BF16 extension, so bf16 math is emulated in fp32"
    return False, f"no bf16 capability check for CPU architecture {arch!r}"


def _arm_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("Features") and " bf16" in line for line in f)
    except OSError:
        return platform.system() == "Darwin"  # Apple M2 and later


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """``(True, what)`` when ``device`` multiplies bf16 in hardware, else ``(False, why)``."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available"
    return bf16_math_support(device)


@dataclass(frozen=True)
class Precision:
    """The setting (``requested``), what runs (``used``: ``"fp32"`` or ``"bf16"``),
    whether the device has native bf16, and a one-line ``note`` for the log."""

    requested: str
    used: str
    native_bf16: bool
    note: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16`` for bf16 autocast, None for plain fp32."""
        return torch.bfloat16 if self.used == "bf16" else None

    def autocast(self, device: torch.device | str):
        """The context to run forwards in: bf16 autocast, or a disabled one for fp32."""
        device = torch.device(device)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.used == "bf16")

    def to_dict(self) -> dict:
        return {"requested": self.requested, "used": self.used,
                "native_bf16": self.native_bf16, "note": self.note}


def resolve_precision(requested: str, device: torch.device | str, *,
                      support: tuple[bool, str] | None = None) -> Precision:
    """``auto`` -> bf16 where the device has native bf16, else fp32; ``fp32`` and
    ``bf16`` run as asked (bf16 without native support runs emulated, and the note
    says so). ``support``: a ``(native, why)`` pair to use instead of detecting it."""
    check_choice("precision", requested, PRECISIONS)
    native, why = native_bf16(device) if support is None else support
    if requested == "auto":
        if native:
            return Precision(requested, "bf16", True,
                             f"precision auto -> bf16 autocast, fp32 master weights and optimizer "
                             f"state ({why})")
        return Precision(requested, "fp32", False, f"precision auto -> fp32 ({why})")
    if requested == "bf16":
        if native:
            return Precision(requested, "bf16", True,
                             f"precision bf16: autocast, fp32 master weights and optimizer state ({why})")
        return Precision(requested, "bf16", False,
                         f"precision bf16 runs emulated, expect it slower than fp32: {why}")
    return Precision(requested, "fp32", native, "precision fp32")
