"""Every backend of MultiHeadAttention against an independent float64 reference:
random shapes, odd head dims, GQA, cross-attention, every mask kind; outputs and
gradients, in float32 and float64; plus gradcheck."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_math import allowed_matrix, layer_reference

from headwise.attention import MultiHeadAttention

BACKENDS = ["reference", "math", "sdpa"]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@st.composite
def attention_cases(draw):
    n_kv = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 3]))
    n_heads = n_kv * group
    head_dim = draw(st.sampled_from([1, 3, 7, 8, 13, 16]))
    d_model = draw(st.sampled_from([8, 12, 24]))
    batch = draw(st.integers(1, 3))
    q_len = draw(st.sampled_from([1, 2, 5, 17, 64, 129, 257]))
    cross = draw(st.booleans())
    k_len = draw(st.sampled_from([1, 3, 16, 33, 257])) if cross else q_len
    kdim = draw(st.sampled_from([d_model, 10])) if cross else d_model
    mask_kind = draw(
        st.sampled_from(["none", "causal", "padding", "lengths", "bool", "additive", "causal+padding"])
    )
    if cross and "causal" in mask_kind:
        mask_kind = "padding"
    # keep the largest cases small enough for 2 CPU cores
    if q_len * k_len * batch * n_heads > 200_000:
        batch, n_kv, group, n_heads = 1, 1, 2, 2
    return dict(
        n_heads=n_heads,
        n_kv=n_kv,
        head_dim=head_dim,
        d_model=d_model,
        batch=batch,
        q_len=q_len,
        k_len=k_len,
        cross=cross,
        kdim=kdim,
        mask_kind=mask_kind,
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _build(case, dtype):
    torch.manual_seed(case["seed"])
    layer = MultiHeadAttention(
        case["d_model"],
        case["n_heads"],
        head_dim=case["head_dim"],
        n_kv_heads=case["n_kv"],
        bias=case["bias"],
        kdim=case["kdim"] if case["cross"] else None,
        vdim=case["kdim"] if case["cross"] else None,
        dtype=dtype,
    )
    if case["bias"]:  # non-zero biases so that they are checked too
        with torch.no_grad():
            for p in layer.parameters():
                if p.dim() == 1:
                    p.normal_()
    b, tq, tk = case["batch"], case["q_len"], case["k_len"]
    x = torch.randn(b, tq, case["d_model"], dtype=dtype, requires_grad=True)
    ctx = torch.randn(b, tk, case["kdim"], dtype=dtype, requires_grad=True) if case["cross"] else None
    kwargs, ref = {}, {}
    kind = case["mask_kind"]
    g = torch.Generator().manual_seed(case["seed"])
    if "causal" in kind:
        kwargs["causal"] = True
        ref["causal"] = True
    if "padding" in kind:
        pad = torch.rand(b, tk, generator=g) < 0.3
        kwargs["key_padding_mask"] = ref["key_padding"] = pad
    if kind == "lengths":
        lengths = torch.randint(0, tk + 1, (b,), generator=g)
        kwargs["key_lengths"] = ref["key_lengths"] = lengths
    additive = None
    if kind == "bool":
        m = torch.rand(b, 1, tq, tk, generator=g) < 0.4
        kwargs["attn_mask"] = ref["bool_mask"] = m
    if kind == "additive":
        additive = torch.randn(tq, tk, generator=g, dtype=dtype)
        kwargs["attn_mask"] = additive
    allowed = allowed_matrix(b, case["n_heads"], tq, tk, **ref)
    return layer, x, ctx, kwargs, allowed, additive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=attention_cases())
def test_backends_match_float64_reference(case, dtype):
    layer, x, ctx, kwargs, allowed, additive = _build(case, dtype)
    want, want_w = layer_reference(layer, x, ctx, allowed=allowed, additive=additive)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(
        (want * grad_out).sum(), [x, *([ctx] if ctx is not None else []), *layer.parameters()]
    )
    tol = TOL[dtype]
    for backend in BACKENDS:
        layer.backend = backend
        need_w = backend != "sdpa"
        res = layer(x, ctx, need_weights=need_w, **kwargs)
        out, w = res if need_w else (res, None)
        assert out.dtype == dtype
        scale = 1 + want.abs().max().item()
        torch.testing.assert_close(out.double(), want, atol=tol * scale, rtol=tol, msg=backend)
        if w is not None:
            torch.testing.assert_close(w.double(), want_w, atol=tol, rtol=tol)
        grads = torch.autograd.grad(
            (out * grad_out.to(dtype)).sum(),
            [x, *([ctx] if ctx is not None else []), *layer.parameters()],
        )
        for g_got, g_want in zip(grads, want_grads, strict=True):
            gscale = 1 + g_want.abs().max().item()
            torch.testing.assert_close(
                g_got.double(), g_want.double(), atol=10 * tol * gscale, rtol=10 * tol
            )


def test_fully_masked_rows_give_zeros_in_every_backend():
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, dtype=torch.float64)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([0, 3])
    bool_mask = torch.zeros(5, 5, dtype=torch.bool)
    bool_mask[1] = True  # query 1 may see nothing
    for backend in BACKENDS:
        layer.backend = backend
        for kwargs in (dict(key_lengths=lengths), dict(attn_mask=bool_mask)):
            out = layer(x, **kwargs)
            assert torch.isfinite(out).all(), backend
            # zero before W_O means the out_proj bias exactly
            empty = out[0] if "key_lengths" in kwargs else out[:, 1]
            torch.testing.assert_close(empty, layer.out_proj.bias.expand_as(empty).detach())
            out.sum().backward()
            assert torch.isfinite(x.grad).all(), backend
            x.grad = None


@pytest.mark.parametrize("backend", ["reference", "math", "sdpa"])
@pytest.mark.parametrize("kind", ["causal", "padding", "gqa_cross"])
def test_gradcheck_float64(backend, kind):
    torch.manual_seed(1)
    if kind == "gqa_cross":
        layer = MultiHeadAttention(6, 4, head_dim=3, n_kv_heads=2, kdim=5, vdim=5,
                                   backend=backend, dtype=torch.float64)
        ctx = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    else:
        layer = MultiHeadAttention(6, 2, backend=backend, dtype=torch.float64)
        ctx = None
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    kwargs = {"causal": True} if kind == "causal" else {}
    if kind == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False, False, True], [False, False, False]])
    inputs = (x,) if ctx is None else (x, ctx)
    assert torch.autograd.gradcheck(lambda *a: layer(*a, **kwargs), inputs)
