"""A two-layer MLP, ``fc_out(act(fc_in(x)))``, that keeps only ``x`` and ``fc_in(x)`` for
the backward and recomputes the activation there.

Autograd keeps three ``(N, d_ff)`` tensors per MLP through the backward: ``fc_in``'s
output (for the activation's gradient), the activation's output (for ``fc_out``'s weight
gradient), and, briefly, their gradients. The activation's output is the one that can
go: recomputing a GELU costs one elementwise pass, while keeping it costs ``N * d_ff``
floats of memory per layer (16 MiB at ``electra-small`` widths, batch 32 x 128) that the
allocator may have to fault in afresh at every step (glibc hands large freed blocks back
to the OS). At those widths, in fp32 on a 2-core Zen 5 EPYC, the activations a step keeps
fell from 993 to 756 MiB (RTD) and from 786 to 594 MiB (CLM), the page faults per step
from 24,000-47,000 to under 5,000, and the median step time by 6% (RTD), 4% (CLM) and
14% (MLM) (10 alternating steps of each in one process, bench/train_throughput.py's
batches).

The GEMMs go where :func:`headwise.kernels.cpu_linear.linear` sends them (oneDNN for
float32 on CPUs where it is faster). :func:`mlp` applies to CPU tensors outside autocast
with one of the activations in :data:`ACTIVATIONS`, outside ``torch.compile`` tracing;
everything else is the plain composition. The gradients are those of the plain composition
(``tests/kernels/test_mlp.py`` holds both to float64 math).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpu_linear import dense, grad_input, grad_weight, onednn_applies
from .gelu import gelu_tanh, gelu_tanh_and_grad

__all__ = ["mlp", "Activation", "ACTIVATIONS"]


class Activation(NamedTuple):
    """An elementwise activation: torch's function, and what :func:`mlp`'s autograd
    function runs (no autograd)."""

    plain: Callable[[Tensor], Tensor]
    """torch's function, with autograd (for everything :func:`mlp` does not take over)"""
    forward: Callable[[Tensor], Tensor]
    """``h -> act(h)``"""
    both: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    """``(grad_out, h) -> (act(h), grad_in)``: the backward's recomputed activation and
    the gradient"""


def _gelu_erf_both(g: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return F.gelu(h), torch.ops.aten.gelu_backward(g, h)


def _relu_both(g: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    return F.relu(h), torch.ops.aten.threshold_backward(g, h, 0)


ACTIVATIONS: dict[str, Activation] = {
    "gelu": Activation(F.gelu, F.gelu, _gelu_erf_both),
    # through sigmoid, a slab at a time (kernels/gelu.py)
    "gelu_tanh": Activation(partial(F.gelu, approximate="tanh"), gelu_tanh, gelu_tanh_and_grad),
    "relu": Activation(F.relu, F.relu, _relu_both),
}


class _RecomputedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act, onednn):
        x2 = x.reshape(-1, x.shape[-1])
        h = dense(x2, w1, b1, onednn)
        y = dense(ACTIVATIONS[act].forward(h), w2, b2, onednn)
        ctx.save_for_backward(x2, h, w1, w2)
        ctx.act, ctx.onednn, ctx.x_shape = act, onednn, x.shape
        ctx.biases = (b1 is not None, b2 is not None)
        return y.view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x2, h, w1, w2 = ctx.saved_tensors
        act = ACTIVATIONS[ctx.act]
        dnn = ctx.onednn
        want = ctx.needs_input_grad
        dy = grad_out.reshape(-1, w2.shape[0])
        gx = gw1 = gb1 = None
        upstream = want[0] or want[1] or want[2]  # fc_in's side needs dh
        # a: the recomputed activation
        a, dh = act.both(grad_input(dy, w2, dnn), h) if upstream else (act.forward(h), None)
        gw2 = grad_weight(dy, a, dnn) if want[3] else None
        gb2 = dy.sum(0) if ctx.biases[1] and want[4] else None
        if upstream:
            gx = grad_input(dh, w1, dnn).view(ctx.x_shape) if want[0] else None
            gw1 = grad_weight(dh, x2, dnn) if want[1] else None
            gb1 = dh.sum(0) if ctx.biases[0] and want[2] else None
        return gx, gw1, gb1, gw2, gb2, None, None


def mlp(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
        act: str) -> Tensor:
    """``F.linear(act(F.linear(x, w1, b1)), w2, b2)`` for ``act`` in
    :data:`ACTIVATIONS`; on the CPU outside autocast, with the activation recomputed in
    the backward instead of kept (no double backward there)."""
    same = all(t is None or t.dtype == x.dtype for t in (w1, b1, w2, b2))
    if (x.device.type != "cpu" or not x.is_floating_point() or not same or x.numel() == 0
            or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()):
        return F.linear(ACTIVATIONS[act].plain(F.linear(x, w1, b1)), w2, b2)
    return _RecomputedMLP.apply(x, w1, b1, w2, b2, act, onednn_applies(x, w1, b1))
