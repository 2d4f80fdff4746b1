"""The int8 attention kernel (headwise.kernels.int8_attention) and the ``int8`` backend.

Two references, both written here: exact attention in float64 (the kernel must stay
within int8's error, stated below), and the kernel's own arithmetic emulated in
float64 (per-tile int8 Q and smoothed K), which it must match to fp16/bf16 rounding,
so a wrong scale, tile or mask shows up as a large error even where int8 noise
would hide it. CPU runs use the Triton interpreter on small shapes.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_math import attention_reference

from headwise.attention import MultiHeadAttention
from headwise.attention.backends import AttentionCall, get_backend
from headwise.attention.backends.int8 import Int8Backend
from headwise.attention.masks import MaskSpec
from headwise.kernels import int8_attention as int8_mod
from headwise.kernels.int8_attention import int8_attention

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
pytestmark = pytest.mark.skipif(not CUDA and not int8_mod.INTERPRET,
                                reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)")

# int8 with one scale per 16..128-row tile keeps ~7 bits per score term: on unit-normal
# q, k the output is off by ~1e-2 relative (fp16 rounding alone: ~2e-4)
INT8_REL_TOL = 3e-2
# the kernel against its own arithmetic in float64: fp16/bf16 rounding of P and V,
# plus the odd half-way rounding tie
EMUL_REL_TOL = 4e-3 if int8_mod.INTERPRET else 1e-2


def exact(q, k, v, *, causal=False, key_lengths=None, scale=None):
    """float64 softmax(q k^T * scale + mask) v on the CPU; rows with no visible key are 0."""
    lens = None if key_lengths is None else key_lengths.cpu()
    return attention_reference(q.cpu(), k.cpu(), v.cpu(), causal=causal, key_lengths=lens, scale=scale)[0]


def emulated(q, k, v, *, causal=False, key_lengths=None, block_m=16, block_n=16):
    """The kernel's arithmetic in float64: K minus its mean, per-tile symmetric int8 of
    q * scale and of K, exact softmax and P V."""
    def per_tile(x, block):
        b, h, t, d = x.shape
        n = -(-t // block)
        xp = torch.nn.functional.pad(x, (0, 0, 0, n * block - t)).view(b, h, n, block, d)
        s = xp.abs().amax((-1, -2), keepdim=True).clamp_min(1e-30) / 127
        return (torch.round(xp / s) * s).view(b, h, n * block, d)[:, :, :t]

    q, k = q.double().cpu(), k.double().cpu()
    k = k - k.mean(2, keepdim=True)
    qd = per_tile(q / math.sqrt(q.shape[-1]), block_m)
    kd = per_tile(k, block_n)
    return exact(qd, kd, v, causal=causal, key_lengths=key_lengths, scale=1.0)


def rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


CASES = [
    # (B, H, Hkv, Tq, Tk, D, causal, key_lengths)
    (2, 4, 2, 37, 53, 40, False, None),  # ragged tiles, GQA, head dim not a power of 2
    (1, 2, 2, 48, 48, 64, True, None),  # causal, square
    (2, 2, 1, 20, 45, 32, True, [45, 17]),  # causal with a cache offset, MQA, key lengths
    (2, 2, 2, 16, 24, 16, False, [0, 24]),  # a sequence with no keys: zeros
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_against_float64(case, dtype):
    b, h, hkv, tq, tk, d, causal, lengths = case
    g = torch.Generator().manual_seed(0)
    # keys with a shared offset, as trained models have: what K smoothing is for
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, hkv, tk, d, generator=g) + 2.0
    v = torch.randn(b, hkv, tk, d, generator=g)
    q, k, v = (t.to(DEV, dtype) for t in (q, k, v))
    kl = None if lengths is None else torch.tensor(lengths, device=DEV)
    out = int8_attention(q, k, v, causal=causal, key_lengths=kl)
    assert out.shape == (b, h, tq, d) and out.dtype == dtype
    ref = exact(q, k, v, causal=causal, key_lengths=kl)
    assert rel(out, ref) < INT8_REL_TOL
    if int8_mod.INTERPRET:  # the tiles are 16 x 16 there
        assert rel(out, emulated(q, k, v, causal=causal, key_lengths=kl)) < EMUL_REL_TOL
    if lengths is not None and 0 in lengths:
        assert torch.all(out[lengths.index(0)] == 0)


def test_smoothing_k_helps_offset_keys():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 32, 32, generator=g).half().to(DEV)
    k = (torch.randn(1, 2, 32, 32, generator=g) + 4.0).half().to(DEV)
    v = torch.randn(1, 2, 32, 32, generator=g).half().to(DEV)
    ref = exact(q, k, v)
    smooth = rel(int8_attention(q, k, v), ref)
    raw = rel(int8_attention(q, k, v, smooth_k=False), ref)
    assert smooth < raw


def test_errors_name_the_argument():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        int8_attention(q, q, q)
    with pytest.raises(ValueError, match="4-D"):
        int8_attention(q[0].half(), q[0].half(), q[0].half())
    with pytest.raises(ValueError, match="multiple"):
        int8_attention(q.half(), torch.randn(1, 3, 8, 16).half(), torch.randn(1, 3, 8, 16).half())


def _call(**kw) -> AttentionCall:
    base = dict(dtype=torch.float16, device=DEV, head_dim=64, value_dim=64, n_heads=4, n_kv_heads=4,
                mask=MaskSpec(batch=1, q_len=8, k_len=8), need_weights=False, dropout_p=0.0,
                requires_grad=False)
    base.update(kw)
    return AttentionCall(**base)


def test_backend_refuses_what_it_cannot_serve():
    b = Int8Backend()
    assert b.unsupported(_call()) is None
    assert "forward-only" in b.unsupported(_call(requires_grad=True))
    assert "float32" in b.unsupported(_call(dtype=torch.float32))
    assert "weights" in b.unsupported(_call(need_weights=True))
    # "auto" never prefers it: an exact backend serves the same call
    assert get_backend("auto", _call()).name != "int8"


def test_layer_with_int8_backend_matches_math():
    torch.manual_seed(0)
    layer = MultiHeadAttention(64, 4, n_kv_heads=2, backend="int8").to(DEV, torch.float16).eval()
    x = torch.randn(2, 33, 64, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        got = layer(x, causal=True)
        layer.backend = "math"
        want = layer(x, causal=True)
    assert rel(got, want) < INT8_REL_TOL
    layer.backend = "int8"
    with pytest.raises(ValueError, match="forward-only"):
        layer.requires_grad_(True)(x)
