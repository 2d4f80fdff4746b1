"""The tiled Triton attention kernels (headwise.kernels.tiled) and the ``tiled``
backend, against a float64 reference written here from the definition.

Without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py) on small shapes; tests marked ``gpu`` run random shapes
and every option on CUDA and hold the kernels to at most twice the error of
PyTorch's own attention math in the same dtype.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from reference_math import attention_reference, layer_reference

from headwise.attention import MultiHeadAttention
from headwise.attention.backends import AttentionCall, get_backend
from headwise.attention.backends.tiled import TiledBackend
from headwise.attention.kv_cache import KVCache
from headwise.attention.masks import MaskSpec
from headwise.kernels import tiled as tiled_mod
from headwise.kernels import tiled_attention, tiled_attention_lse

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
pytestmark = pytest.mark.skipif(
    not CUDA and not tiled_mod.INTERPRET,
    reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)",
)


def make_qkv(b, h, hkv, tq, tk, d, dv=None, dtype=torch.float32, seed=0, device=DEV):
    """q, k, v as the layer makes them: (B, H, T, D) views of (B, T, H, D) buffers."""
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv

    def rnd(t, n, width):
        x = torch.randn(b, t, n, width, generator=g).to(device=device, dtype=dtype)
        return x.transpose(1, 2).requires_grad_()

    return rnd(tq, h, d), rnd(tk, hkv, d), rnd(tk, hkv, dv)


def run_both(q, k, v, *, causal, key_lengths, seed=1):
    """Output, lse and gradients of the kernels and of the float64 reference."""
    out, lse = tiled_attention_lse(q, k, v, causal=causal, key_lengths=key_lengths)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attention_reference(q64, k64, v64, causal=causal, key_lengths=key_lengths)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    return (out, lse, grads), (ref_out, ref_lse, ref_grads)


# (B, H, Hkv, Tq, Tk, D, Dv, causal, key_lengths)
CASES = [
    pytest.param(2, 4, 2, 37, 53, 24, 24, True, [53, 0], id="d24-gqa-causal-Tq<Tk-len0"),
    pytest.param(1, 2, 2, 40, 40, 64, 64, False, None, id="d64-plain"),
    pytest.param(2, 2, 1, 70, 33, 40, 40, True, [20, 33], id="d40-mqa-causal-Tq>Tk-lens"),
    pytest.param(2, 3, 3, 19, 19, 8, 8, True, None, id="d8-causal-square"),
    pytest.param(1, 4, 1, 33, 47, 16, 32, False, [5], id="d16-dv32-mqa-lens"),
    pytest.param(2, 2, 2, 1, 29, 32, 32, True, [29, 11], id="decode-Tq1"),
    pytest.param(1, 2, 1, 45, 45, 80, 80, True, [31], id="d80-causal-lens"),
]


# The kernels' two loaders (pointers, or TMA tensor descriptors: on CUDA the default
# for aligned 16-bit inputs on Hopper and later, here forced) and two backward schemes
# (dQ in its own pass, the default; or added atomically by the dK/dV pass)
MODES = {"ptr-split": ("0", "split"), "ptr-fused": ("0", "fused"), "tma-split": ("1", "split")}


@pytest.fixture(params=list(MODES))
def kernel_mode(request, monkeypatch):
    tma, bwd = MODES[request.param]
    if tma == "1" and tiled_mod.TensorDescriptor is None:
        pytest.skip("this Triton has no tensor descriptors")
    if not tiled_mod.INTERPRET and tma == "1":
        tma = "auto"  # on CUDA the launcher decides from the GPU and the layouts
    monkeypatch.setenv("HEADWISE_TILED_TMA", tma)
    monkeypatch.setenv("HEADWISE_TILED_BWD", bwd)
    return request.param


@pytest.mark.parametrize("b,h,hkv,tq,tk,d,dv,causal,lens", CASES)
def test_fp32_matches_float64(b, h, hkv, tq, tk, d, dv, causal, lens, kernel_mode):
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dv)
    key_lengths = None if lens is None else torch.tensor(lens, device=DEV)
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=causal, key_lengths=key_lengths
    )
    assert out.shape == (b, h, tq, dv) and out.dtype == torch.float32
    assert lse.shape == (b, h, tq) and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)  # -inf exactly where a row sees nothing
    assert (lse[~finite] == float("-inf")).all()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=2e-5, rtol=2e-5)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")
    # rows that see no key: exactly zero output and zero dq
    empty = ~finite
    assert (out[empty] == 0).all() and (grads[0][empty] == 0).all()
    if key_lengths is not None:  # padded keys get exactly zero dk, dv
        for bi, n in enumerate(lens):
            assert (grads[1][bi, :, n:] == 0).all() and (grads[2][bi, :, n:] == 0).all()


def test_padding_keys_may_hold_nan(kernel_mode):
    """Keys and values past key_lengths are never read into the result, even when
    they hold NaN (uninitialised padding): every path zeroes or skips them."""
    q, k, v = make_qkv(2, 2, 1, 40, 56, 16, seed=7)
    lens = torch.tensor([30, 56], device=DEV)
    with torch.no_grad():
        k[0, :, 30:] = float("nan")
        v[0, :, 30:] = float("nan")
    out, lse = tiled_attention_lse(q, k, v, causal=False, key_lengths=lens)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    k0, v0 = (torch.nan_to_num(x.detach(), nan=0.0).double().requires_grad_() for x in (k, v))
    q0 = q.detach().double().requires_grad_()
    want, _ = attention_reference(q0, k0, v0, key_lengths=lens)
    wq, wk, wv = torch.autograd.grad(want, (q0, k0, v0), dout.double())
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(dq.double(), wq, atol=5e-5, rtol=5e-5)
    torch.testing.assert_close(dk.double(), wk, atol=5e-5, rtol=5e-5)
    torch.testing.assert_close(dv.double(), wv, atol=5e-5, rtol=5e-5)


def test_every_causal_offset_and_length_residue(kernel_mode):
    """Tk - Tq over a whole range of residues modulo the tile sizes, so that every
    off-by-one in the loop bounds (skipped tiles, unmasked tiles) shows."""
    rng = random.Random(0)
    for i, offset in enumerate(range(-15, 33)):
        tq = (37, 45, 50, 29)[i % 4]
        tk = tq + offset
        q, k, v = make_qkv(1, 2, 1, tq, tk, 16, seed=i)
        lens = torch.tensor([tk if i % 3 else rng.randint(0, tk)], device=DEV)
        (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
            q, k, v, causal=True, key_lengths=lens
        )
        msg = f"tq={tq} tk={tk} len={int(lens)}"
        torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5, msg=msg)
        for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
            torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5,
                                       msg=f"d{name} {msg}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_error_is_close_to_torch_math(dtype):
    """Error vs float64 at most ``factor`` x that of PyTorch's own math in ``dtype``.
    The interpreter rounds fp32 -> bf16 by truncation (GPUs round to nearest), which
    doubles bf16's rounding error here, hence a looser factor for bf16 on the CPU."""
    factor = 2.0 if (CUDA or dtype == torch.float16) else 3.0
    q, k, v = make_qkv(2, 4, 2, 45, 51, 40, dtype=dtype, seed=3)
    lens = torch.tensor([51, 30], device=DEV)
    (out, _, grads), (ref_out, _, ref_grads) = run_both(q, k, v, causal=True, key_lengths=lens)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    qt, kt, vt = (x.detach().clone().requires_grad_() for x in (q, k, v))
    t_out, _ = attention_reference(qt, kt, vt, causal=True, key_lengths=lens, dtype=dtype)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    t_grads = torch.autograd.grad(t_out, (qt, kt, vt), dout)
    for name, ours, theirs, ref in zip(
        ("out", "dq", "dk", "dv"), (out, *grads), (t_out, *t_grads), (ref_out, *ref_grads),
        strict=True,
    ):
        assert _rms(ours, ref) <= factor * _rms(theirs, ref) + 1e-6, name


@pytest.mark.parametrize("env, deterministic, fused", [
    (None, False, False), ("split", False, False), ("fused", False, True), ("fused", True, False),
])
def test_backward_scheme_choice(env, deterministic, fused, monkeypatch):
    if env is None:
        monkeypatch.delenv("HEADWISE_TILED_BWD", raising=False)
    else:
        monkeypatch.setenv("HEADWISE_TILED_BWD", env)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        assert tiled_mod._fuse_dq() is fused
    finally:
        torch.use_deterministic_algorithms(was)


def test_backward_scheme_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("HEADWISE_TILED_BWD", "atomic")
    with pytest.raises(ValueError, match="HEADWISE_TILED_BWD must be 'fused' or 'split', got 'atomic'"):
        tiled_mod._fuse_dq()


def _rms(x, ref):
    return (x.double() - ref).pow(2).mean().sqrt().item()


# The forward with device-side tensor descriptors (HEADWISE_TILED_FWD=desc) and a
# warp-specialised key loop (ws): bench-only candidates, non-causal only.
FWD_VARIANT_CASES = [
    pytest.param(2, 4, 2, 37, 53, 24, 24, [53, 0], id="d24-gqa-len0"),
    pytest.param(1, 2, 2, 40, 40, 64, 64, None, id="d64-plain"),
    pytest.param(2, 2, 1, 70, 33, 40, 40, [20, 33], id="d40-mqa-Tq>Tk-lens"),
    pytest.param(1, 4, 1, 33, 47, 16, 32, [5], id="d16-dv32-lens"),
]


@pytest.mark.parametrize("variant", ["desc", "ws"])
@pytest.mark.parametrize("b,h,hkv,tq,tk,d,dv,lens", FWD_VARIANT_CASES)
def test_forward_variants_match_float64(b, h, hkv, tq, tk, d, dv, lens, variant, monkeypatch):
    monkeypatch.setenv("HEADWISE_TILED_FWD", variant)
    dtype = torch.float32 if tiled_mod.INTERPRET else torch.bfloat16  # TMA needs 16 bits on CUDA
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dv, dtype=dtype)
    if tiled_mod.INTERPRET:
        assert tiled_mod._forward_variant(False, q, k, v) == variant
        assert tiled_mod._forward_variant(True, q, k, v) is None  # causal: the default kernel
    key_lengths = None if lens is None else torch.tensor(lens, device=DEV)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attention_reference(q64, k64, v64, key_lengths=key_lengths)
    kn, vn = (x.detach().clone() for x in (k, v))
    for i, n in enumerate(lens or []):  # padding keys may hold NaN
        kn[i, :, n:] = float("nan")
        vn[i, :, n:] = float("nan")
    out, lse = tiled_attention_lse(q, kn, vn, causal=False, key_lengths=key_lengths)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    (dq,) = torch.autograd.grad(out, (q,), dout)  # the backward reads this forward's lse
    (ref_dq,) = torch.autograd.grad(ref_out, (q64,), dout.double())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    assert torch.equal(torch.isfinite(lse), finite) and (out[~finite] == 0).all()
    torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=tol, rtol=tol)
    torch.testing.assert_close(dq.double(), ref_dq, atol=5 * tol, rtol=5 * tol)


@pytest.mark.parametrize("bwd", ["split", "fused"])
@pytest.mark.parametrize("b,h,hkv,tq,tk,d,dv,causal,lens", [
    pytest.param(2, 4, 2, 37, 53, 24, 24, True, [53, 0], id="gqa-causal-len0"),
    pytest.param(1, 2, 2, 40, 70, 16, 16, False, None, id="plain"),
    pytest.param(2, 2, 1, 70, 33, 40, 40, True, [20, 33], id="mqa-causal-Tq>Tk"),
])
def test_persistent_dkdv_matches_float64(b, h, hkv, tq, tk, d, dv, causal, lens, bwd, monkeypatch):
    """HEADWISE_TILED_DKDV=persistent: three programs here, each looping over several
    of the key tiles (16 keys each in the interpreter)."""
    monkeypatch.setenv("HEADWISE_TILED_DKDV", "persistent")
    monkeypatch.setenv("HEADWISE_TILED_BWD", bwd)
    if tiled_mod.INTERPRET:
        assert tiled_mod._persistent_dkdv(torch.device("cpu")) == 3
        assert b * hkv * -(-tk // tiled_mod._INTERPRET_BLOCKS["dkdv"][1]) > 3
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dv, seed=4)
    key_lengths = None if lens is None else torch.tensor(lens, device=DEV)
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=causal, key_lengths=key_lengths)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")


def test_persistent_dkdv_names(monkeypatch):
    monkeypatch.delenv("HEADWISE_TILED_DKDV", raising=False)
    assert tiled_mod._persistent_dkdv(torch.device("cpu")) is None
    monkeypatch.setenv("HEADWISE_TILED_DKDV", "always")
    with pytest.raises(ValueError, match="HEADWISE_TILED_DKDV must be 'default' or 'persistent'"):
        tiled_mod._persistent_dkdv(torch.device("cpu"))


def test_forward_variant_names(monkeypatch):
    q = torch.zeros(1, 1, 4, 16)
    monkeypatch.delenv("HEADWISE_TILED_FWD", raising=False)
    assert tiled_mod._forward_variant(False, q, q, q) is None
    monkeypatch.setenv("HEADWISE_TILED_FWD", "fast")
    with pytest.raises(ValueError, match="HEADWISE_TILED_FWD must be 'default', 'desc' or 'ws'"):
        tiled_mod._forward_variant(False, q, q, q)
    monkeypatch.setenv("HEADWISE_TILED_FWD", "desc")
    monkeypatch.setenv("HEADWISE_TILED_TMA", "0")  # no TMA at all: no descriptor variant
    assert tiled_mod._forward_variant(False, q, q, q) is None


def _block_combos():
    """Tile shapes of the GPU configs (fwd, dkdv, dq), run here in the interpreter."""
    combos = []
    lists = (tiled_mod._FWD_CONFIGS, tiled_mod._DKDV_CONFIGS, tiled_mod._DQ_CONFIGS)
    for cls in ("small", "medium", "large"):
        for i in range(max(len(c[cls]) for c in lists)):
            combo = tuple(
                (c[cls][min(i, len(c[cls]) - 1)].kwargs["BLOCK_M"],
                 c[cls][min(i, len(c[cls]) - 1)].kwargs["BLOCK_N"])
                for c in lists
            )
            if combo not in combos:
                combos.append(combo)
    return combos


@pytest.mark.parametrize("blocks", _block_combos(), ids=str)
def test_gpu_tile_shapes_in_the_interpreter(blocks, monkeypatch):
    """Every config's tile shape, with masks whose boundaries fall inside tiles."""
    if not tiled_mod.INTERPRET:
        pytest.skip("the interpreter's tile shapes are patched; on CUDA the configs run")
    monkeypatch.setattr(
        tiled_mod, "_INTERPRET_BLOCKS", dict(zip(("fwd", "dkdv", "dq"), blocks, strict=True))
    )
    q, k, v = make_qkv(1, 2, 1, 150, 170, 40, seed=5)
    lens = torch.tensor([161])
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=True, key_lengths=lens
    )
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")


@pytest.mark.parametrize("bwd", ["fused", "split"])
@pytest.mark.parametrize("autotune", ["0", "1"], ids=["fixed-config", "autotuned"])
def test_cuda_launcher_in_the_interpreter(autotune, bwd, monkeypatch):
    """The launcher's CUDA path (fixed config with fallback, or triton.autotune with
    a grid per config) driving the interpreted kernels; the autotuner's timing is
    replaced, since the interpreter has no GPU to time."""
    if not tiled_mod.INTERPRET:
        pytest.skip("on CUDA the gpu tests run this path for real")
    monkeypatch.setattr(tiled_mod, "INTERPRET", False)
    monkeypatch.setenv("HEADWISE_TILED_AUTOTUNE", autotune)
    monkeypatch.setenv("HEADWISE_TILED_BWD", bwd)
    monkeypatch.setattr(tiled_mod, "_TUNERS", {})
    monkeypatch.setattr(tiled_mod, "_FIXED", {})
    timings = iter(range(1, 1000))
    real_tuned = tiled_mod._tuned

    def fake_bench(kernel_call, quantiles=None):
        kernel_call()
        t = float(next(timings))
        return [t, t, t]

    def tuned(kind, dim_class, tma):
        tuner = real_tuned(kind, dim_class, tma)
        tuner._do_bench = fake_bench  # Triton-internal: the first config wins
        return tuner

    monkeypatch.setattr(tiled_mod, "_tuned", tuned)
    q, k, v = make_qkv(1, 2, 1, 150, 170, 40, seed=11)
    lens = torch.tensor([160])
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=True, key_lengths=lens
    )
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")
    kinds = {"fwd", "dkdv"} | ({"dq"} if bwd == "split" else set())
    if autotune == "0":  # fp32 tries the smallest (last) config first
        assert {key[0] for key in tiled_mod._FIXED} == kinds
        assert tiled_mod._FIXED[next(iter(tiled_mod._FIXED))] is tiled_mod._FWD_CONFIGS[
            "small"][-1]
    else:
        assert set(tiled_mod._TUNERS) == {(kind, "small", False) for kind in kinds}


def test_any_strides_are_read_in_place():
    """Transposed views, a slice of a fused buffer and a non-unit last stride give
    the same bits as contiguous copies."""
    g = torch.Generator().manual_seed(7)
    b, t, h, d = 2, 21, 2, 24
    fused = torch.randn(b, t, 3 * h * d, generator=g).to(DEV)
    q = fused[..., : h * d].view(b, t, h, d).transpose(1, 2)
    k = fused[..., h * d : 2 * h * d].view(b, t, h, d).transpose(1, 2)
    v = torch.randn(b, h, t, 2 * d, generator=g).to(DEV)[..., ::2]  # last stride 2
    assert not q.is_contiguous() and v.stride(-1) == 2
    lens = torch.tensor([21, 9], device=DEV)
    views = [x.requires_grad_() for x in (q, k, v)]
    copies = [x.detach().contiguous().requires_grad_() for x in (q, k, v)]
    outs, grads = [], []
    for inputs in (views, copies):
        out = tiled_attention(*inputs, causal=True, key_lengths=lens)
        outs.append(out)
        grads.append(torch.autograd.grad(out, inputs, torch.ones_like(out)))
    assert torch.equal(outs[0], outs[1])
    for a, c in zip(grads[0], grads[1], strict=True):
        assert torch.equal(a, c)


def test_output_layout_is_a_transposed_btHD_buffer():
    q, k, v = make_qkv(2, 3, 3, 5, 7, 16)
    out = tiled_attention(q, k, v)
    assert out.transpose(1, 2).is_contiguous()  # the layer's reshape to (B, T, H*D) is free


def test_empty_sequences():
    q, k, v = make_qkv(2, 2, 1, 6, 0, 16)
    out, lse = tiled_attention_lse(q, k, v, causal=False)
    assert (out == 0).all() and (lse == float("-inf")).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert (dq == 0).all() and dk.shape == k.shape and dv.shape == v.shape
    q, k, v = make_qkv(2, 2, 1, 0, 5, 16)
    out, lse = tiled_attention_lse(q, k, v, causal=True)
    assert out.shape == (2, 2, 0, 16) and lse.shape == (2, 2, 0)
    q, k, v = make_qkv(0, 2, 2, 4, 4, 16)
    assert tiled_attention(q, k, v).shape == (0, 2, 4, 16)


def test_gradient_through_lse():
    q, k, v = make_qkv(2, 2, 1, 23, 31, 24, seed=9)
    lens = torch.tensor([31, 12], device=DEV)
    out, lse = tiled_attention_lse(q, k, v, causal=True, key_lengths=lens)
    w = torch.randn(lse.shape, generator=torch.Generator().manual_seed(2)).to(DEV)
    grads = torch.autograd.grad(out.sum() + (lse * w).sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ro, rl = attention_reference(q64, k64, v64, causal=True, key_lengths=lens)
    ref = torch.autograd.grad(ro.sum() + (rl * w.double()).sum(), (q64, k64, v64))
    for g, rg in zip(grads, ref, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_non_positive_scale(scale):
    """The forward kernel scales the row max of the raw scores (one FMA per score),
    which needs scale > 0: the launcher negates q for a negative scale and zeroes
    it for 0 (every visible key then gets the same weight)."""
    q, k, v = make_qkv(2, 2, 1, 21, 27, 16, seed=4)
    lens = torch.tensor([27, 9], device=DEV)
    out, lse = tiled_attention_lse(q, k, v, causal=True, key_lengths=lens, scale=scale)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attention_reference(q64, k64, v64, causal=True, key_lengths=lens, scale=scale)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=2e-5, rtol=2e-5)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")


# --------------------------------------------------------------------------- custom ops
def test_opcheck():
    q, k, v = make_qkv(1, 2, 1, 20, 24, 16)
    lens = torch.tensor([17], device=DEV)
    torch.library.opcheck(torch.ops.headwise.tiled_attention_fwd.default,
                          (q, k, v, lens, True, 0.25))


def test_fake_tensor_shapes_and_strides():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 9, 4, 40).transpose(1, 2)
        k = torch.empty(2, 11, 2, 40).transpose(1, 2)
        v = torch.empty(2, 11, 2, 24).transpose(1, 2)
        out, lse = torch.ops.headwise.tiled_attention_fwd(q, k, v, None, True, 0.1)
        assert out.shape == (2, 4, 9, 24) and out.dtype == q.dtype
        assert out.transpose(1, 2).is_contiguous()
        assert lse.shape == (2, 4, 9) and lse.dtype == torch.float32
        dq, dk, dv = torch.ops.headwise.tiled_attention_bwd(
            torch.empty_like(out), q, k, v, out, lse, None, None, True, 0.1
        )
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


def test_torch_compile_traces_the_custom_op():
    """fullgraph tracing through the op and its autograd formula (aot_eager: no
    code generation, so it stays quick on the CPU; inductor runs on the GPU)."""
    q, k, v = make_qkv(1, 2, 1, 20, 24, 16)
    lens = torch.tensor([19], device=DEV)

    def f(q, k, v):
        return (tiled_attention(q, k, v, causal=True, key_lengths=lens) ** 2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(q=torch.zeros(2, 3, 4)), ValueError, "q must be 4-D"),
        (dict(q=torch.zeros(1, 2, 4, 16, dtype=torch.float64)), TypeError, "float16, bfloat16"),
        (dict(k=torch.zeros(1, 3, 5, 16), v=torch.zeros(1, 3, 5, 16)), ValueError, "multiple"),
        (dict(v=torch.zeros(1, 1, 6, 16)), ValueError, "k and v"),
        (dict(k=torch.zeros(1, 1, 5, 8)), ValueError, "head_dim"),
        (dict(q=torch.zeros(1, 2, 4, 300), k=torch.zeros(1, 1, 5, 300)), ValueError, "[1, 256]"),
        (dict(key_lengths=torch.tensor([1.0])), TypeError, "integer"),
        (dict(key_lengths=torch.tensor([1, 2])), ValueError, "shape (1,)"),
        (dict(key_lengths=[3]), TypeError, "key_lengths"),
        (dict(causal=1), TypeError, "causal"),
        (dict(scale="x"), TypeError, "scale"),
    ],
)
def test_bad_input_raises(change, error, words):
    args = dict(q=torch.zeros(1, 2, 4, 16), k=torch.zeros(1, 1, 5, 16),
                v=torch.zeros(1, 1, 5, 16), causal=False, key_lengths=None, scale=None)
    args.update(change)
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")):
        tiled_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


# --------------------------------------------------------------------------- backend
def _call(device="cpu", **kw):
    base = dict(dtype=torch.float32, device=torch.device(device), head_dim=24, value_dim=24,
                n_heads=4, n_kv_heads=2, mask=MaskSpec(2, 5, 5, causal=True),
                need_weights=False, dropout_p=0.0, requires_grad=True)
    base.update(kw)
    return AttentionCall(**base)


def test_backend_reasons(monkeypatch):
    tb = TiledBackend()
    assert tb.name == "tiled" and tb.priority == 30
    bias = torch.zeros(2, 1, 1, 5)
    cases = {
        "weights": _call(need_weights=True),
        "dropout": _call(dropout_p=0.1),
        "key_lengths instead": _call(mask=MaskSpec(2, 5, 5, bias=bias)),
        "float64": _call(dtype=torch.float64),
        "257": _call(head_dim=257),
        "supports cuda": _call(device="meta"),
    }
    for words, call in cases.items():
        reason = tb.unsupported(call)
        assert reason is not None and words in reason, (words, reason)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tb.unsupported(_call()) is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in tb.unsupported(_call())
    monkeypatch.setattr("headwise.kernels.triton_available", lambda: False)
    assert "triton is not installed" in tb.unsupported(_call(device="cuda"))


def test_auto_considers_tiled_only_on_cuda_and_by_measurement():
    """On the CPU auto never picks it; on CUDA it is a timed candidate: sdpa while
    nothing is measured (here: no CUDA to time on), tiled once chosen for the class
    (pinned here; measured on a GPU, see tests/attention/test_dispatch.py)."""
    from headwise.attention import clear_dispatch_cache, explain_backend, pin_backend

    assert get_backend("auto", _call(device="cpu")).name != "tiled"
    if tiled_mod.INTERPRET:
        assert get_backend("tiled", _call(device="cpu")).name == "tiled"
    assert TiledBackend.timed_by_auto
    if CUDA:
        return  # auto would time the candidates on the device: tests/kernels gpu tests
    clear_dispatch_cache()
    try:
        choice = explain_backend(_call(device="cuda"))
        assert choice.backend == "sdpa" and "nothing measured" in choice.reason
        pin_backend("tiled", _call(device="cuda"))
        assert get_backend("auto", _call(device="cuda")).name == "tiled"
    finally:
        clear_dispatch_cache()


def test_layer_with_tiled_backend_matches_float64_reference():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, head_dim=24, n_kv_heads=2, backend="tiled", device=DEV)
    x = torch.randn(2, 13, 32, device=DEV, requires_grad=True)
    lens = torch.tensor([13, 6], device=DEV)
    out = layer(x, causal=True, key_lengths=lens)
    keys = torch.arange(13, device=DEV)
    allowed = (keys[None, :] <= keys[:, None])[None, None] & (
        keys[None, None, None, :] < lens[:, None, None, None]
    )
    want, _ = layer_reference(layer, x, allowed=allowed.expand(2, 4, 13, 13))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)
    # parameter gradients against the reference backend
    grads = torch.autograd.grad(out.sum(), [x, *layer.parameters()])
    layer.backend = "reference"
    ref = torch.autograd.grad(layer(x, causal=True, key_lengths=lens).sum(),
                              [x, *layer.parameters()])
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=5e-5)


def test_layer_decoding_with_kv_cache_matches_full_pass():
    """Tq = 1 against a growing cache: the bottom-right causal alignment."""
    torch.manual_seed(1)
    layer = MultiHeadAttention(32, 4, head_dim=40, n_kv_heads=1, backend="tiled", rope=True,
                               device=DEV)
    x = torch.randn(1, 12, 32, device=DEV)
    with torch.no_grad():
        full = layer(x, causal=True)
        cache = KVCache()
        steps = [layer(x[:, :9], causal=True, kv_cache=cache)]
        steps += [layer(x[:, i : i + 1], causal=True, kv_cache=cache) for i in range(9, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=2e-5)


# --------------------------------------------------------------------------- GPU
# Compilation, not running, is what the GPU tests spend their time on: the kernels
# compile once per (head dim, dtype, causal, key lengths or not, grouped or not)
# and config (~1 s each for fwd, dK/dV, dQ), but not per shape (batch, heads,
# lengths and the strides of these layouts are runtime values). So the cases share
# a few such variants and draw only their shapes at random, and every test but the
# autotuner's runs the fixed (first) config. The whole `pytest -m gpu tests/kernels`
# compiles ~35 kernels and takes well under a minute on an H100/H200.

# (head_dim, dtype, causal, key_lengths?, group = H // Hkv)
GPU_VARIANTS = [
    (128, torch.bfloat16, True, True, 4),  # the target head dim, every mask, grouped
    (64, torch.float16, False, False, 1),  # the other common head dim, no mask
    (80, torch.bfloat16, True, False, 2),  # padded head dim (80 -> 128 columns)
    (256, torch.float16, True, True, 1),  # the largest head dim (its own configs)
]


@pytest.fixture
def fixed_config(monkeypatch):
    """The first config of each list, no autotuning: one compile per variant."""
    monkeypatch.setenv("HEADWISE_TILED_AUTOTUNE", "0")


def _gpu_case(rng: random.Random, variant: tuple):
    """Random shape for one kernel variant: lengths from 1 (decode) to 1500, Tq
    above, equal to and below Tk, key lengths 0, 1, partial and full."""
    d, dtype, causal, has_lens, group = variant
    hkv = rng.choice([1, 2]) if group > 1 else rng.choice([1, 2, 3])
    h = hkv * group
    tq = rng.choice([1, 17, 128, 200, 511, 1024])
    tk = rng.choice([tq, tq, 64, 300, 777, 1500])
    b = rng.choice([1, 2, 3])
    lens = None
    if has_lens:
        lens = torch.tensor([rng.choice([0, 1, tk // 3, tk]) for _ in range(b)])
    return b, h, hkv, tq, tk, d, dtype, causal, lens


def _check_gpu_case(b, h, hkv, tq, tk, d, dtype, causal, lens, seed):
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dtype=dtype, seed=seed, device="cuda")
    lens = None if lens is None else lens.cuda()
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=causal, key_lengths=lens
    )
    qt, kt, vt = (x.detach().clone().requires_grad_() for x in (q, k, v))
    t_out, _ = attention_reference(qt, kt, vt, causal=causal, key_lengths=lens, dtype=dtype)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    t_grads = torch.autograd.grad(t_out, (qt, kt, vt), dout)
    label = f"b={b} h={h} hkv={hkv} tq={tq} tk={tk} d={d} {dtype} causal={causal} lens={lens}"
    empty = ~torch.isfinite(ref_lse)
    assert (out[empty] == 0).all() and (lse[empty] == float("-inf")).all(), label
    finite = ~empty
    torch.testing.assert_close(lse[finite].double(), ref_lse[finite], atol=1e-3, rtol=1e-3)
    for name, ours, theirs, ref in zip(
        ("out", "dq", "dk", "dv"), (out, *grads), (t_out, *t_grads), (ref_out, *ref_grads),
        strict=True,
    ):
        assert torch.isfinite(ours).all(), (name, label)
        e_ours, e_torch = _rms(ours, ref), _rms(theirs, ref)
        assert e_ours <= 2.0 * e_torch + 1e-6, (name, label, e_ours, e_torch)


# (B, H, Hkv, Tq, Tk, D, dtype, causal, key_lengths): shapes that must be there,
# before the random ones; each in one of GPU_VARIANTS (no extra compilation)
GPU_FIXED_CASES = [
    (2, 8, 2, 333, 1024, 128, torch.bfloat16, True, torch.tensor([1024, 500])),  # Tq < Tk
    (3, 4, 1, 1, 1500, 128, torch.bfloat16, True, torch.tensor([1500, 0, 7])),  # decode
    (2, 4, 4, 1000, 1000, 64, torch.float16, False, None),  # square, 16k-style tiles
    (1, 4, 2, 200, 77, 80, torch.bfloat16, True, None),  # Tq > Tk
    (2, 2, 2, 511, 333, 256, torch.float16, True, torch.tensor([300, 333])),
]


def _variant_of(case) -> int:
    b, h, hkv, tq, tk, d, dtype, causal, lens = case
    return GPU_VARIANTS.index((d, dtype, causal, lens is not None, h // hkv))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", range(len(GPU_VARIANTS)), ids=lambda i: f"variant{i}")
def test_gpu_random_shapes_half_precision(fixed_config, variant):
    """The GPU_FIXED_CASES of one of GPU_VARIANTS, then HEADWISE_GPU_CASES (default 8,
    shared out over the variants) random shapes of it."""
    rng = random.Random(variant)
    n_random = int(os.environ.get("HEADWISE_GPU_CASES", "8"))
    n_mine = len(range(variant, max(0, n_random), len(GPU_VARIANTS)))
    cases = [c for c in GPU_FIXED_CASES if _variant_of(c) == variant]
    cases += [_gpu_case(rng, GPU_VARIANTS[variant]) for _ in range(n_mine)]
    for seed, case in enumerate(cases):
        _check_gpu_case(*case, seed=seed)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["desc", "ws"])
def test_gpu_forward_variants(fixed_config, variant, monkeypatch):
    """The bench-only forward variants (device-side descriptors; and a warp-specialised
    key loop, which Triton documents for Blackwell only: skipped, with the reason, if
    it does not build here) on the GPU, non-causal."""
    monkeypatch.setenv("HEADWISE_TILED_FWD", variant)
    probe = make_qkv(1, 2, 2, 64, 64, 128, dtype=torch.bfloat16, device="cuda")
    if tiled_mod._forward_variant(False, *probe) != variant:
        pytest.skip("no tensor descriptors on this GPU (needs Hopper or later)")
    cases = [(2, 8, 2, 333, 1024, 128, torch.bfloat16, False, torch.tensor([1024, 500])),
             (2, 4, 4, 1000, 1000, 64, torch.float16, False, None),
             (1, 4, 2, 200, 77, 80, torch.bfloat16, False, None)]
    for seed, case in enumerate(cases):
        try:
            _check_gpu_case(*case, seed=seed)
        except AssertionError:
            raise
        except Exception as e:
            if variant != "ws":
                raise
            pytest.skip(f"the warp-specialised loop does not build here: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300] if str(e) else ''}")


@pytest.mark.gpu
def test_gpu_persistent_dkdv(fixed_config, monkeypatch):
    """The persistent dK/dV pass (HEADWISE_TILED_DKDV=persistent, a bench candidate)."""
    monkeypatch.setenv("HEADWISE_TILED_DKDV", "persistent")
    for seed, case in enumerate([c for c in GPU_FIXED_CASES if c[5] in (64, 128)]):
        _check_gpu_case(*case, seed=seed)


@pytest.mark.gpu
def test_gpu_autotuned_configs(monkeypatch):
    """The autotuner's path: a grid per config, the best one runs. Only the first
    two configs of each list (one of them already compiled by the fixed-config
    test), unless HEADWISE_GPU_AUTOTUNE_ALL=1: the benchmark compiles them all."""
    monkeypatch.setenv("HEADWISE_TILED_AUTOTUNE", "1")
    monkeypatch.setattr(tiled_mod, "_TUNERS", {})
    if os.environ.get("HEADWISE_GPU_AUTOTUNE_ALL", "0") != "1":
        for name in ("_FWD_CONFIGS", "_DKDV_CONFIGS", "_DQ_CONFIGS"):
            lists = getattr(tiled_mod, name)
            monkeypatch.setattr(tiled_mod, name, {c: cfgs[:2] for c, cfgs in lists.items()})
    _check_gpu_case(2, 8, 2, 1000, 1000, 128, torch.bfloat16, True,
                    torch.tensor([1000, 700]), seed=0)
    tma = torch.cuda.get_device_capability()[0] >= 9 and tiled_mod.TensorDescriptor is not None
    fused = tiled_mod._fuse_dq()
    want = {("fwd", "medium", tma), ("dkdv", "medium", tma)} | (set() if fused else {("dq", "medium", tma)})
    assert set(tiled_mod._TUNERS) == want


@pytest.mark.gpu
def test_gpu_pointer_loads_and_fused_backward(fixed_config, monkeypatch):
    """The other loader and backward scheme, on the first GPU variant's shapes."""
    monkeypatch.setenv("HEADWISE_TILED_TMA", "0")
    monkeypatch.setenv("HEADWISE_TILED_BWD", "fused")
    for seed, case in enumerate(GPU_FIXED_CASES[:2]):
        _check_gpu_case(*case, seed=seed)


@pytest.mark.gpu
def test_gpu_deterministic_mode_repeats_bit_for_bit(fixed_config, monkeypatch):
    """Under torch.use_deterministic_algorithms the backward takes the split path
    even when the fused one is asked for: two runs give identical gradients (the
    atomic dQ sums need not)."""
    monkeypatch.setenv("HEADWISE_TILED_BWD", "fused")
    # GPU_VARIANTS[0] (D=128, bf16, causal, key lengths, groups of 4): compiled already
    q, k, v = make_qkv(2, 8, 2, 700, 700, 128, dtype=torch.bfloat16, device="cuda", seed=4)
    lens = torch.tensor([700, 350], device="cuda")
    dout = torch.randn(2, 8, 700, 128, device="cuda", dtype=torch.bfloat16)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [torch.autograd.grad(tiled_attention(q, k, v, causal=True, key_lengths=lens),
                                    (q, k, v), dout) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_fp32(fixed_config, tf32):
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        q, k, v = make_qkv(2, 4, 2, 300, 333, 96, dtype=torch.float32, device="cuda")
        lens = torch.tensor([333, 100], device="cuda")
        (out, _, grads), (ref_out, _, ref_grads) = run_both(q, k, v, causal=True,
                                                            key_lengths=lens)
    finally:
        torch.set_float32_matmul_precision(precision)
    tol = 1e-2 if tf32 else 5e-5
    torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=4 * tol, rtol=4 * tol)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor(fixed_config):
    """Inductor around the custom op (in GPU_VARIANTS[0]: no kernel compiles)."""
    q, k, v = make_qkv(2, 8, 2, 256, 256, 128, dtype=torch.bfloat16, device="cuda")
    lens = torch.tensor([256, 100], device="cuda")

    def f(q, k, v):
        o = tiled_attention(q, k, v, causal=True, key_lengths=lens)
        return F.gelu(o.float()).sum()

    compiled = torch.compile(f, fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_layer_auto_is_measured(fixed_config):
    """auto times sdpa and tiled for the class and runs the faster; either is accurate."""
    from headwise.attention import clear_dispatch_cache, explain_backend

    layer = MultiHeadAttention(256, 4, n_kv_heads=2, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(2, 100, 256, device="cuda", dtype=torch.bfloat16)
    call = AttentionCall(dtype=torch.bfloat16, device=x.device, head_dim=64, value_dim=64,
                         n_heads=4, n_kv_heads=2, mask=MaskSpec(2, 100, 100, causal=True),
                         need_weights=False, dropout_p=0.0, requires_grad=False)
    clear_dispatch_cache()
    choice = explain_backend(call)
    assert choice.source == "measured" and set(choice.times_ms) == {"sdpa", "tiled"}, choice
    assert get_backend("auto", call).name == choice.backend
    keys = torch.arange(100, device="cuda")
    allowed = (keys[None, :] <= keys[:, None]).expand(2, 4, 100, 100)
    want, _ = layer_reference(layer, x, allowed=allowed)
    errors = {}
    for backend in ("auto", "reference"):  # the reference backend computes in bf16
        layer.backend = backend
        errors[backend] = _rms(layer(x, causal=True), want)
    assert errors["auto"] <= 2 * errors["reference"] + 1e-6, errors
