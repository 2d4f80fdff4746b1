"""The blocked causal CPU path (backends/cpu_causal.py): the same numbers as full
causal attention in float64, gradients included, through the layer (packed QKV) and
on separate q, k, v; and the calls it must leave to torch's kernel."""

from __future__ import annotations

import pytest
import torch
from reference_math import attention_reference

import headwise.attention.backends.cpu_causal as cc
from headwise.attention import MultiHeadAttention


def _causal_ref(q, k, v):
    """float64 textbook causal attention."""
    return attention_reference(q, k, v, causal=True)[0]


def _qkv(b, h, t, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # (B, T, H, D) buffers seen as (B, H, T, D), as the layer makes them
    return [torch.randn(b, t, h, d, generator=g, dtype=dtype).transpose(1, 2).requires_grad_()
            for _ in range(3)]


@pytest.mark.parametrize("t", [384, 449, 767])  # whole blocks, a ragged last block, the top
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_float64_causal_attention_with_gradients(t, dtype):
    q, k, v = _qkv(2, 3, t, 24, dtype)
    assert cc.blocked_causal_applies(q, k, v, 0.0)
    out = cc.blocked_causal_attention(q, k, v, 24**-0.5)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = _causal_ref(q64, k64, v64)
    want_grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-4)
    torch.testing.assert_close(out.double(), want, **tol)
    for name, got, exp in zip("qkv", grads, want_grads, strict=True):
        assert got.dtype == dtype and got.shape == exp.shape
        torch.testing.assert_close(got.double(), exp, **tol, msg=f"d{name}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_error_is_no_worse_than_torchs_own_kernel(dtype):
    q, k, v = _qkv(1, 2, 400, 32, dtype, seed=1)
    dout = torch.randn(1, 2, 400, 32, dtype=dtype)
    out = cc.blocked_causal_attention(q, k, v, 32**-0.5)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q2, k2, v2 = (x.detach().requires_grad_() for x in (q, k, v))
    torch_out = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, is_causal=True)
    torch_grads = torch.autograd.grad(torch_out, (q2, k2, v2), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = _causal_ref(q64, k64, v64)
    want_grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    for mine, theirs, exact in zip((out, *grads), (torch_out, *torch_grads), (want, *want_grads), strict=True):
        err = (mine.double() - exact).abs().max().item()
        torch_err = (theirs.double() - exact).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, (err, torch_err)


def test_gradcheck_float64(monkeypatch):
    # small blocks so a gradcheck-sized problem still spans several of them
    monkeypatch.setattr(cc, "BLOCK", 4)
    q, k, v = _qkv(1, 2, 11, 3, torch.float64, seed=2)
    assert torch.autograd.gradcheck(lambda a, b, c: cc.blocked_causal_attention(a, b, c, 0.7), (q, k, v))


def _count_calls(monkeypatch, name):
    calls = []
    fn = getattr(cc, name)
    orig = fn.apply
    monkeypatch.setattr(fn, "apply", lambda *a: (calls.append(1), orig(*a))[1])
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_layer_uses_the_packed_path_and_matches_the_math_backend(monkeypatch, bias):
    torch.manual_seed(4)
    layer = MultiHeadAttention(48, 4, bias=bias).double()
    x = torch.randn(2, 420, 48, dtype=torch.float64, requires_grad=True)
    packed = _count_calls(monkeypatch, "_BlockedCausalPacked")
    out = layer(x, causal=True)
    assert len(packed) == 1, "the fused QKV projection should reach the packed path"
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params)
    layer.backend = "math"
    want = layer(x, causal=True)
    want_grads = torch.autograd.grad(want.square().sum(), params)
    torch.testing.assert_close(out, want)
    for got, exp in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, exp)


def test_rope_layer_takes_the_unpacked_path(monkeypatch):
    layer = MultiHeadAttention(32, 2, rope=True)
    x = torch.randn(1, 400, 32, requires_grad=True)
    packed = _count_calls(monkeypatch, "_BlockedCausalPacked")
    unpacked = _count_calls(monkeypatch, "_BlockedCausal")
    out = layer(x, causal=True)
    assert (len(packed), len(unpacked)) == (0, 1)
    layer.backend = "math"
    torch.testing.assert_close(out, layer(x, causal=True), atol=2e-5, rtol=2e-4)


def test_no_future_gradient():
    layer = MultiHeadAttention(16, 2).double()
    x = torch.randn(1, 390, 16, dtype=torch.float64, requires_grad=True)
    out = layer(x, causal=True)
    for t in (0, 127, 128, 200, 389):
        (g,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        assert torch.all(g[0, t + 1 :] == 0), f"output {t} depends on a later input"
        assert torch.any(g[0, : t + 1] != 0)


def test_without_grad_it_only_runs_the_forward():
    q, k, v = _qkv(1, 2, 400, 16, torch.float32)
    with torch.no_grad():
        out = cc.blocked_causal_attention(q, k, v, 0.25)
    assert out.grad_fn is None
    torch.testing.assert_close(out.double(), _causal_ref(q, k, v).detach(), atol=2e-5, rtol=2e-4)


def _call(t=500, tk=None, hkv=2, device="cpu", dtype=torch.float32, strided=False):
    q = torch.empty(1, 2, t, 16, device=device, dtype=dtype)
    k = torch.empty(1, hkv, t if tk is None else tk, 16, device=device, dtype=dtype)
    if strided:  # head dim not contiguous
        q = torch.empty(1, 2, t, 32, device=device, dtype=dtype)[..., ::2]
    return q, k, k


@pytest.mark.parametrize(
    "change, dropout, why",
    [
        (dict(t=256), 0.0, "too short to gain"),
        (dict(t=768), 0.0, "torch's kernel skips key blocks itself from here"),
        (dict(tk=500 + 7), 0.0, "not square (a KV cache)"),
        (dict(hkv=1), 0.0, "grouped K/V"),
        ({}, 0.1, "dropout"),
        (dict(device="meta"), 0.0, "not the CPU"),
        (dict(dtype=torch.int32), 0.0, "not a float dtype"),
        (dict(dtype=torch.bfloat16), 0.0, "16 bits: slower than torch's kernel"),
        (dict(strided=True), 0.0, "a strided head dim"),
    ],
)
def test_applies_only_where_it_is_exact_and_faster(change, dropout, why):
    assert cc.blocked_causal_applies(*_call(), 0.0)
    assert not cc.blocked_causal_applies(*_call(**change), dropout), why


def test_compiled_layer_matches_eager():
    torch.manual_seed(5)
    layer = MultiHeadAttention(32, 2)
    x = torch.randn(1, 400, 32, requires_grad=True)
    want = layer(x, causal=True)
    (want_g,) = torch.autograd.grad(want.sum(), x)
    compiled = torch.compile(lambda y: layer(y, causal=True), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(g, want_g)
