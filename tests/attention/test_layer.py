"""MultiHeadAttention: head views, properties, KV cache, RoPE, rectangular causal
masks and the errors for bad input."""

import math

import pytest
import torch
from reference_math import allowed_matrix
from torch import nn

from headwise.attention import KVCache, MultiHeadAttention, attend, normalize_mask

BACKENDS = ["reference", "math", "sdpa"]


def _layer(**kw):
    torch.manual_seed(0)
    kw.setdefault("dtype", torch.float64)
    return MultiHeadAttention(kw.pop("d_model", 16), kw.pop("n_heads", 4), **kw)


# ---------------------------------------------------------------- head views
def test_head_views_are_views_of_the_fused_weight():
    layer = _layer(n_heads=4, head_dim=3, n_kv_heads=2)
    assert len(layer.heads) == 4
    h = layer.heads[3]
    assert h.W_Q.shape == (16, 3) and h.W_K.shape == (16, 3) and h.W_O.shape == (3, 16)
    assert h.kv_index == 1
    assert h.W_Q.untyped_storage().data_ptr() == layer.qkv_weight.untyped_storage().data_ptr()
    with torch.no_grad():
        h.W_Q.fill_(7.0)
        h.W_O.fill_(-2.0)
        h.W_V.zero_()
    rows_q = layer.qkv_weight[9:12]
    assert torch.all(rows_q == 7.0)
    assert torch.all(layer.out_proj.weight[:, 9:12] == -2.0)
    assert torch.all(layer.heads[2].W_V == 0)  # shared K/V head of the same group
    assert torch.any(layer.heads[1].W_V != 0)


def test_head_views_index_errors():
    layer = _layer()
    with pytest.raises(IndexError, match="head index"):
        layer.heads[4]
    assert layer.heads[-1].index == 3
    assert [h.index for h in layer.heads[1:3]] == [1, 2]


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("backend", BACKENDS)
def test_permuting_heads_with_their_wo_blocks_leaves_output_unchanged(backend):
    layer = _layer(n_heads=4, head_dim=5, backend=backend)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    before = layer(x, causal=True)
    perm = [2, 0, 3, 1]
    d = layer.head_dim
    idx = torch.cat([torch.arange(p * d, (p + 1) * d) for p in perm])
    with torch.no_grad():
        q, k, v = layer.qkv_weight.split(4 * d)
        qb, kb, vb = layer.qkv_bias.split(4 * d)
        layer.qkv_weight.copy_(torch.cat([q[idx], k[idx], v[idx]]))
        layer.qkv_bias.copy_(torch.cat([qb[idx], kb[idx], vb[idx]]))
        layer.out_proj.weight.copy_(layer.out_proj.weight[:, idx])
    after = layer(x, causal=True)
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_positions_permuting_tokens_permutes_outputs(backend):
    layer = _layer(backend=backend)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    perm = torch.randperm(9)
    torch.testing.assert_close(layer(x[:, perm]), layer(x)[:, perm])


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_gradient_to_future_inputs_is_exactly_zero(backend):
    layer = _layer(backend=backend, rope=True)
    x = torch.randn(1, 8, 16, dtype=torch.float64, requires_grad=True)
    out = layer(x, causal=True)
    for t in range(8):
        (g,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        assert torch.all(g[0, t + 1 :] == 0), f"output {t} depends on a later input"
        assert torch.any(g[0, : t + 1] != 0)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tq,tk", [(3, 7), (5, 5), (7, 3)])
def test_rectangular_causal_is_bottom_right_aligned(backend, tq, tk):
    torch.manual_seed(3)
    q = torch.randn(2, 4, tq, 8, dtype=torch.float64)
    k = torch.randn(2, 2, tk, 8, dtype=torch.float64)
    v = torch.randn(2, 2, tk, 5, dtype=torch.float64)
    spec = normalize_mask(batch=2, n_heads=4, q_len=tq, k_len=tk, device=q.device, causal=True)
    out, _ = attend(q, k, v, spec, backend=backend)
    allowed = allowed_matrix(2, 4, tq, tk, causal=True)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (q @ kr.transpose(-1, -2) / math.sqrt(8)).masked_fill(~allowed, float("-inf"))
    want = torch.nan_to_num(torch.softmax(s, -1)) @ vr
    torch.testing.assert_close(out, want)


def test_attend_scale_and_backend_choice():
    q = torch.randn(1, 2, 4, 8)
    spec = normalize_mask(batch=1, n_heads=2, q_len=4, k_len=4, device=q.device)
    a, w = attend(q, q, q, spec, backend="auto", need_weights=True, scale=0.5)
    b, _ = attend(q, q, q, spec, backend="reference", scale=0.5)
    torch.testing.assert_close(a, b)
    assert w.shape == (1, 2, 4, 4)


# ---------------------------------------------------------------- KV cache and RoPE
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_decoding_equals_one_causal_pass(backend, rope):
    layer = _layer(n_heads=4, n_kv_heads=2, rope=rope, backend=backend)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    full = layer(x, causal=True)
    cache = KVCache()
    steps = [layer(x[:, :4], causal=True, kv_cache=cache)]  # a prompt, then one token at a time
    for t in range(4, 11):
        steps.append(layer(x[:, t : t + 1], causal=True, kv_cache=cache))
    assert len(cache) == 11
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_kv_cache_rejects_a_different_batch():
    layer = _layer()
    cache = KVCache()
    layer(torch.randn(2, 3, 16, dtype=torch.float64), causal=True, kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache"):
        layer(torch.randn(3, 1, 16, dtype=torch.float64), causal=True, kv_cache=cache)


def test_rope_scores_depend_on_relative_position_only():
    layer = _layer(n_heads=1, rope=True)
    q = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, dtype=torch.float64)
    s1 = layer.rotary(q, 3) @ layer.rotary(k, 1).transpose(-1, -2)
    s2 = layer.rotary(q, 12) @ layer.rotary(k, 10).transpose(-1, -2)
    torch.testing.assert_close(s1, s2)
    s3 = layer.rotary(q, 12) @ layer.rotary(k, 11).transpose(-1, -2)
    assert not torch.allclose(s1, s3)


def test_cross_attention_with_context():
    layer = _layer(kdim=10, vdim=10)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    ctx = torch.randn(2, 6, 10, dtype=torch.float64)
    out, w = layer(x, ctx, need_weights=True)
    assert out.shape == (2, 3, 16) and w.shape == (2, 4, 3, 6)


# ---------------------------------------------------------------- bad input
def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"n_heads \(5\) must divide d_model \(16\)"):
        MultiHeadAttention(16, 5)
    MultiHeadAttention(16, 5, head_dim=4)  # explicit head_dim: any width
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must divide n_heads \(4\)"):
        MultiHeadAttention(16, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim must be a positive int, got 0"):
        MultiHeadAttention(16, 4, head_dim=0)
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        MultiHeadAttention(16, 4, backend="cuda-magic")
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(16, 4, dropout=1.5)
    with pytest.raises(ValueError, match="even head_dim"):
        MultiHeadAttention(15, 3, rope=True)


def test_forward_errors_name_the_argument():
    layer = _layer()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x must be 3-D .* got 2-D"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"x must have last dimension 16, got shape \(2, 5, 8\)"):
        layer(x[..., :8])
    with pytest.raises(TypeError, match="x has dtype torch.float32 but the layer's weights are"):
        layer(x.float())
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        layer([[1.0]])
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, key_len\)"):
        layer(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be a bool tensor .* got dtype torch.int64"):
        layer(x, key_padding_mask=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_mask of shape"):
        layer(x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must be 2-D"):
        layer(x, attn_mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attn_mask must be a bool tensor"):
        layer(x, attn_mask=torch.zeros(5, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"key_lengths must lie in \[0, 5\]"):
        layer(x, key_lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match=r"key_lengths must have shape \(2,\)"):
        layer(x, key_lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match="context has batch size 3 but x has 2"):
        layer(x, torch.randn(3, 5, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="cannot serve this call: it cannot return attention"):
        layer.backend = "sdpa"
        layer(x, need_weights=True)
    with pytest.raises(TypeError, match="causal must be a bool"):
        layer.backend = "auto"
        layer(x, causal="yes")
    with pytest.raises(TypeError, match="kv_cache must be a headwise KVCache"):
        layer(x, kv_cache={})


def test_mismatched_devices_are_named():
    layer = _layer()
    x = torch.randn(1, 2, 16, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="x is on meta but the layer's weights are on cpu"):
        layer(x)
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="key_padding_mask is on meta"):
        layer(x, key_padding_mask=torch.zeros(1, 3, dtype=torch.bool, device="meta"))


# ---------------------------------------------------------------- head hooks
def test_head_hook_sees_weights_and_can_ablate_a_head():
    layer = _layer()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    seen = {}

    def capture(mod, z, w):
        seen["z"], seen["w"] = z, w

    handle = layer.register_head_hook(capture, need_weights=True)
    base = layer(x, causal=True)  # auto picks a backend that can return the weights
    assert seen["z"].shape == (2, 4, 6, 4) and seen["w"].shape == (2, 4, 6, 6)
    torch.testing.assert_close(seen["w"].sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))
    handle.remove()
    layer.backend = "sdpa"
    with pytest.raises(ValueError, match="cannot serve this call"):  # an explicit choice stays strict
        layer.register_head_hook(capture, need_weights=True)
        layer(x)
    layer._head_hooks.clear()
    layer.backend = "auto"

    def zero_head(mod, z, w):
        z = z.clone()
        z[:, 2] = 0
        return z

    h2 = layer.register_head_hook(zero_head)
    ablated = layer(x, causal=True)
    h2.remove()
    # zeroing head 2 removes exactly its W_O contribution
    contribution = seen["z"][:, 2] @ layer.heads[2].W_O
    torch.testing.assert_close(ablated, base - contribution)
    torch.testing.assert_close(layer(x, causal=True), base)


# ------------------------------------------------------------------ given projections
def test_given_projection_modules_compute_what_the_own_weights_do():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, n_kv_heads=2).eval()
    qkv = nn.Linear(32, layer.qkv_weight.shape[0])
    with torch.no_grad():
        qkv.weight.copy_(layer.qkv_weight)
        qkv.bias.copy_(layer.qkv_bias)
    given = MultiHeadAttention.with_projections(layer, qkv_proj=qkv)
    assert given.out_proj is layer.out_proj and not hasattr(given, "qkv_weight")
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    torch.testing.assert_close(given(x, causal=True), layer(x, causal=True))
    torch.testing.assert_close(given(x, ctx), layer(x, ctx))
    torch.testing.assert_close(given.heads[3].W_K, layer.heads[3].W_K)
    # the hooks are the layer's: a handle removes the hook from both
    seen = []
    handle = layer.register_head_hook(lambda m, z, w: seen.append(m))
    given(x)
    handle.remove()
    given(x)
    assert seen == [given]


def test_given_projections_must_fit_the_layer():
    with pytest.raises(ValueError, match=r"qkv_proj\.weight must have shape \(96, 32\)"):
        MultiHeadAttention(32, 4, qkv_proj=nn.Linear(32, 64))
    with pytest.raises(ValueError, match="takes q_proj and k_proj and v_proj"):
        MultiHeadAttention(32, 4, kdim=8, q_proj=nn.Linear(32, 32))
    with pytest.raises(TypeError, match="out_proj must be an nn.Module with weight and bias"):
        MultiHeadAttention(32, 4, out_proj=lambda x: x)
    with pytest.raises(ValueError, match="with_projections needs the input projections"):
        MultiHeadAttention.with_projections(MultiHeadAttention(32, 4))
