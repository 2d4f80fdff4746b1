"""The tiled kernels on a CUDA GPU (tests marked ``gpu``; skipped without one): random
shapes and every option, held to at most twice the error of PyTorch's own attention
math in the same dtype (bash bench/gpu_check.sh runs them)."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from reference_math import attention_reference, layer_reference
from tiled_testing import make_qkv, rms, run_both

from headwise.attention import MultiHeadAttention
from headwise.attention.backends import AttentionCall, get_backend
from headwise.attention.masks import MaskSpec
from headwise.kernels import get_tiled_options, runtime, tiled_attention, tiled_configs, tiled_launch

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
def fixed_config(use_options):
    """The first config of each list, no autotuning: one compile per variant."""
    use_options(autotune=False)


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
        e_ours, e_torch = rms(ours, ref), rms(theirs, ref)
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
def test_gpu_forward_variants(fixed_config, variant, use_options):
    """The bench-only forward variants (device-side descriptors; and a warp-specialised
    key loop, which Triton documents for Blackwell only: skipped, with the reason, if
    it does not build here) on the GPU, non-causal."""
    use_options(fwd=variant)
    probe = make_qkv(1, 2, 2, 64, 64, 128, dtype=torch.bfloat16, device="cuda")
    if tiled_launch.forward_variant(get_tiled_options(), False, *probe) != variant:
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
def test_gpu_persistent_dkdv(fixed_config, use_options):
    """The persistent dK/dV pass (TiledOptions(dkdv="persistent"), a bench candidate)."""
    use_options(dkdv="persistent")
    for seed, case in enumerate([c for c in GPU_FIXED_CASES if c[5] in (64, 128)]):
        _check_gpu_case(*case, seed=seed)


@pytest.mark.gpu
def test_gpu_autotuned_configs(monkeypatch, use_options, fresh_autotune_cache):
    """The autotuner's path: a grid per config, the best one runs. Only the first
    two configs of each list (one of them already compiled by the fixed-config
    test), unless HEADWISE_GPU_AUTOTUNE_ALL=1: the benchmark compiles them all."""
    use_options(autotune=True)
    if os.environ.get("HEADWISE_GPU_AUTOTUNE_ALL", "0") != "1":
        for kind in ("fwd", "dkdv", "dq"):
            lists = tiled_configs.CONFIGS[kind]
            monkeypatch.setitem(tiled_configs.CONFIGS, kind, {c: cfgs[:2] for c, cfgs in lists.items()})
    _check_gpu_case(2, 8, 2, 1000, 1000, 128, torch.bfloat16, True,
                    torch.tensor([1000, 700]), seed=0)
    tma = torch.cuda.get_device_capability()[0] >= 9 and tiled_launch.TensorDescriptor is not None
    fused = tiled_launch.fuse_dq(get_tiled_options())
    want = {("fwd", "medium", tma), ("dkdv", "medium", tma)} | (set() if fused else {("dq", "medium", tma)})
    assert set(runtime.TUNERS) == want


@pytest.mark.gpu
def test_gpu_pointer_loads_and_fused_backward(fixed_config, use_options):
    """The other loader and backward scheme, on the first GPU variant's shapes."""
    use_options(tma=False, bwd="fused")
    for seed, case in enumerate(GPU_FIXED_CASES[:2]):
        _check_gpu_case(*case, seed=seed)


@pytest.mark.gpu
def test_gpu_deterministic_mode_repeats_bit_for_bit(fixed_config, use_options):
    """Under torch.use_deterministic_algorithms the backward takes the split path
    even when the fused one is asked for: two runs give identical gradients (the
    atomic dQ sums need not)."""
    use_options(bwd="fused")
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
        errors[backend] = rms(layer(x, causal=True), want)
    assert errors["auto"] <= 2 * errors["reference"] + 1e-6, errors
