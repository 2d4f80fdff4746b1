"""The tiled Triton attention kernels (headwise.kernels.tiled) and the ``tiled``
backend, against a float64 reference written here from the definition.

Without CUDA the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set by tests/conftest.py) on small shapes. The kernel variants and the launcher's
paths are in test_tiled_variants.py, the tests marked ``gpu`` in test_tiled_gpu.py.
"""

from __future__ import annotations

import random

import pytest
import torch
from reference_math import attention_reference, layer_reference
from tiled_testing import CUDA, DEV, make_qkv, rms, run_both

from headwise.attention import MultiHeadAttention
from headwise.attention.backends import AttentionCall, get_backend
from headwise.attention.backends.tiled import TiledBackend
from headwise.attention.kv_cache import KVCache
from headwise.attention.masks import MaskSpec
from headwise.kernels import tiled_attention, tiled_attention_lse, tiled_launch

pytestmark = pytest.mark.skipif(
    not CUDA and not tiled_launch.INTERPRET,
    reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)",
)


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
MODES = {"ptr-split": (False, "split"), "ptr-fused": (False, "fused"), "tma-split": (True, "split")}


@pytest.fixture(params=list(MODES))
def kernel_mode(request, use_options):
    tma, bwd = MODES[request.param]
    if tma and tiled_launch.TensorDescriptor is None:
        pytest.skip("this Triton has no tensor descriptors")
    if not tiled_launch.INTERPRET and tma:
        tma = None  # on CUDA the launcher decides from the GPU and the layouts (auto)
    use_options(tma=tma, bwd=bwd)
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
        assert rms(ours, ref) <= factor * rms(theirs, ref) + 1e-6, name


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
    if tiled_launch.INTERPRET:
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
