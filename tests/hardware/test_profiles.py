"""Hardware profiles: datasheet numbers are sane, the CPU profile is measured once,
cached and injectable."""

import json

import pytest
import torch

from headwise.hardware import profiles as P
from headwise.hardware.profiles import (
    DTYPE_BYTES,
    GPU_PROFILES,
    cpu_profile,
    get_profile,
    measure_cpu,
)

FAKE = {"fp32_flops": 1e11, "bandwidth": 2e10, "launch_overhead_s": 2e-6}


@pytest.mark.parametrize("key", sorted(GPU_PROFILES))
def test_gpu_profile_fields_sane(key):
    p = get_profile(key)
    assert p.key == key and not p.is_cpu
    assert 40 <= p.sm_count <= 200
    assert 1e11 < p.mem_bandwidth < 1e13  # 100 GB/s .. 10 TB/s
    assert p.l2_bytes >= 4 * 2**20
    assert p.align_bytes == 16 and p.mma_k_bytes == 32
    assert "fp32" in p.peak_flops
    for d in p.dtypes:
        assert p.peak(d) > 0
        assert p.ridge(d) > 1  # every GPU here is compute-rich
        if d != "fp32":  # tensor cores beat the CUDA cores
            assert p.peak(d) > p.peak("fp32")
        for t in p.tiles_for(d):
            # tiles are whole multiples of the alignment in every dimension
            al = p.align_elems(d)
            assert t.bm % al == 0 and t.bn % al == 0 and t.bk % al == 0
            assert t.bk * DTYPE_BYTES[d] in (32, 64, 128)
    for lo, hi in (("bf16", "int8"), ("fp16", "fp8")):
        if lo in p.peak_flops and hi in p.peak_flops:
            # 1-byte types run at twice the rate (datasheet rounding aside)
            assert p.peak(hi) == pytest.approx(2 * p.peak(lo), rel=0.01)


def test_known_datasheet_numbers():
    h100, a100 = get_profile("h100"), get_profile("A100")
    assert h100.sm_count == 132 and a100.sm_count == 108
    assert h100.peak("bf16") == pytest.approx(989.4e12)  # dense, not the 1979 sparse figure
    assert a100.peak("bf16") == pytest.approx(312e12)
    assert get_profile("h200").mem_bandwidth > h100.mem_bandwidth
    assert get_profile("h100-sxm") is h100


def test_alignment_and_mma_k_in_elements():
    p = get_profile("h100")
    assert {d: p.align_elems(d) for d in ("bf16", "fp16", "int8", "fp8", "tf32")} == {
        "bf16": 8,
        "fp16": 8,
        "int8": 16,
        "fp8": 16,
        "tf32": 4,
    }
    assert p.mma_k_elems("bf16") == 16 and p.mma_k_elems("int8") == 32


def test_missing_dtypes_raise_clearly():
    with pytest.raises(ValueError, match=r"fp8.*a100.*supports"):
        get_profile("a100").peak("fp8")
    with pytest.raises(ValueError, match=r"bf16.*v100"):
        get_profile("v100").peak("bf16")
    with pytest.raises(ValueError, match=r"dtype must be one of .*fp64"):
        get_profile("h100").check_dtype("fp64")


def test_unknown_gpu_names_value_and_accepted():
    with pytest.raises(ValueError, match=r"gpu must be one of .*h100.*tpu"):
        get_profile("tpu")


def test_cpu_profile_is_measured_once_and_cached(tmp_path):
    calls = []

    def fake():
        calls.append(1)
        return FAKE

    p = cpu_profile(tmp_path, measure=fake)
    assert p.is_cpu and p.key == "cpu" and calls == [1]
    assert p.peak("fp32") == 1e11 and p.mem_bandwidth == 2e10
    assert p.sm_count >= 1 and p.dtypes == ["fp32"]
    assert p.align_bytes in (16, 32, 64)  # SSE/NEON, AVX2, AVX-512
    assert p.align_elems("fp32") == p.align_bytes // 4
    assert all(t.bk == 1 for t in p.tiles_for("fp32"))  # no K padding on a CPU
    (path,) = tmp_path.glob("cpu_profile_t*.json")
    saved = json.loads(path.read_text())
    assert saved["measured"] == FAKE

    again = cpu_profile(tmp_path, measure=fake)  # read from the cache
    assert calls == [1] and again.peak("fp32") == 1e11
    cpu_profile(tmp_path, measure=fake, refresh=True)
    assert calls == [1, 1]
    with pytest.raises(ValueError, match="bf16"):
        p.peak("bf16")


def test_cpu_cache_follows_xdg_and_corrupt_cache_is_remeasured(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(P, "measure_cpu", lambda: FAKE)
    path = tmp_path / "headwise" / f"cpu_profile_t{torch.get_num_threads()}.json"
    path.parent.mkdir()
    path.write_text("{not json")
    p = get_profile("cpu")
    assert p.peak("fp32") == 1e11
    assert json.loads(path.read_text())["measured"]["fp32_flops"] == 1e11


def test_measure_cpu_tiny():
    m = measure_cpu(matmul_n=64, copy_mb=1, reps=2)
    assert m["fp32_flops"] > 1e6 and m["bandwidth"] > 1e6 and 0 < m["launch_overhead_s"] < 1
