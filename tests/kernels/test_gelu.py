"""headwise.kernels.gelu: the tanh GELU through sigmoid equals torch's tanh GELU, forward
and gradient, in float64, within float32 rounding in float32, at the extremes, and across
slab boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headwise.kernels import gelu
from headwise.kernels.gelu import gelu_tanh, gelu_tanh_and_grad


def _torch(x, g):
    return F.gelu(x, approximate="tanh"), torch.ops.aten.gelu_backward(g, x, approximate="tanh")


def _inputs(shape, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=dtype) * scale,
            torch.randn(shape, generator=gen, dtype=dtype))


# one slab, several slabs with a ragged last one, 1-D, 3-D
SHAPES = [(7, 40), (3 * gelu.SLAB // 1000 + 5, 1000), (513,), (2, 9, 33)]


@pytest.mark.parametrize("shape", SHAPES)
def test_float64_equals_torchs_tanh_gelu(shape):
    x, g = _inputs(shape, torch.float64)
    act, dx = gelu_tanh_and_grad(g, x)
    want_act, want_dx = _torch(x, g)
    torch.testing.assert_close(gelu_tanh(x), want_act, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(act, want_act, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, want_dx, rtol=1e-12, atol=1e-12)
    assert act.shape == dx.shape == x.shape


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_rounding_of_float64(shape):
    x, g = _inputs(shape, torch.float32, seed=1)
    act, dx = gelu_tanh_and_grad(g, x)
    want_act, want_dx = _torch(x.double(), g.double())
    assert act.dtype == dx.dtype == torch.float32
    torch.testing.assert_close(gelu_tanh(x).double(), want_act, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(act.double(), want_act, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(dx.double(), want_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extremes_match_torch(dtype):
    """Saturated inputs give torch's values (x and 0, gradients 1 and 0), not NaN from an
    overflowing cubic; infinities and NaN land where torch's do."""
    x = torch.tensor([0.0, -0.0, 1e-30, 8.0, -8.0, 30.0, -30.0, 1e6, -1e6, 1e12, -1e12, 1e15, -1e15,
                      float("inf"), float("-inf"), float("nan")], dtype=dtype)
    g = torch.ones_like(x)
    act, dx = gelu_tanh_and_grad(g, x)
    want_act, want_dx = _torch(x, g)
    torch.testing.assert_close(act, want_act, rtol=1e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(gelu_tanh(x), want_act, rtol=1e-6, atol=1e-6, equal_nan=True)
    finite = torch.isfinite(x) & (x.abs() < 1e18)  # past that torch's own cubic overflows
    torch.testing.assert_close(dx[finite], want_dx[finite], rtol=1e-6, atol=1e-6)
    assert not dx[finite].isnan().any()


def test_non_contiguous_and_empty_inputs():
    x, g = _inputs((40, 30), torch.float32, seed=2)
    xt, gt = x.t(), g.t()
    act, dx = gelu_tanh_and_grad(gt, xt)
    want_act, want_dx = _torch(xt, gt)
    torch.testing.assert_close(act, want_act, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-5)
    for shape in [(0, 5), (5, 0), (0,)]:
        e = torch.empty(shape)
        assert gelu_tanh(e).shape == e.shape
        assert [t.shape for t in gelu_tanh_and_grad(e, e)] == [e.shape, e.shape]
    scalar = torch.tensor(0.7)
    torch.testing.assert_close(gelu_tanh(scalar), F.gelu(scalar, approximate="tanh"))


def test_bfloat16_is_torchs_own():
    x, g = _inputs((6, 10), torch.bfloat16, seed=3)
    act, dx = gelu_tanh_and_grad(g, x)
    want_act, want_dx = _torch(x, g)
    assert torch.equal(act, want_act) and torch.equal(dx, want_dx)
    assert torch.equal(gelu_tanh(x), want_act)
