"""headwise.kernels.mlp: the MLP that recomputes its activation has the plain
composition's values and gradients, keeps less for the backward, and steps aside for
hooks, replaced modules and autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headwise.kernels import cpu_linear
from headwise.kernels.mlp import ACTIVATIONS, mlp
from headwise.models import ModelConfig
from headwise.models.blocks import MLP

PLAIN = {"gelu": lambda h: F.gelu(h), "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
         "relu": F.relu}


@pytest.fixture(params=["onednn", "torch"])
def gemms(request, monkeypatch):
    """Both ways the float32 GEMMs can run (oneDNN where this torch has it)."""
    if request.param == "onednn" and not cpu_linear.onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setattr(cpu_linear, "_setting", cpu_linear._setting)
    monkeypatch.setattr(cpu_linear, "_decided", cpu_linear._decided)
    monkeypatch.setattr(cpu_linear, "_why", cpu_linear._why)
    cpu_linear.set_cpu_linear(request.param)
    return request.param


def _params(dtype, bias, d=12, f=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, d, generator=g, dtype=dtype).requires_grad_()
    w1 = (torch.randn(f, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    w2 = (torch.randn(d, f, generator=g, dtype=dtype) / f**0.5).requires_grad_()
    b1 = torch.randn(f, generator=g, dtype=dtype).requires_grad_() if bias else None
    b2 = torch.randn(d, generator=g, dtype=dtype).requires_grad_() if bias else None
    dy = torch.randn(3, 7, d, generator=g, dtype=dtype)
    return [x, w1, b1, w2, b2], dy


def _run(fn, tensors, dy):
    for t in tensors:
        if t is not None:
            t.grad = None
    y = fn(*tensors)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad.clone() for t in tensors]


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_float64_equals_the_plain_composition(act, bias):
    tensors, dy = _params(torch.float64, bias)
    y, grads = _run(lambda *t: mlp(*t, act), tensors, dy)
    y_ref, grads_ref = _run(lambda x, w1, b1, w2, b2: F.linear(PLAIN[act](F.linear(x, w1, b1)), w2, b2),
                            tensors, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, ref in zip(grads, grads_ref, strict=True):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_float32_matches_float64(gemms, act):
    tensors, dy = _params(torch.float32, True)
    y, grads = _run(lambda *t: mlp(*t, act), tensors, dy)
    t64 = [t.detach().double().requires_grad_() for t in tensors]
    y_ref, grads_ref = _run(lambda x, w1, b1, w2, b2: F.linear(PLAIN[act](F.linear(x, w1, b1)), w2, b2),
                            t64, dy.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for got, ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_keeps_less_for_the_backward():
    tensors, _ = _params(torch.float32, True, d=16, f=64)
    kept = []

    def pack(t):
        kept.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mlp(*tensors, "gelu")
    mine = sum(kept)
    kept.clear()
    x, w1, b1, w2, b2 = tensors
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    # the plain one keeps fc_in's output and the activation's (21 x 64 each); this, one
    assert sum(kept) - mine >= 21 * 64


def test_frozen_weights_get_no_gradient(gemms):
    tensors, dy = _params(torch.float32, True)
    tensors[1].requires_grad_(False)
    tensors[3].requires_grad_(False)
    y = mlp(*tensors, "gelu")
    y.backward(dy)
    assert tensors[1].grad is None and tensors[3].grad is None
    assert tensors[0].grad is not None and tensors[2].grad is not None


def _cfg(activation):
    return ModelConfig(vocab_size=50, d_model=12, n_layers=1, n_heads=2, d_ff=40, max_len=8,
                       activation=activation)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_block_mlp_same_as_module_by_module(activation):
    torch.manual_seed(0)
    m = MLP(_cfg(activation)).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y.sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    x2 = x.detach().requires_grad_()
    h = m.fc_in(x2)
    if activation == "swiglu":
        a, b = h.chunk(2, dim=-1)
        h = m.act(a) * b
    else:
        h = m.act(h)
    y_ref = m.fc_out(h)
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, p in zip(grads, m.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-12, atol=1e-12)


def test_block_mlp_runs_hooks_and_replaced_activations():
    m = MLP(_cfg("gelu"))
    x = torch.randn(2, 3, 12)
    assert m._plain_activation() == "gelu"
    seen = []
    handle = m.act.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    m(x)
    handle.remove()
    assert seen == [torch.Size([2, 3, 40])]
    m.act = nn.SiLU()  # not one mlp() knows: called as a module
    assert m._plain_activation() is None
    torch.testing.assert_close(m(x), m.fc_out(F.silu(m.fc_in(x))))


def test_autocast_is_the_plain_composition():
    tensors, _ = _params(torch.float32, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mlp(*tensors, "gelu")
        want = F.linear(F.gelu(F.linear(tensors[0], tensors[1], tensors[2])), tensors[3], tensors[4])
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_compiled_block_mlp_matches_eager():
    """Under torch.compile the MLP and its linears are the plain ops (traced, not timed)."""
    torch.manual_seed(0)
    m = MLP(_cfg("gelu_tanh"))
    x = torch.randn(2, 5, 12, requires_grad=True)
    want = m(x)
    want.sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    compiled = torch.compile(m, backend="eager")
    got = compiled(x)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, m.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)
