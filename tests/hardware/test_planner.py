"""The tile planner: quantisation numbers on hand-computed examples, the textbook
K-slice example, the attention GEMM list, recommendations and the CLI."""

import json
from dataclasses import dataclass

import pytest

from headwise.app import plan_command as C
from headwise.cli import main
from headwise.hardware import profiles as P
from headwise.hardware.planner import (
    AttentionConfig,
    DimAlignment,
    align_dim,
    k_slice_waste,
    plan_attention,
    plan_gemm,
    recommend,
    textbook_examples,
    tile_efficiency,
    wave_efficiency,
)
from headwise.hardware.profiles import HardwareProfile, Tile, get_profile

T128 = Tile(128, 128, 64)


def toy_profile(sms=4, peak=1e12, bw=1e11, tiles=(T128,), overhead=0.0) -> HardwareProfile:
    """A chip with round numbers so the bounds can be checked by hand."""
    return HardwareProfile(
        key="toy",
        name="toy",
        sm_count=sms,
        peak_flops={"bf16": peak},
        mem_bandwidth=bw,
        align_bytes=16,
        mma_k_bytes=32,
        l2_bytes=0,
        tiles={"bf16": tuple(tiles)},
        launch_overhead_s=overhead,
    )


# ------------------------------------------------------------------ quantisation
def test_tile_efficiency_hand_computed():
    assert tile_efficiency(1024, 1024, 1024, T128) == 1.0
    # M = 1000 needs 8 row tiles of 128 = 1024 rows
    assert tile_efficiency(1000, 1024, 1024, T128) == pytest.approx(1000 / 1024)
    # K = 10 pads to one 64-deep K step
    assert tile_efficiency(128, 128, 10, T128) == pytest.approx(10 / 64)
    assert tile_efficiency(1000, 1000, 1000, T128) == pytest.approx(1000**3 / 1024**3)


def test_wave_efficiency_hand_computed():
    # 8x8 = 64 tiles on 132 SMs: one wave, 64 of 132 slots busy
    assert wave_efficiency(1024, 1024, T128, 132) == (pytest.approx(64 / 132), 64, 1)
    # 16x16 = 256 tiles: two waves of 132
    assert wave_efficiency(2048, 2048, T128, 132) == (pytest.approx(256 / 264), 256, 2)
    # M = 1000 still needs 8 row tiles; batch multiplies the tiles
    assert wave_efficiency(1000, 1024, T128, 132, batch=3) == (pytest.approx(192 / 264), 192, 2)
    assert wave_efficiency(512, 512, T128, 16) == (1.0, 16, 1)


def test_alignment_padding():
    assert align_dim(64, 8) == DimAlignment(64, True, 64)
    assert align_dim(10, 8) == DimAlignment(10, False, 16)
    assert align_dim(300, 8).padded == 304
    g = plan_gemm("x", 1000, 900, 10, get_profile("h100"), "int8")
    assert (g.align["m"].aligned, g.align["n"].padded, g.align["k"].padded) == (False, 912, 16)
    assert not g.aligned


def test_plan_gemm_compute_bound_by_hand():
    p = toy_profile()
    g = plan_gemm("g", 256, 256, 64, p, "bf16")
    flops = 2 * 256 * 256 * 64
    nbytes = (256 * 64 + 64 * 256 + 256 * 256) * 2
    assert (g.flops, g.bytes) == (flops, nbytes)
    assert g.intensity == pytest.approx(flops / nbytes) and g.ridge == pytest.approx(10.0)
    assert (g.tiles, g.waves, g.tile_eff, g.wave_eff) == (4, 1, 1.0, 1.0)
    assert g.bound == "compute" and g.bound_s == pytest.approx(flops / 1e12)


def test_plan_gemm_memory_bound_and_quantised():
    p = toy_profile(bw=1e9)  # starved of bandwidth
    g = plan_gemm("g", 1000, 128, 128, p, "bf16")
    nbytes = (1000 * 128 + 128 * 128 + 1000 * 128) * 2
    assert g.bound == "memory" and g.bound_s == pytest.approx(nbytes / 1e9)
    fast = toy_profile(bw=1e15)
    g = plan_gemm("g", 1000, 128, 128, fast, "bf16")
    # 8 tiles on 4 SMs = 2 full waves; tile_eff 1000/1024
    te = 1000 / 1024
    assert g.tile_eff == pytest.approx(te) and g.wave_eff == 1.0
    assert g.bound == "compute"
    assert g.bound_s == pytest.approx(2 * 1000 * 128 * 128 / (1e12 * te))


def test_plan_gemm_picks_the_tile_minimising_the_bound():
    small = Tile(64, 64, 64)
    p = toy_profile(bw=1e15, tiles=(T128, small))
    g = plan_gemm("g", 64, 64, 64, p, "bf16")  # a 128 tile is 3/4 padding
    assert g.tile == small and g.tile_eff == 1.0
    assert g.candidates[str(T128)] > g.candidates[str(small)]
    # ties keep the larger (earlier) tile
    g = plan_gemm("g", 512, 512, 64, toy_profile(sms=1, bw=1e15, tiles=(T128, small)), "bf16")
    assert g.tile == T128


def test_launch_overhead_counts_per_launch():
    p = toy_profile(overhead=1e-5)
    g = plan_gemm("g", 128, 128, 64, p, "bf16", launches=7)
    assert g.time_s == pytest.approx(7 * (g.bound_s + 1e-5))


# ------------------------------------------------------------------ textbook
def test_textbook_k_slice_waste():
    w = k_slice_waste(10, "bf16")  # 10 bf16 = 20 bytes of a 32-byte slice of 16
    assert (w.elems_per_slice, w.used_bytes, w.padded_bytes, w.padded_elems) == (16, 20, 32, 16)
    assert w.wasted_fraction == pytest.approx(0.375)
    assert (w.tile_bytes, w.wasted_tile_bytes) == (64 * 32, 64 * 12)
    w = k_slice_waste(20, "int8")  # 20 int8 = 20 bytes of a 32-byte slice of 32
    assert (w.elems_per_slice, w.used_bytes, w.padded_bytes) == (32, 20, 32)
    assert w.wasted_fraction == pytest.approx(0.375)
    w = k_slice_waste(20, "bf16")  # 40 bytes: two slices, 24 bytes padding
    assert (w.slices, w.padded_bytes, w.wasted_fraction) == (2, 64, pytest.approx(0.375))
    assert k_slice_waste(10, "int8").wasted_fraction == pytest.approx(22 / 32)
    assert k_slice_waste(64, "bf16").wasted_fraction == 0.0
    assert [(e.head_dim, e.dtype) for e in textbook_examples()][:2] == [(10, "bf16"), (20, "int8")]
    with pytest.raises(ValueError, match="head_dim"):
        k_slice_waste(0, "bf16")
    with pytest.raises(ValueError, match="dtype"):
        k_slice_waste(10, "fp64")


# ------------------------------------------------------------------ attention layer
def test_attention_gemm_shapes_gqa():
    cfg = AttentionConfig(d_model=512, n_heads=8, head_dim=64, n_kv_heads=2)
    lp = plan_attention(cfg, batch=2, seq=128, profile=get_profile("a100"), dtype="bf16")
    shapes = {g.name: (g.m, g.n, g.k, g.batch, g.launches) for g in [*lp.gemms, lp.per_head]}
    assert shapes == {
        "qkv": (256, (8 + 2 * 2) * 64, 512, 1, 1),
        "qk": (128, 128, 64, 16, 1),
        "pv": (128, 64, 128, 16, 1),
        "out": (256, 512, 512, 1, 1),
        "per_head": (256, 64, 512, 1, 8 + 2 * 2),
    }
    assert lp.layer_time_s == pytest.approx(sum(g.time_s for g in lp.gemms))
    assert lp.naive_time_s > lp.layer_time_s  # 12 small launches vs one fused GEMM
    assert lp.waste == 0.0


def test_small_heads_waste_and_model_time():
    cfg = AttentionConfig(d_model=300, n_heads=30, head_dim=10, n_layers=4)
    lp = plan_attention(cfg, batch=8, seq=512, profile=get_profile("h100"), dtype="bf16")
    qk = lp.gemms[1]
    # K = 10 bf16 pads to the 16-element MMA K-slice: the textbook 37.5 %
    assert qk.tile.bk == 16 and qk.tile_eff == pytest.approx(10 / 16)
    assert 0.2 < lp.waste < 0.6
    assert lp.model_time_s == pytest.approx(4 * lp.layer_time_s)


@pytest.mark.parametrize(
    "cfg,gpu,dtype",
    [
        (AttentionConfig(300, 30, 10), "a100", "bf16"),
        (AttentionConfig(768, 12), "h100", "bf16"),
        (AttentionConfig(1000, 20, 50, 4), "l4", "int8"),
    ],
)
def test_recommendations_never_worse(cfg, gpu, dtype):
    base, recs = recommend(cfg, 4, 512, get_profile(gpu), dtype, top=50)
    assert recs, "expected at least one nearby layout"
    prof = get_profile(gpu)
    for r in recs:
        assert r.layer_time_s <= base.layer_time_s * (1 + 1e-12)
        assert r.waste <= base.waste + 1e-12
        assert r.n_heads % r.n_kv_heads == 0
        assert r.head_dim % prof.align_elems(dtype) == 0
        assert abs(r.width - cfg.n_heads * cfg.head_dim) <= 0.125 * cfg.n_heads * cfg.head_dim
        assert (r.n_heads, r.head_dim, r.n_kv_heads) != (cfg.n_heads, cfg.head_dim, cfg.n_kv_heads)
    assert [r.layer_time_s for r in recs] == sorted(r.layer_time_s for r in recs)


def test_recommendations_fix_misaligned_heads():
    base, recs = recommend(AttentionConfig(300, 30, 10), 8, 512, get_profile("a100"), "bf16")
    assert recs[0].head_dim % 8 == 0 and recs[0].waste < base.waste


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionConfig(768, 12, None, 5)
    with pytest.raises(ValueError, match=r"n_heads \(7\) must divide d_model \(768\)"):
        AttentionConfig(768, 7)
    with pytest.raises(ValueError, match="seq must be a positive int, got 0"):
        plan_attention(AttentionConfig(64, 2), 1, 0, get_profile("h100"), "bf16")
    with pytest.raises(ValueError, match=r"fp8.*a100"):
        plan_attention(AttentionConfig(64, 2), 1, 8, get_profile("a100"), "fp8")
    with pytest.raises(ValueError, match="tolerance"):
        recommend(AttentionConfig(64, 2), 1, 8, get_profile("h100"), "bf16", tolerance=2)


# ------------------------------------------------------------------ CLI
def test_preset_shape_and_unknown_preset():
    cfg = C.resolve_preset("gpt2-small")
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers) == (768, 12, 12)
    with pytest.raises(ValueError, match=r"preset must be one of .*gpt2-small.*'nope'"):
        C.resolve_preset("nope")


def test_preset_from_headwise_models_when_importable():
    pytest.importorskip("headwise.models")
    cfg = C.resolve_preset("gpt2-small")
    assert (cfg.d_model, cfg.n_heads) == (768, 12)


def test_cli_prints_table(capsys):
    rc = main(["plan", "--preset", "gpt2-small", "--gpu", "h100", "--dtype", "bf16",
               "--seq", "2048", "--explain"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("qkv", "2304", "per_head", "36x", "recommendations", "37.5%", "H100"):
        assert word in out


@pytest.mark.parametrize("seq", ["2048", "99999999999"])
def test_cli_table_columns_stay_apart_for_any_size(capsys, seq):
    # the columns were fixed widths: at --seq 99999999999 the count ran into M ("199999999999")
    assert main(["plan", "--preset", "tiny", "--seq", seq]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("GEMM"))
    header = lines[head]
    rows = [line for line in lines[head + 2:head + 6]] + [
        line for line in lines if line.startswith("per_head")]
    assert [r.split()[0] for r in rows] == ["qkv", "qk", "pv", "out", "per_head"]
    for row in rows:
        cells = row.split()
        assert cells[2] == seq  # M, its own cell
        assert len(row) == len(header)  # the right-aligned last column ends with its header
    rec_head = next(i for i, line in enumerate(lines) if line.strip().startswith("n_heads"))
    given = lines[rec_head + 1]
    assert given.split()[:4] == ["4", "32", "4", "128"] and given.endswith("(given)")


def test_cli_json_parses(capsys):
    rc = main(["plan", "--d-model", "768", "--n-heads", "12", "--layers", "12", "--gpu", "a100",
               "--batch", "2", "--seq", "256", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    g = {x["name"]: x for x in data["plan"]["gemms"]}
    assert (g["qkv"]["m"], g["qkv"]["n"], g["qkv"]["k"]) == (512, 2304, 768)
    assert g["qk"]["batch"] == 24 and data["plan"]["config"]["n_layers"] == 12
    assert data["profile"]["key"] == "a100"
    assert data["textbook"][0]["wasted_fraction"] == pytest.approx(0.375)
    assert isinstance(data["recommendations"], list)


def test_cli_uses_headwise_models_when_present(capsys, monkeypatch):
    @dataclass
    class Cfg:
        d_model: int = 640
        n_heads: int = 10
        head_dim: int | None = None
        n_kv_heads: int | None = 5
        n_layers: int = 3

    monkeypatch.setattr(C, "get_preset", lambda name: Cfg())
    assert main(["plan", "--preset", "anything", "--json", "--top", "0"]) == 0
    cfg = json.loads(capsys.readouterr().out)["plan"]["config"]
    assert cfg == {"d_model": 640, "n_heads": 10, "head_dim": 64, "n_kv_heads": 5, "n_layers": 3}


def test_cli_cpu_uses_injected_measurement(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(
        P, "measure_cpu", lambda: {"fp32_flops": 1e11, "bandwidth": 1e10, "launch_overhead_s": 1e-6}
    )
    assert main(["plan", "--d-model", "256", "--n-heads", "4", "--gpu", "cpu", "--seq", "64"]) == 0
    out = capsys.readouterr().out
    assert "fp32" in out and "100.0 GFLOP/s" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--d-model", "768", "--n-heads", "12", "--gpu", "tpu"], "tpu"),
        (["--d-model", "768", "--n-heads", "12", "--dtype", "fp64"], "fp64"),
        (["--d-model", "768", "--n-heads", "12", "--gpu", "a100", "--dtype", "fp8"], "fp8"),
        (["--d-model", "768", "--n-heads", "12", "--gpu", "v100", "--dtype", "bf16"], "v100"),
        (["--preset", "nope"], "nope"),
        (["--gpu", "h100"], "--preset"),
    ],
)
def test_cli_bad_input(capsys, argv, needle):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err
