"""The short bf16 CPU path (backends/cpu_short.py): which calls it takes, its error
against float64 next to torch's own bf16 kernel's (outputs and gradients), masks
(causal, key lengths with a row that sees nothing, grouped queries), dropout, and the
layer using it under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_math import attention_reference

import headwise.attention.backends.cpu_short as cs
from headwise.attention import MultiHeadAttention
from headwise.attention.masks import MaskSpec

BF16 = torch.bfloat16


def _qkv(b, h, hkv, t, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=g).transpose(1, 2)
    k, v = (torch.randn(b, t, hkv, d, generator=g).transpose(1, 2) for _ in range(2))
    return [x.to(BF16).requires_grad_() for x in (q, k, v)]


def _spec(b, t, *, causal=False, key_lengths=None):
    return MaskSpec(batch=b, q_len=t, k_len=t, causal=causal, key_lengths=key_lengths)


def _errors(outs, exact):
    return [(o.double() - e).abs().max().item() for o, e in zip(outs, exact, strict=True)]


def test_takes_short_bf16_cpu_calls_only():
    q, k, _ = _qkv(2, 4, 4, 128, 16)
    assert cs.short_bf16_applies(q, k)
    assert not cs.short_bf16_applies(q.float(), k.float())  # fp32: torch's kernel is faster
    q_long, k_long, _ = _qkv(1, 1, 1, cs.MAX_LEN + 1, 8)
    assert not cs.short_bf16_applies(q_long, k_long)
    big = torch.empty(cs.MAX_SCORES // (128 * 128) + 1, 1, 128, 8, dtype=BF16)
    assert not cs.short_bf16_applies(big, big)  # too many scores to keep for the backward


@pytest.mark.parametrize("causal", [False, True])
def test_error_against_float64_is_close_to_torchs_bf16_kernel(causal):
    q, k, v = _qkv(4, 4, 4, 128, 64, seed=1)
    dout = torch.randn(4, 4, 128, 64, generator=torch.Generator().manual_seed(2)).to(BF16)
    out = cs.short_bf16_attention(q, k, v, _spec(4, 128, causal=causal), scale=64**-0.5, dropout_p=0.0)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q2, k2, v2 = (x.detach().requires_grad_() for x in (q, k, v))
    theirs = F.scaled_dot_product_attention(q2, k2, v2, is_causal=causal)
    their_grads = torch.autograd.grad(theirs, (q2, k2, v2), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = attention_reference(q64, k64, v64, causal=causal)[0]
    want_grads = torch.autograd.grad(want, (q64, k64, v64), dout.double())
    mine = _errors((out, *grads), (want, *want_grads))
    torch_err = _errors((theirs, *their_grads), (want, *want_grads))
    for name, e, te in zip(("out", "dq", "dk", "dv"), mine, torch_err, strict=True):
        # the scores leave the bf16 GEMM rounded to bf16 (torch's kernel keeps them
        # in float32), so the error may be a few times torch's, still bf16-sized
        assert e <= 4 * te + 2e-3, (name, e, te)
    assert out.dtype == BF16 and all(g.dtype == BF16 for g in grads)


def test_key_lengths_grouped_queries_and_a_row_with_no_key():
    q, k, v = _qkv(3, 4, 2, 40, 16, seed=3)
    lengths = torch.tensor([40, 7, 0])  # the last sequence has no key at all
    spec = _spec(3, 40, key_lengths=lengths)
    out = cs.short_bf16_attention(q, k, v, spec, scale=0.25, dropout_p=0.0)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = attention_reference(q64, k64, v64, key_lengths=lengths, scale=0.25)[0]
    want_grads = torch.autograd.grad(want.square().sum(), (q64, k64, v64))
    torch.testing.assert_close(out.double(), want, atol=3e-2, rtol=3e-2)
    assert out[2].abs().max() == 0  # no key: all zeros, not NaN
    for got, exp in zip(grads, want_grads, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), exp, atol=6e-2, rtol=6e-2)


def test_dropout_drops_whole_weights_at_the_asked_rate():
    q, k, v = _qkv(8, 4, 4, 64, 16, seed=4)
    v_ones = torch.ones_like(v)  # out = the row sums of the kept, rescaled weights
    torch.manual_seed(0)
    out = cs.short_bf16_attention(q, k, v_ones, _spec(8, 64), scale=0.25, dropout_p=0.5)
    no_drop = cs.short_bf16_attention(q, k, v_ones, _spec(8, 64), scale=0.25, dropout_p=0.0)
    torch.testing.assert_close(no_drop.float(), torch.ones_like(no_drop.float()), atol=2e-2, rtol=0)
    assert not torch.allclose(out.float(), no_drop.float(), atol=0.05)
    assert abs(out.float().mean().item() - 1.0) < 0.05  # dropout rescales by 1 / (1 - p)


def test_the_layer_goes_this_way_under_cpu_autocast_and_agrees_with_fp32(monkeypatch):
    torch.manual_seed(5)
    layer = MultiHeadAttention(64, 4)
    x = torch.randn(4, 96, 64)
    taken = []
    real = cs.short_bf16_attention

    def spy(*a, **kw):
        taken.append(a[0].dtype)
        return real(*a, **kw)

    monkeypatch.setattr("headwise.attention.backends.sdpa.short_bf16_attention", spy)
    with torch.autocast("cpu", dtype=BF16):
        got = layer(x, causal=True)
    assert taken == [BF16]
    want = layer(x, causal=True)  # fp32: torch's kernel
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("per_sequence_bias", [False, True])
def test_a_batch_cut_into_pieces_gives_the_uncut_result(monkeypatch, per_sequence_bias):
    q, k, v = _qkv(5, 2, 2, 24, 8, seed=6)
    lengths = torch.tensor([24, 3, 0, 17, 9])
    spec = _spec(5, 24, causal=True, key_lengths=lengths)
    if per_sequence_bias:  # a (B, 1, Tq, Tk) bias is cut with the batch
        bias = torch.randn(5, 1, 24, 24, generator=torch.Generator().manual_seed(7))
        spec = MaskSpec(batch=5, q_len=24, k_len=24, causal=True, key_lengths=lengths, bias=bias)
    whole = cs.short_bf16_attention(q, k, v, spec, scale=0.3, dropout_p=0.0)
    whole_grads = torch.autograd.grad(whole.float().sum(), (q, k, v))
    monkeypatch.setattr(cs, "CHUNK_SCORES", 2 * 2 * 24 * 24)  # two sequences a piece: 2, 2, 1
    cut = cs.short_bf16_attention(q, k, v, spec, scale=0.3, dropout_p=0.0)
    cut_grads = torch.autograd.grad(cut.float().sum(), (q, k, v))
    assert torch.equal(cut, whole)
    for a, b in zip(cut_grads, whole_grads, strict=True):
        assert torch.equal(a, b)
