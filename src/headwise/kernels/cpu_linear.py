"""float32 ``F.linear`` on the CPU through oneDNN, forward and backward, where that is faster.

torch sends a float32 CPU matmul to MKL's sgemm. On AMD CPUs MKL runs its AVX2 code,
even where the cores execute 512-bit FMAs at full width: on a 2-core Zen 5 EPYC
(``lscpu`` family 26) the model's GEMMs ran at about 190 GFLOP/s in MKL against
430 GFLOP/s in oneDNN (the library torch ships for its bf16 matmuls), whose AVX-512 code
is chosen by instruction set, not by vendor; one core's 512-bit FMA peak there is
240 GFLOP/s (``bench/fma_peak.c`` built with 512-bit vectors). The results are plain
float32 GEMMs with float32 accumulation, as MKL's are (``tests/kernels/test_cpu_linear.py``
holds both to float64 math).

:func:`linear` is ``F.linear`` with that choice made: float32 CPU tensors outside
autocast go through ``torch.ops.mkldnn._linear_pointwise`` (forward, ``dX = dY W`` and
``dW = dY^T X``), everything else through ``F.linear``. Which one float32 gets is the
process's :func:`cpu_linear_choice`: ``auto`` (the default) times both once, on the
first call, on the three GEMMs a training step asks of a linear (forward, ``dX``, ``dW``)
at :data:`PROBE_SHAPES`, and takes oneDNN when it is faster there (:data:`MIN_GAIN`)
and a small product agrees with float64 math; ``onednn`` and ``torch``
force it, from :func:`set_cpu_linear` or the ``HEADWISE_CPU_LINEAR`` environment variable.

On a 2-core Zen 4 EPYC (``lscpu`` family 25 model 17) the two libraries are closer
(``python bench/cpu_linear.py``): the probe read 1.14-1.21x, oneDNN's forward ran
1.27-1.56x MKL's on the electra-small step's GEMMs, its ``dW`` 0.82-1.02x, and a whole
fp32 training step at those widths ran 1.18x (MLM), 1.08x (RTD) and 1.22x (CLM) faster
through oneDNN. An earlier probe, one forward GEMM against a 1.25x line, kept torch there
in two processes of three. Where the two are close the choice can differ between runs
(by a few percent of speed and float32 rounding); a forced choice keeps runs alike, and
the run directory records what ran.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_setting

__all__ = [
    "linear",
    "run_linear",
    "hooked",
    "dense",
    "grad_input",
    "grad_weight",
    "onednn_applies",
    "uses_onednn",
    "onednn_available",
    "set_cpu_linear",
    "cpu_linear_choice",
    "CHOICES",
    "MIN_GAIN",
    "PROBE_SHAPES",
    "ENV",
]

CHOICES = ("auto", "onednn", "torch")
ENV = "HEADWISE_CPU_LINEAR"
MIN_GAIN = 1.0
"""oneDNN is used where the ``auto`` probe finds it more than this much faster: the faster library
wins. (At 1.05 the probe kept torch on the Zen 4 EPYC once, reading 1.04x, in the run of
bench/results/train_throughput_zen4.json.)"""

_setting: str | None = None  # None: read ENV on first use
_decided: bool | None = None  # the probe's (or the setting's) answer
_why = ""  # why, in words


def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear op on the CPU."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_cpu_linear(choice: str) -> None:
    """Set how float32 CPU linears run in this process: ``auto`` (measure once),
    ``onednn`` or ``torch`` (MKL through ``F.linear``). Raises ValueError for any other
    value, and for ``onednn`` where this torch has no oneDNN."""
    global _setting, _decided
    _setting, _decided = _check_choice(choice, "set_cpu_linear"), None


def cpu_linear_choice() -> dict:
    """What float32 CPU linears use: ``{"setting": ..., "onednn": bool, "why": ...}``
    (runs the ``auto`` probe if it has not run yet)."""
    onednn = uses_onednn()
    return {"setting": _current_setting(), "onednn": onednn, "why": _why}


def _check_choice(choice: str, where: str) -> str:
    check_setting(where, "CPU linear", choice, CHOICES)
    if choice == "onednn" and not onednn_available():
        raise ValueError(f"{where}: onednn was asked for, but this torch has no oneDNN linear "
                         f"(torch.backends.mkldnn.is_available() is False)")
    return choice


def _current_setting() -> str:
    global _setting
    if _setting is None:
        _setting = _check_choice(os.environ.get(ENV, "auto"), ENV)
    return _setting


def uses_onednn() -> bool:
    """Whether float32 CPU linears go through oneDNN in this process."""
    global _decided, _why
    if _decided is None:
        setting = _current_setting()
        if setting == "torch":
            _decided, _why = False, "asked for torch"
        elif setting == "onednn":
            _decided, _why = True, "asked for onednn"
        elif not onednn_available():
            _decided, _why = False, "this torch has no oneDNN linear"
        else:
            trouble = _probe_trouble()
            if trouble:
                _decided, _why = False, f"oneDNN's linear was not used: {trouble}"
            else:
                gain = _probe_gain()
                _decided = gain > MIN_GAIN
                _why = (f"oneDNN {gain:.2f}x torch's matmul on a linear's forward and "
                        f"backward GEMMs (needs more than {MIN_GAIN}x)")
    return _decided


def _probe_trouble() -> str:
    """Why oneDNN's linear cannot stand in for ``F.linear`` here ('' when it can): it
    fails, or it disagrees with float64 math more than float32 rounding explains."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(37, 70, generator=g), torch.randn(45, 70, generator=g), torch.randn(45, generator=g)
    try:
        with torch.no_grad():
            got = _fwd(x, w, b)
    except RuntimeError as e:  # an op this build registers but cannot run
        return f"it failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    want = F.linear(x.double(), w.double(), b.double())
    if got.shape != want.shape or not torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4):
        return "its result differed from float64 math"
    return ""


PROBE_SHAPES = ((2048, 256, 1024), (2048, 1024, 256))
"""``(M, K, N)`` of the ``auto`` probe: a 256-wide model's MLP in and out."""


def _probe_gain(reps: int = 5) -> float:
    """torch's time over oneDNN's for what a training step asks of a linear: the
    forward, ``dX`` and ``dW``, on each of :data:`PROBE_SHAPES` (medians of ``reps``,
    the two libraries alternating)."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(m, k, generator=g), torch.randn(n, k, generator=g),
              torch.randn(m, n, generator=g)) for m, k, n in PROBE_SHAPES]

    def step(onednn: bool) -> None:
        for x, w, dy in cases:
            dense(x, w, None, onednn)
            grad_input(dy, w, onednn)
            grad_weight(dy, x, onednn)

    times: list[list[float]] = [[], []]
    with torch.no_grad():
        step(False)
        step(True)
        for r in range(reps):
            for onednn in ((False, True) if r % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                step(onednn)
                times[onednn].append(time.perf_counter() - t0)
    return statistics.median(times[0]) / statistics.median(times[1])


def _fwd(x2: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # the op reads its bias as if contiguous: a strided one (b[::2], an expand) gave wrong sums
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    return torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "none", [], "")


def onednn_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` runs ``x``, ``weight``, ``bias`` in oneDNN."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.dim() >= 2
        and x.numel() > 0
        and weight.dim() == 2
        and not torch.is_autocast_enabled("cpu")
        # traced code gets F.linear, which inductor lowers itself (and nothing is timed there)
        and not torch.compiler.is_compiling()
        and uses_onednn()
    )


def dense(x2: Tensor, weight: Tensor, bias: Tensor | None, onednn: bool) -> Tensor:
    """``x2 (M, K) @ weight (N, K)^T + bias``, in oneDNN or torch (no autograd; ``weight``
    may be a transposed view)."""
    if onednn:
        return _fwd(x2, weight, bias)
    return F.linear(x2, weight, bias)


def grad_input(dy: Tensor, weight: Tensor, onednn: bool) -> Tensor:
    """``dX = dY W`` of a linear, ``dy (M, N)``, ``weight (N, K)``."""
    if onednn:  # W^T as the op's (out, in) weight, copied (it is small) for speed
        return _fwd(dy, weight.t().contiguous(), None)
    return dy @ weight


def grad_weight(dy: Tensor, x2: Tensor, onednn: bool) -> Tensor:
    """``dW = dY^T X`` of a linear, ``dy (M, N)``, ``x2 (M, K)``: ``(N, K)``."""
    if not onednn:
        return dy.t() @ x2
    # the op takes its input contiguous, so the narrower of the two activations is the
    # one transposed (copied); the other is read as a view
    if x2.shape[1] <= dy.shape[1]:
        return _fwd(x2.t(), dy.t(), None).t().contiguous()  # (X^T dY)^T
    return _fwd(dy.t(), x2.t(), None)


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        y = _fwd(x2, weight, bias)
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x2, weight = ctx.saved_tensors
        dy = grad_out.reshape(-1, weight.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = grad_input(dy, weight, True).view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            gw = grad_weight(dy, x2, True)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = dy.sum(0)
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for float32 CPU tensors outside
    autocast when :func:`uses_onednn` (its gradients too; no double backward there)."""
    if onednn_applies(x, weight, bias):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones)."""
    own = (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
           or module._backward_pre_hooks)
    glob = (getattr(nn.modules.module, "_global_forward_hooks", None)
            or getattr(nn.modules.module, "_global_forward_pre_hooks", None)
            or getattr(nn.modules.module, "_global_backward_hooks", None)
            or getattr(nn.modules.module, "_global_backward_pre_hooks", None))
    return bool(own or glob)


def run_linear(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``, except that a plain ``nn.Linear`` with no hooks (its own or global)
    is applied as :func:`linear` of its weight and bias. A subclass or a replacement (an
    int8 or bf16 layer of ``headwise.formats``) and a hooked module are called as they are."""
    if type(module) is nn.Linear and not hooked(module):
        return linear(x, module.weight, module.bias)
    return module(x)

