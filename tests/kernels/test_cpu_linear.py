"""headwise.kernels.cpu_linear: oneDNN float32 linears agree with float64 math and with
F.linear, and everything else is F.linear itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from headwise.kernels import cpu_linear
from headwise.kernels.cpu_linear import (
    cpu_linear_choice,
    dense,
    linear,
    onednn_available,
    run_linear,
    set_cpu_linear,
    uses_onednn,
)
from headwise.objectives.fused_loss import linear_cross_entropy

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear")


@pytest.fixture(autouse=True)
def _restore_choice(monkeypatch):
    """Each test starts from the process default and leaves it as it was."""
    monkeypatch.setattr(cpu_linear, "_setting", cpu_linear._setting)
    monkeypatch.setattr(cpu_linear, "_decided", cpu_linear._decided)
    monkeypatch.setattr(cpu_linear, "_why", cpu_linear._why)


def _inputs(shape, k, n, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, k, generator=g).requires_grad_()
    w = (torch.randn(n, k, generator=g) / k**0.5).requires_grad_()
    b = torch.randn(n, generator=g).requires_grad_() if bias else None
    dy = torch.randn(*shape, n, generator=g)
    return x, w, b, dy


def _grads(fn, x, w, b, dy):
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    y = fn(x, w, b)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad.clone() for t in (x, w, b)]


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


@needs_onednn
@pytest.mark.parametrize("shape,k,n,bias", [((64,), 32, 48, True), ((4, 33), 80, 24, False),
                                            ((2, 3, 5), 7, 130, True), ((1,), 1, 1, True)])
def test_onednn_linear_matches_float64_and_f_linear(shape, k, n, bias):
    set_cpu_linear("onednn")
    assert uses_onednn()
    x, w, b, dy = _inputs(shape, k, n, bias)
    y, grads = _grads(linear, x, w, b, dy)
    y_t, grads_t = _grads(F.linear, x, w, b, dy)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double().requires_grad_()
    yd = F.linear(xd, wd, bd)
    yd.backward(dy.double())
    refs = [xd.grad, wd.grad, None if bd is None else bd.grad]
    assert y.shape == yd.shape and y.dtype == torch.float32
    # float32 GEMMs: the error against float64 is of the order of torch's own (MKL's)
    assert _rel(y, yd) < 1e-5
    assert _rel(y, yd) < 20 * max(_rel(y_t, yd), 1e-7)
    for got, torch_got, ref in zip(grads, grads_t, refs, strict=True):
        if ref is None:
            assert got is None
            continue
        assert _rel(got, ref) < 1e-5
        assert _rel(got, ref) < 20 * max(_rel(torch_got, ref), 1e-7)


@needs_onednn
def test_onednn_linear_only_the_gradients_asked_for():
    set_cpu_linear("onednn")
    x, w, b, dy = _inputs((16,), 8, 12)
    w.requires_grad_(False)
    y = linear(x, w, b)
    y.backward(dy)
    assert w.grad is None
    torch.testing.assert_close(x.grad, dy @ w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, dy.sum(0), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_dense_matches_matmul_for_views():
    set_cpu_linear("onednn")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 24, generator=g), torch.randn(24, 56, generator=g)
    ref = a.double() @ b.double()
    assert _rel(dense(a, b.t(), None, True), ref) < 1e-5  # b.t() is a transposed view
    assert _rel(dense(a, b.t().contiguous(), None, True), ref) < 1e-5


@pytest.mark.parametrize("setting", ["onednn", "torch"])
def test_other_dtypes_and_autocast_are_f_linear_itself(setting):
    if setting == "onednn" and not onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    set_cpu_linear(setting)
    x, w, b, _ = _inputs((8,), 16, 4)
    xd, wd, bd = x.detach().double(), w.detach().double(), b.detach().double()
    assert torch.equal(linear(xd, wd, bd), F.linear(xd, wd, bd))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = linear(x, w, b), F.linear(x, w, b)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_torch_setting_is_f_linear_exactly():
    set_cpu_linear("torch")
    assert not uses_onednn()
    assert cpu_linear_choice() == {"setting": "torch", "onednn": False, "why": "asked for torch"}
    x, w, b, dy = _inputs((32,), 16, 8)
    y, grads = _grads(linear, x, w, b, dy)
    y_t, grads_t = _grads(F.linear, x, w, b, dy)
    assert torch.equal(y, y_t)
    assert all(torch.equal(a, c) for a, c in zip(grads, grads_t, strict=True))


def test_bad_setting_is_refused_with_its_name(monkeypatch):
    with pytest.raises(ValueError, match="'fast'.*auto, onednn, torch|auto, onednn, torch.*'fast'"):
        set_cpu_linear("fast")
    monkeypatch.setattr(cpu_linear, "_setting", None)
    monkeypatch.setattr(cpu_linear, "_decided", None)
    monkeypatch.setenv(cpu_linear.ENV, "mkl")
    with pytest.raises(ValueError, match="HEADWISE_CPU_LINEAR.*'mkl'"):
        uses_onednn()


def test_onednn_refused_where_missing(monkeypatch):
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)
    with pytest.raises(ValueError, match="no oneDNN"):
        set_cpu_linear("onednn")
    set_cpu_linear("auto")
    assert not uses_onednn()
    assert "no oneDNN" in cpu_linear_choice()["why"]


def test_auto_takes_onednn_only_past_the_gain(monkeypatch):
    if not onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    for gain, want in ((cpu_linear.MIN_GAIN * 1.01, True), (cpu_linear.MIN_GAIN, False), (0.9, False)):
        monkeypatch.setattr(cpu_linear, "_probe_gain", lambda gain=gain: gain)
        set_cpu_linear("auto")
        assert uses_onednn() is want
        assert f"{gain:.2f}x" in cpu_linear_choice()["why"]


def test_probe_times_a_training_steps_gemms_in_both_libraries(monkeypatch):
    """The auto probe times what training asks of a linear (forward, dX, dW) at every
    probe shape, through both libraries, and answers torch's time over oneDNN's."""
    calls = []
    for name in ("dense", "grad_input", "grad_weight"):
        real = getattr(cpu_linear, name)

        def spy(*args, _name=name, _real=real):
            calls.append((_name, args[-1], tuple(args[0].shape)))
            return _real(*args[:-1], False)  # torch's path: the probe's timing is not under test

        monkeypatch.setattr(cpu_linear, name, spy)
    gain = cpu_linear._probe_gain(reps=1)
    assert gain > 0
    for m, k, n in cpu_linear.PROBE_SHAPES:
        for onednn in (False, True):
            assert ("dense", onednn, (m, k)) in calls
            assert ("grad_input", onednn, (m, n)) in calls
            assert ("grad_weight", onednn, (m, n)) in calls


def test_run_linear_calls_hooked_and_replaced_modules():
    set_cpu_linear("onednn" if onednn_available() else "torch")
    lin = nn.Linear(6, 3)
    x = torch.randn(5, 6)
    torch.testing.assert_close(run_linear(lin, x), lin(x), rtol=1e-5, atol=1e-6)
    seen = []
    handle = lin.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    run_linear(lin, x)
    handle.remove()
    assert seen == [torch.Size([5, 3])]

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    sub = Doubled(6, 3)
    torch.testing.assert_close(run_linear(sub, x), sub(x))


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_fused_loss_through_onednn_matches_float64(bias):
    set_cpu_linear("onednn")
    g = torch.Generator().manual_seed(3)
    n, d, v = 70, 16, 50
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(v, d, generator=g) / 4).requires_grad_()
    b = torch.randn(v, generator=g).requires_grad_() if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = -100
    loss, _ = linear_cross_entropy(h, w, b, t, chunk_rows=16)
    loss.backward()
    hd, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    bd = None if b is None else b.detach().double().requires_grad_()
    ref = F.cross_entropy(F.linear(hd, wd, bd), t, ignore_index=-100, reduction="sum")
    ref.backward()
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-5
    assert _rel(h.grad, hd.grad) < 1e-5
    assert _rel(w.grad, wd.grad) < 1e-5
    if bias:
        assert _rel(b.grad, bd.grad) < 1e-5


@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_auto_refuses_a_broken_onednn(monkeypatch, broken):
    """A oneDNN op that fails or computes something else is never used, and says why."""
    if not onednn_available():
        pytest.skip("this torch has no oneDNN linear")

    def fake(x2, weight, bias):
        if broken == "raises":
            raise RuntimeError("could not create a primitive")
        return torch.zeros(x2.shape[0], weight.shape[0])

    monkeypatch.setattr(cpu_linear, "_fwd", fake)
    monkeypatch.setattr(cpu_linear, "_probe_gain", lambda: 10.0)
    set_cpu_linear("auto")
    assert not uses_onednn()
    why = cpu_linear_choice()["why"]
    assert ("could not create a primitive" in why) if broken == "raises" else ("differed" in why)
    x, w, b, _ = _inputs((4,), 6, 3)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))
