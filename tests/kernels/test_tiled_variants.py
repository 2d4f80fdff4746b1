"""The tiled kernels' options and variants (headwise.kernels.tiled_launch): the backward
schemes, the forward with device-side descriptors, the persistent dK/dV pass, every
GPU tile shape and the launcher's CUDA path, all run here in the Triton interpreter
against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from reference_math import attention_reference
from tiled_testing import CUDA, DEV, make_qkv, run_both

from headwise.kernels import (
    TiledOptions,
    get_tiled_options,
    runtime,
    tiled_attention_lse,
    tiled_configs,
    tiled_launch,
)

pytestmark = pytest.mark.skipif(
    not CUDA and not tiled_launch.INTERPRET,
    reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)",
)


@pytest.mark.parametrize("env, deterministic, fused", [
    (None, False, False), ("split", False, False), ("fused", False, True), ("fused", True, False),
])
def test_backward_scheme_choice(env, deterministic, fused):
    options = TiledOptions() if env is None else TiledOptions(bwd=env)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        assert tiled_launch.fuse_dq(options) is fused
    finally:
        torch.use_deterministic_algorithms(was)


def test_backward_scheme_rejects_unknown_names():
    with pytest.raises(ValueError, match="HEADWISE_TILED_BWD must be 'fused' or 'split', got 'atomic'"):
        TiledOptions.from_env({"HEADWISE_TILED_BWD": "atomic"})


# The forward with device-side tensor descriptors (TiledOptions(fwd="desc")) and a
# warp-specialised key loop (ws): bench-only candidates, non-causal only.
FWD_VARIANT_CASES = [
    pytest.param(2, 4, 2, 37, 53, 24, 24, [53, 0], id="d24-gqa-len0"),
    pytest.param(1, 2, 2, 40, 40, 64, 64, None, id="d64-plain"),
    pytest.param(2, 2, 1, 70, 33, 40, 40, [20, 33], id="d40-mqa-Tq>Tk-lens"),
    pytest.param(1, 4, 1, 33, 47, 16, 32, [5], id="d16-dv32-lens"),
]


@pytest.mark.parametrize("variant", ["desc", "ws"])
@pytest.mark.parametrize("b,h,hkv,tq,tk,d,dv,lens", FWD_VARIANT_CASES)
def test_forward_variants_match_float64(b, h, hkv, tq, tk, d, dv, lens, variant, use_options):
    use_options(fwd=variant)
    dtype = torch.float32 if tiled_launch.INTERPRET else torch.bfloat16  # TMA needs 16 bits on CUDA
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dv, dtype=dtype)
    if tiled_launch.INTERPRET:
        options = get_tiled_options()
        assert tiled_launch.forward_variant(options, False, q, k, v) == variant
        assert tiled_launch.forward_variant(options, True, q, k, v) is None  # causal: the default kernel
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
def test_persistent_dkdv_matches_float64(b, h, hkv, tq, tk, d, dv, causal, lens, bwd, use_options):
    """TiledOptions(dkdv="persistent"): three programs here, each looping over several
    of the key tiles (16 keys each in the interpreter)."""
    use_options(dkdv="persistent", bwd=bwd)
    if tiled_launch.INTERPRET:
        assert tiled_launch.persistent_dkdv(get_tiled_options(), torch.device("cpu")) == 3
        assert b * hkv * -(-tk // tiled_configs.INTERPRET_BLOCKS["dkdv"][1]) > 3
    q, k, v = make_qkv(b, h, hkv, tq, tk, d, dv, seed=4)
    key_lengths = None if lens is None else torch.tensor(lens, device=DEV)
    (out, lse, grads), (ref_out, ref_lse, ref_grads) = run_both(
        q, k, v, causal=causal, key_lengths=key_lengths)
    for name, g, rg in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5, msg=f"d{name}")


def test_persistent_dkdv_names():
    assert tiled_launch.persistent_dkdv(TiledOptions.from_env({}), torch.device("cpu")) is None
    with pytest.raises(ValueError, match="HEADWISE_TILED_DKDV must be 'default' or 'persistent'"):
        TiledOptions.from_env({"HEADWISE_TILED_DKDV": "always"})


def test_forward_variant_names():
    q = torch.zeros(1, 1, 4, 16)
    assert tiled_launch.forward_variant(TiledOptions.from_env({}), False, q, q, q) is None
    with pytest.raises(ValueError, match="HEADWISE_TILED_FWD must be 'default', 'desc' or 'ws'"):
        TiledOptions.from_env({"HEADWISE_TILED_FWD": "fast"})
    # no TMA at all: no descriptor variant
    options = TiledOptions.from_env({"HEADWISE_TILED_FWD": "desc", "HEADWISE_TILED_TMA": "0"})
    assert tiled_launch.forward_variant(options, False, q, q, q) is None


def _block_combos():
    """Tile shapes of the GPU configs (fwd, dkdv, dq), run here in the interpreter."""
    combos = []
    lists = (tiled_configs.FWD_CONFIGS, tiled_configs.DKDV_CONFIGS, tiled_configs.DQ_CONFIGS)
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
    if not tiled_launch.INTERPRET:
        pytest.skip("the interpreter's tile shapes are patched; on CUDA the configs run")
    for kind, kind_blocks in zip(("fwd", "dkdv", "dq"), blocks, strict=True):
        monkeypatch.setitem(tiled_configs.INTERPRET_BLOCKS, kind, kind_blocks)
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
def test_cuda_launcher_in_the_interpreter(autotune, bwd, monkeypatch, use_options,
                                         fresh_autotune_cache):
    """The launcher's CUDA path (fixed config with fallback, or triton.autotune with
    a grid per config) driving the interpreted kernels; the autotuner's timing is
    replaced, since the interpreter has no GPU to time."""
    if not tiled_launch.INTERPRET:
        pytest.skip("on CUDA the gpu tests run this path for real")
    monkeypatch.setattr(tiled_launch, "INTERPRET", False)
    use_options(autotune=autotune == "1", bwd=bwd)
    timings = iter(range(1, 1000))
    real_tuned = tiled_launch.tuned

    def fake_bench(kernel_call, quantiles=None):
        kernel_call()
        t = float(next(timings))
        return [t, t, t]

    def tuned(kind, dim_class, tma):
        tuner = real_tuned(kind, dim_class, tma)
        tuner._do_bench = fake_bench  # Triton-internal: the first config wins
        return tuner

    monkeypatch.setattr(tiled_launch, "tuned", tuned)
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
        assert {key[0] for key in runtime.FIXED} == kinds
        assert runtime.FIXED[next(iter(runtime.FIXED))] is tiled_configs.FWD_CONFIGS[
            "small"][-1]
    else:
        assert set(runtime.TUNERS) == {(kind, "small", False) for kind in kinds}
