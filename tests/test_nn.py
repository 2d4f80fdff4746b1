"""headwise.nn.MultiheadAttention against torch.nn.MultiheadAttention with the same
state_dict: outputs, weights and gradients over random configurations."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwise.nn import MultiheadAttention


@st.composite
def cases(draw):
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    return dict(
        embed=heads * draw(st.sampled_from([1, 3, 5, 8])),
        heads=heads,
        bias=draw(st.booleans()),
        add_bias_kv=draw(st.booleans()),
        add_zero_attn=draw(st.booleans()),
        kv_dims=draw(st.sampled_from([None, (5, 7)])),
        batch_first=draw(st.booleans()),
        batch=draw(st.integers(1, 3)),
        q_len=draw(st.sampled_from([1, 4, 17, 65])),
        k_len=draw(st.sampled_from([1, 3, 17, 65])),
        self_attn=draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "bool2d", "float2d", "bool3d", "kpm", "kpm_float", "causal"])),
        need_weights=draw(st.booleans()),
        average=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )


def _pair(c, dtype):
    torch.manual_seed(c["seed"])
    kdim, vdim = c["kv_dims"] or (None, None)
    kw = dict(
        bias=c["bias"],
        add_bias_kv=c["add_bias_kv"],
        add_zero_attn=c["add_zero_attn"],
        kdim=kdim,
        vdim=vdim,
        batch_first=c["batch_first"],
        dtype=dtype,
    )
    theirs = torch.nn.MultiheadAttention(c["embed"], c["heads"], **kw)
    ours = MultiheadAttention(c["embed"], c["heads"], **kw)
    ours.load_state_dict(theirs.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=cases())
def test_matches_torch_multihead_attention(c, dtype):
    theirs, ours = _pair(c, dtype)
    n, tq, tk, e = c["batch"], c["q_len"], c["k_len"], c["embed"]
    kdim, vdim = c["kv_dims"] or (e, e)
    self_attn = c["self_attn"] and c["kv_dims"] is None
    if self_attn or c["mask"] == "causal":
        tk = tq
        kdim = vdim = e
        if c["kv_dims"] is not None:
            self_attn = False

    def make(length, width):
        shape = (n, length, width) if c["batch_first"] else (length, n, width)
        return torch.randn(shape, dtype=dtype, requires_grad=True)

    q = make(tq, e)
    if self_attn:
        k = v = q
    else:
        k, v = make(tk, kdim), make(tk, vdim)
    if c["kv_dims"] is not None and (kdim, vdim) != c["kv_dims"]:
        return  # causal self-attention needs kdim == embed: covered by other examples
    kwargs = dict(need_weights=c["need_weights"], average_attn_weights=c["average"])
    g = torch.Generator().manual_seed(c["seed"])
    if c["mask"] == "bool2d":
        m = torch.rand(tq, tk, generator=g) < 0.3
        m[:, 0] = False  # keep every row non-empty: torch gives NaN there, headwise zeros
        kwargs["attn_mask"] = m
    elif c["mask"] == "float2d":
        kwargs["attn_mask"] = torch.randn(tq, tk, generator=g, dtype=dtype)
    elif c["mask"] == "bool3d":
        m = torch.rand(n * c["heads"], tq, tk, generator=g) < 0.3
        m[..., 0] = False
        kwargs["attn_mask"] = m
    elif c["mask"] in ("kpm", "kpm_float"):
        m = torch.rand(n, tk, generator=g) < 0.3
        m[:, 0] = False
        kwargs["key_padding_mask"] = (
            m if c["mask"] == "kpm" else torch.zeros(n, tk, dtype=dtype).masked_fill(m, float("-inf"))
        )
    elif c["mask"] == "causal":
        if c["add_zero_attn"] or c["add_bias_kv"]:
            # torch turns the is_causal hint into sdpa's top-left causal flag and drops the
            # appended key's column: a documented difference, not reproduced
            return
        kwargs["attn_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(tq, dtype=dtype)
        kwargs["is_causal"] = True
    out_t, w_t = theirs(q, k, v, **kwargs)
    out_h, w_h = ours(q, k, v, **kwargs)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(out_h, out_t, **tol)
    if c["need_weights"]:
        torch.testing.assert_close(w_h, w_t, **tol)
    else:
        assert w_h is None and w_t is None
    go = torch.randn_like(out_t)
    inputs = [t for t in {id(t): t for t in (q, k, v)}.values()]
    g_t = torch.autograd.grad((out_t * go).sum(), inputs + list(theirs.parameters()))
    g_h = torch.autograd.grad((out_h * go).sum(), inputs + list(ours.parameters()))
    for a, b in zip(g_h, g_t, strict=True):
        torch.testing.assert_close(a, b, atol=10 * tol["atol"], rtol=10 * tol["rtol"])


@pytest.mark.parametrize("need_weights", [False, True])
def test_is_causal_hint_is_taken_as_torch_takes_it(need_weights):
    """Without key padding or weights torch applies the causal mask and does not read
    attn_mask; with weights it applies attn_mask. A deliberately non-causal mask shows
    which one each side used."""
    torch.manual_seed(1)
    theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ours = MultiheadAttention(16, 4, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 400, 16)  # long enough for the CPU's blocked causal path
    not_causal = torch.zeros(400, 400, dtype=torch.bool)
    not_causal[:, -1] = True
    a, _ = theirs(x, x, x, attn_mask=not_causal, is_causal=True, need_weights=need_weights)
    b, _ = ours(x, x, x, attn_mask=not_causal, is_causal=True, need_weights=need_weights)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    causal_out, _ = ours(x, x, x, attn_mask=torch.ones(400, 400, dtype=torch.bool).triu(1),
                         need_weights=False)
    if need_weights:  # attn_mask was applied: the last key is hidden, the future is not
        assert not torch.allclose(b, causal_out, atol=1e-4)
    else:
        torch.testing.assert_close(b, causal_out, atol=1e-5, rtol=1e-4)


def test_unbatched_input_and_swap_of_one_import():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(8, 2)
    ours = MultiheadAttention(8, 2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 8)
    a, wa = theirs(x, x, x)
    b, wb = ours(x, x, x)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(wb, wa)
    # and torch's module accepts ours' state_dict back
    theirs.load_state_dict(ours.state_dict())


def test_fully_masked_rows_are_zero_not_nan():
    m = MultiheadAttention(8, 2, batch_first=True, bias=False)
    x = torch.randn(2, 3, 8)
    kpm = torch.tensor([[True, True, True], [False, False, True]])
    out, w = m(x, x, x, key_padding_mask=kpm)
    assert torch.all(out[0] == 0) and torch.all(w[0] == 0)
    assert torch.isfinite(out).all()


def test_errors_name_the_argument():
    m = MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide embed_dim \(8\)"):
        MultiheadAttention(8, 3)
    with pytest.raises(ValueError, match="query must have last dimension 8, got 4"):
        m(x[..., :4], x[..., :4], x[..., :4])
    with pytest.raises(ValueError, match=r"2-D attn_mask must have shape \(L, S\) = \(3, 3\)"):
        m(x, x, x, attn_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"3-D attn_mask must have shape \(N\*num_heads, L, S\)"):
        m(x, x, x, attn_mask=torch.zeros(3, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal=True is a hint"):
        m(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="key must have the same rank as query"):
        m(x, x[0], x)
    with pytest.raises(TypeError, match="query has dtype torch.float64"):
        m(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match="backend must be"):
        MultiheadAttention(8, 2, backend="nope")
