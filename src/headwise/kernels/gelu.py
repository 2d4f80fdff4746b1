"""The tanh GELU, forward and gradient, written through ``sigmoid`` and run a cache-sized
slab of rows at a time.

``0.5 x (1 + tanh(u)) = x sigmoid(2u)`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``, so the
tanh GELU needs no ``tanh``, whose vectorised form in torch is slow on some CPUs, while
``sigmoid`` is fast. Written as a few elementwise ops on slabs of :data:`SLAB` elements
(they stay in the core's L2 cache), on a 2-core Zen 5 EPYC (``lscpu`` family 26) at one
electra-small MLP's shape (4096 x 1024 floats): the forward took 1.90 ms against 2.80 ms
for ``F.gelu(approximate="tanh")``, and the gradient together with the recomputed
activation (what :mod:`headwise.kernels.mlp`'s backward needs) 4.69 ms against 5.74 ms
for torch's two ops; a whole fp32 electra-small CLM training step ran 1.05x faster
(``python bench/gelu.py --pairs 8``, bench/results/gelu_zen5.json).

The gradient, ``s + s (1 - s) x 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)`` with
``s = sigmoid(2u)``, is multiplied out in that order, so that where ``s`` saturates the
product is zero before the cubic factor can overflow (as in torch's own
``gelu_backward``). Values differ from ``F.gelu``'s by float rounding only
(``tests/kernels/test_gelu.py`` holds both to float64 math). Other dtypes than float32
and float64 (bf16, whose intermediate roundings would add up) get torch's own ops.

On CPUs where those ops run memory-bound (a 2-core Intel Xeon with AMX: ~1 ms per pass
over 4M floats, slabs or not), one fused loop does better: :func:`torch.compile`
(Inductor's C++ code) of the same formula took 2.9 ms for the forward and 4.3 ms for the
gradient with the activation there, against the slabs' 6.5 and 13.5 ms. Compiling costs
about 30 s in a fresh process and 5 s with Inductor's on-disk cache warm, so the
process's :func:`cpu_gelu_choice` takes it only where it pays: ``auto`` (the default)
compiles for CPU tensors of at least :data:`MIN_COMPILED` elements, ``compiled`` for
every CPU tensor, ``eager`` never; :func:`set_cpu_gelu` or the ``HEADWISE_CPU_GELU``
environment variable sets it. Where compiling fails (no C++ compiler, say), ``auto``
warns once and goes on with the slabs; ``compiled`` raises.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_setting

__all__ = ["gelu_tanh", "gelu_tanh_and_grad", "SLAB", "MIN_COMPILED", "CHOICES", "ENV",
           "set_cpu_gelu", "cpu_gelu_choice"]

SLAB = 1 << 17
"""Elements per slab (512 KiB of float32: half a Zen 5 core's L2)."""

_C = math.sqrt(2.0 / math.pi)
_K = 0.044715
_OWN = (torch.float32, torch.float64)  # the dtypes written out here

CHOICES = ("auto", "compiled", "eager")
ENV = "HEADWISE_CPU_GELU"
MIN_COMPILED = 1 << 20
"""``auto`` compiles the GELU for CPU tensors of at least this many elements (an
electra-small MLP's batch of 32 x 128 has 4M, the tests' models far fewer)."""

_setting: str | None = None  # None: read ENV on first use
_failed = ""  # why compiling failed ('' while it has not)
_kernels: dict[str, object] = {}  # name -> the compiled kernel of _FUSED[name]


def set_cpu_gelu(choice: str) -> None:
    """Set how this process runs the float32/float64 tanh GELU on the CPU: ``auto``,
    ``compiled`` or ``eager`` (see the module's notes). Raises ValueError for any other
    value."""
    global _setting
    _setting = check_setting("set_cpu_gelu", "CPU GELU", choice, CHOICES)


def cpu_gelu_choice() -> dict:
    """``{"setting": ..., "min_compiled": MIN_COMPILED, "failed": why or ""}``: how the
    tanh GELU runs on the CPU, and why compiling it failed if it did."""
    return {"setting": _current_setting(), "min_compiled": MIN_COMPILED, "failed": _failed}


def _current_setting() -> str:
    global _setting
    if _setting is None:
        _setting = check_setting(ENV, "CPU GELU", os.environ.get(ENV, "auto"), CHOICES)
    return _setting


def _fused_sigmoid_2u(h: Tensor) -> Tensor:
    return torch.sigmoid(h * (2 * _C + (2 * _C * _K) * h * h))


def _fused_forward(h: Tensor) -> Tensor:
    return h * _fused_sigmoid_2u(h)


def _fused_both(g: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    s = _fused_sigmoid_2u(h)
    w = (1.0 - s) * s * h  # zero where s saturates, before the cubic factor below
    return h * s, g * (w * (2 * _C + (6 * _C * _K) * h * h) + s)


_FUSED = {"forward": _fused_forward, "both": _fused_both}  # what _compiled compiles, by name


def _compiled(name: str, *args: Tensor):
    """The compiled kernel of ``_FUSED[name]`` on ``args`` flattened, or None where this process
    does not compile the GELU for them (or compiling failed under ``auto``)."""
    global _failed
    x = args[-1]
    setting = _current_setting()
    if (setting == "eager" or _failed or x.device.type != "cpu" or x.numel() < 2
            or torch.compiler.is_compiling()
            or (setting == "auto" and x.numel() < MIN_COMPILED)):
        return None
    fn = _kernels.get(name)
    if fn is None:
        fn = _kernels[name] = torch.compile(_FUSED[name], dynamic=True, fullgraph=True)
    try:
        return fn(*(a.reshape(-1) for a in args))
    except Exception as e:  # noqa: BLE001 - Inductor's failures have no common base
        lines = str(e).strip().splitlines()
        _failed = f"{type(e).__name__}: {lines[0] if lines else ''}"
        if setting == "compiled":
            raise RuntimeError(f"{ENV}=compiled, but compiling the GELU failed ({_failed})") from e
        warnings.warn(f"headwise: compiling the CPU GELU failed ({_failed}); "
                      f"it runs eagerly from now on", RuntimeWarning, stacklevel=3)
        return None


def _slabs(x: Tensor) -> tuple[list[tuple[int, int]], Tensor]:
    """Row spans of ``x`` viewed as 2-D, about :data:`SLAB` elements each, and that view."""
    cols = x.shape[-1] if x.dim() else 1
    x2 = x.reshape(-1, cols) if cols else x.reshape(0, 0)
    rows = max(1, SLAB // max(1, cols))
    return [(i, min(i + rows, x2.shape[0])) for i in range(0, x2.shape[0], rows)], x2


def _sigmoid_2u(h: Tensor) -> Tensor:
    """``sigmoid(2u)``, a fresh tensor."""
    s = torch.addcmul(h.new_tensor(2 * _C), h, h, value=2 * _C * _K)
    return s.mul_(h).sigmoid_()


def gelu_tanh(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")`` (no autograd)."""
    if x.dtype not in _OWN:
        return F.gelu(x, approximate="tanh")
    fused = _compiled("forward", x)
    if fused is not None:
        return fused.view(x.shape)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    spans, x2 = _slabs(x)
    o2 = out.view(x2.shape)
    for a, b in spans:
        torch.mul(x2[a:b], _sigmoid_2u(x2[a:b]), out=o2[a:b])
    return out


def gelu_tanh_and_grad(grad: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(gelu_tanh(x), grad * gelu_tanh'(x))`` in one sweep over ``x`` (no autograd);
    ``grad`` has ``x``'s shape."""
    if x.dtype not in _OWN:
        return (F.gelu(x, approximate="tanh"),
                torch.ops.aten.gelu_backward(grad, x, approximate="tanh"))
    fused = _compiled("both", grad, x)
    if fused is not None:
        return fused[0].view(x.shape), fused[1].view(x.shape)
    act = torch.empty_like(x, memory_format=torch.contiguous_format)
    dx = torch.empty_like(act)
    spans, x2 = _slabs(x)
    g2, a2, d2 = grad.reshape(x2.shape), act.view(x2.shape), dx.view(x2.shape)
    for a, b in spans:
        h = x2[a:b]
        s = _sigmoid_2u(h)
        torch.mul(h, s, out=a2[a:b])
        w = torch.rsub(s, 1.0).mul_(s).mul_(h)  # s (1 - s) x
        w.mul_(torch.addcmul(h.new_tensor(2 * _C), h, h, value=6 * _C * _K)).add_(s)
        torch.mul(w, g2[a:b], out=d2[a:b])
    return act, dx
