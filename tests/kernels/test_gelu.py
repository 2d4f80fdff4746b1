"""headwise.kernels.gelu: the tanh GELU through sigmoid equals torch's tanh GELU, forward
and gradient, in float64, within float32 rounding in float32, at the extremes, and across
slab boundaries."""

from __future__ import annotations

import shutil
import warnings

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


# ---- the compiled path (HEADWISE_CPU_GELU / set_cpu_gelu) ----

@pytest.fixture
def gelu_setting():
    """Restore the process's GELU setting, the compile failure and the kernels after a test."""
    saved = (gelu._setting, gelu._failed, dict(gelu._kernels))
    yield gelu.set_cpu_gelu
    gelu._setting, gelu._failed = saved[0], saved[1]
    gelu._kernels.clear()
    gelu._kernels.update(saved[2])


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler")


@needs_compiler
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_compiled_equals_float64_math(gelu_setting, dtype, tol):
    gelu_setting("compiled")
    x, g = _inputs((3, 130, 7), dtype, seed=3)
    act, dx = gelu_tanh_and_grad(g, x)
    want_act, want_dx = _torch(x.double(), g.double())
    assert gelu._failed == ""
    assert set(gelu._kernels) == {"both"}  # it ran compiled, not through the slabs
    assert act.shape == dx.shape == x.shape and act.dtype == dx.dtype == dtype
    torch.testing.assert_close(act.double(), want_act, rtol=tol, atol=tol)
    torch.testing.assert_close(dx.double(), want_dx, rtol=tol, atol=tol)
    torch.testing.assert_close(gelu_tanh(x).double(), want_act, rtol=tol, atol=tol)
    # extremes and a transposed view, compiled as well
    e = torch.tensor([0.0, 1e-30, 8.0, -8.0, 30.0, -30.0, 1e6, -1e6, 1e12, -1e12, 1e15, -1e15,
                      float("inf"), float("-inf"), float("nan")], dtype=dtype)
    act, dx = gelu_tanh_and_grad(torch.ones_like(e), e)
    want_act, want_dx = _torch(e, torch.ones_like(e))
    torch.testing.assert_close(act, want_act, rtol=1e-6, atol=1e-6, equal_nan=True)
    finite = torch.isfinite(e)
    torch.testing.assert_close(dx[finite], want_dx[finite], rtol=1e-6, atol=1e-6)
    xt, gt = x[0].t(), g[0].t()
    act, dx = gelu_tanh_and_grad(gt, xt)
    torch.testing.assert_close(act, F.gelu(xt, approximate="tanh"), rtol=tol, atol=tol)


def test_auto_compiles_only_large_tensors(gelu_setting, monkeypatch):
    gelu_setting("auto")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled a small tensor"))
    x, g = _inputs((64, 50), torch.float32)
    torch.testing.assert_close(gelu_tanh_and_grad(g, x)[1], _torch(x, g)[1], rtol=1e-5, atol=1e-5)
    gelu_setting("eager")
    big = torch.zeros(gelu.MIN_COMPILED + 1)
    torch.testing.assert_close(gelu_tanh(big), big)  # eager: never compiled


def _broken_compile(*args, **kwargs):
    def run(*a):
        raise RuntimeError("no compiler here\nmore detail")
    return run


def test_a_failed_compile_warns_once_under_auto_and_raises_when_asked_for(gelu_setting, monkeypatch):
    monkeypatch.setattr(torch, "compile", _broken_compile)
    big_x, big_g = _inputs((gelu.MIN_COMPILED // 1000 + 1, 1000), torch.float32, seed=4)
    gelu_setting("auto")
    gelu._kernels.clear()
    with pytest.warns(RuntimeWarning, match="compiling the CPU GELU failed .*no compiler here"):
        act, dx = gelu_tanh_and_grad(big_g, big_x)
    want_act, want_dx = _torch(big_x, big_g)
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-5)
    assert gelu.cpu_gelu_choice()["failed"] == "RuntimeError: no compiler here"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only: the slabs from now on
        torch.testing.assert_close(gelu_tanh(big_x), want_act, rtol=2e-6, atol=2e-6)
    gelu._failed = ""
    gelu._kernels.clear()
    gelu_setting("compiled")
    with pytest.raises(RuntimeError, match="HEADWISE_CPU_GELU=compiled, but compiling the GELU failed"):
        gelu_tanh(big_x[:2])


def test_bad_setting_names_the_choices(gelu_setting, monkeypatch):
    with pytest.raises(ValueError, match="auto, compiled, eager; got 'fast'"):
        gelu_setting("fast")
    gelu._setting = None
    monkeypatch.setenv(gelu.ENV, "sometimes")
    with pytest.raises(ValueError, match="HEADWISE_CPU_GELU: the CPU GELU must be one of"):
        gelu.cpu_gelu_choice()
