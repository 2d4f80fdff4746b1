"""headwise.nn.MultiheadAttention against torch.nn.MultiheadAttention at the edges:
empty inputs (a batch or a sequence of length 0) and invalid shapes.

Empty inputs must give what torch gives (shapes and values, weights or not, averaged or
not, batch_first both ways, every backend that can return weights). For each invalid
shape torch refuses, headwise must raise something that both ``except ValueError``
(headwise's convention) and torch's own exception type catch, with torch's sentence in
its message, so code written against either keeps working.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from headwise.attention import MultiHeadAttention
from headwise.nn import MultiheadAttention, ShapeError, ShapeRuntimeError

E, H = 32, 4


def _pair(batch_first: bool, backend: str = "auto", **kw):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, **kw).eval()
    ours = MultiheadAttention(E, H, batch_first=batch_first, backend=backend, **kw).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _x(batch_first: bool, n: int, length: int) -> torch.Tensor:
    x = torch.randn(n, length, E)
    return x if batch_first else x.transpose(0, 1)


EMPTY = [(0, 5, 5), (2, 0, 0), (2, 0, 5), (2, 5, 0), (0, 0, 0)]  # (N, L, S)


@pytest.mark.parametrize("backend", ["auto", "math", "reference"])
@pytest.mark.parametrize("n,lq,lk", EMPTY)
def test_empty_inputs_match_torch(backend, n, lq, lk):
    for batch_first, need_weights, average in itertools.product([False, True], repeat=3):
        theirs, ours = _pair(batch_first, backend)
        q, kv = _x(batch_first, n, lq), _x(batch_first, n, lk)
        want, want_w = theirs(q, kv, kv, need_weights=need_weights, average_attn_weights=average)
        got, got_w = ours(q, kv, kv, need_weights=need_weights, average_attn_weights=average)
        case = dict(batch_first=batch_first, need_weights=need_weights, average=average)
        assert got.shape == want.shape, case
        torch.testing.assert_close(got, want, msg=str(case))
        assert (got_w is None) == (want_w is None), case
        if want_w is not None:
            assert got_w.shape == want_w.shape, case
            torch.testing.assert_close(got_w, want_w, msg=str(case))


@pytest.mark.parametrize("lq,lk", [(0, 3), (3, 0), (0, 0)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_empty_unbatched_matches_torch(lq, lk, need_weights):
    theirs, ours = _pair(False)
    q, kv = torch.randn(lq, E), torch.randn(lk, E)
    want, want_w = theirs(q, kv, kv, need_weights=need_weights)
    got, got_w = ours(q, kv, kv, need_weights=need_weights)
    torch.testing.assert_close(got, want)
    if want_w is not None:
        torch.testing.assert_close(got_w, want_w)


def test_empty_inputs_backward():
    theirs, ours = _pair(True, "math")
    x = torch.randn(0, 5, E, requires_grad=True)
    out, _ = ours(x, x, x)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("backend", ["auto", "math", "reference", "sdpa"])
@pytest.mark.parametrize("shape", [(0, 5, E), (2, 0, E)])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_empty_inputs(backend, shape, causal):
    layer = MultiHeadAttention(E, H, backend=backend)
    x = torch.randn(*shape)
    assert layer(x, causal=causal).shape == shape
    if backend != "sdpa":  # sdpa cannot return weights (refused with a ValueError)
        out, w = layer(x, causal=causal, need_weights=True)
        assert out.shape == shape and w.shape == (shape[0], H, shape[1], shape[1])


# ------------------------------------------------------------------ invalid shapes
def _x3(*shape):
    return torch.randn(*shape)


# name, constructor kwargs, forward args builder -> (query, key, value, kwargs)
INVALID = [
    ("4-D query", {}, lambda: (_x3(1, 3, 2, E), _x3(1, 3, 2, E), _x3(1, 3, 2, E), {})),
    ("1-D query", {}, lambda: (_x3(E), _x3(E), _x3(E), {})),
    ("batched query, 2-D key", {}, lambda: (_x3(3, 2, E), _x3(3, E), _x3(3, 2, E), {})),
    ("batched query, 2-D value", {}, lambda: (_x3(3, 2, E), _x3(3, 2, E), _x3(3, E), {})),
    ("unbatched query, 3-D key", {}, lambda: (_x3(3, E), _x3(3, 1, E), _x3(3, 1, E), {})),
    ("batched, 1-D key_padding_mask", {},
     lambda: (_x3(3, 2, E), _x3(3, 2, E), _x3(3, 2, E), {"key_padding_mask": torch.zeros(3, dtype=torch.bool)})),
    ("unbatched, 2-D key_padding_mask", {},
     lambda: (_x3(3, E), _x3(3, E), _x3(3, E), {"key_padding_mask": torch.zeros(1, 3, dtype=torch.bool)})),
    ("batched, 4-D attn_mask", {},
     lambda: (_x3(3, 2, E), _x3(3, 2, E), _x3(3, 2, E), {"attn_mask": torch.zeros(1, 1, 3, 3, dtype=torch.bool)})),
    ("unbatched, 1-D attn_mask", {},
     lambda: (_x3(3, E), _x3(3, E), _x3(3, E), {"attn_mask": torch.zeros(3, dtype=torch.bool)})),
    ("unbatched, 3-D attn_mask of the wrong shape", {},
     lambda: (_x3(3, E), _x3(3, E), _x3(3, E), {"attn_mask": torch.zeros(H + 1, 3, 3, dtype=torch.bool)})),
    ("wrong embedding dimension", {}, lambda: (_x3(3, 2, E // 2), _x3(3, 2, E // 2), _x3(3, 2, E // 2), {})),
    ("key and value of different lengths", {}, lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(5, 2, E), {})),
    ("kdim/vdim: key and value of different lengths", {"kdim": 8, "vdim": 16},
     lambda: (_x3(3, 2, E), _x3(4, 2, 8), _x3(5, 2, 16), {})),
    ("key_padding_mask with the wrong batch", {},
     lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(4, 2, E), {"key_padding_mask": torch.zeros(3, 4, dtype=torch.bool)})),
    ("key_padding_mask with the wrong length", {},
     lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(4, 2, E), {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)})),
    ("key_padding_mask with the wrong length, bias_kv", {"add_bias_kv": True},
     lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(4, 2, E), {"key_padding_mask": torch.zeros(2, 5, dtype=torch.bool)})),
]

# where torch raises a RuntimeError instead
INVALID_RUNTIME = [
    ("2-D attn_mask of the wrong shape", {},
     lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(4, 2, E), {"attn_mask": torch.zeros(3, 3, dtype=torch.bool)})),
    ("3-D attn_mask of the wrong shape", {},
     lambda: (_x3(3, 2, E), _x3(4, 2, E), _x3(4, 2, E), {"attn_mask": torch.zeros(2, 3, 4, dtype=torch.bool)})),
    ("is_causal without attn_mask", {},
     lambda: (_x3(3, 2, E), _x3(3, 2, E), _x3(3, 2, E), {"is_causal": True})),
]


def _torch_error(kind, kw, build):
    torch.manual_seed(0)
    q, k, v, fkw = build()
    theirs = torch.nn.MultiheadAttention(E, H, **kw)
    with pytest.raises(kind) as e:
        theirs(q, k, v, **fkw)
    return str(e.value), (q, k, v, fkw)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name,kw,build", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_shapes_raise_what_torch_callers_catch(name, kw, build, batch_first):
    if batch_first:  # the same case in the other layout: torch checks after its transpose
        inner = build

        def build():
            q, k, v, fkw = inner()
            tr = (lambda t: t.transpose(0, 1)) if q.dim() == 3 else (lambda t: t)
            return tr(q), (tr(k) if k.dim() == 3 else k), (tr(v) if v.dim() == 3 else v), fkw
        kw = {**kw, "batch_first": True}
        if name == "4-D query":
            pytest.skip("a 4-D query has no batch_first meaning")
    theirs_text, (q, k, v, fkw) = _torch_error(AssertionError, kw, build)
    ours = MultiheadAttention(E, H, **kw)
    for kind in (AssertionError, ValueError):
        with pytest.raises(kind) as e:
            ours(q, k, v, **fkw)
        assert isinstance(e.value, ShapeError)
        assert theirs_text in str(e.value), (theirs_text, str(e.value))


@pytest.mark.parametrize("name,kw,build", INVALID_RUNTIME, ids=[c[0] for c in INVALID_RUNTIME])
def test_invalid_shapes_where_torch_raises_runtime_error(name, kw, build):
    theirs_text, (q, k, v, fkw) = _torch_error(RuntimeError, kw, build)
    ours = MultiheadAttention(E, H, **kw)
    for kind in (RuntimeError, ValueError):
        with pytest.raises(kind) as e:
            ours(q, k, v, **fkw)
        assert isinstance(e.value, ShapeRuntimeError)
        assert theirs_text in str(e.value), (theirs_text, str(e.value))


def test_constructor_heads_must_divide_width():
    with pytest.raises(AssertionError) as theirs:
        torch.nn.MultiheadAttention(8, 3)
    for kind in (AssertionError, ValueError):
        with pytest.raises(kind) as e:
            MultiheadAttention(8, 3)
        assert str(theirs.value) in str(e.value) and "num_heads (3) must divide embed_dim (8)" in str(e.value)


def test_shape_error_is_both():
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, AssertionError)
    assert issubclass(ShapeRuntimeError, ValueError) and issubclass(ShapeRuntimeError, RuntimeError)
