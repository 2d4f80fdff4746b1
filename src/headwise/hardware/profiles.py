"""Hardware profiles: what the tile planner needs to know about a chip.

Each :class:`HardwareProfile` holds the numbers a roofline model with tile and wave
quantisation uses: the number of SMs (parallel units), dense peak FLOP/s per dtype,
memory bandwidth, the tensor-core alignment and MMA K width, the L2 size and the
candidate thread-block tiles per dtype.

GPU numbers are the vendor datasheets' **dense** (non-sparse) figures; NVIDIA
quotes tensor-core numbers "with sparsity" in its headline tables, which are twice
the dense rate. The local CPU profile is measured on first use (a short fp32
matmul for the peak, a large copy for the bandwidth) and cached as JSON in the
user's cache folder, never in the repository.

Two byte widths matter and are easy to confuse:

* ``align_bytes`` (16 on every NVIDIA GPU here): the leading dimensions a tensor-core
  GEMM wants, i.e. 16-byte vector loads: 8 bf16/fp16 elements, 16 int8/fp8, 4 tf32.
  A dimension that is not a multiple of it is reported as misaligned and padded.
* ``mma_k_bytes`` (32): the K extent of one tensor-core MMA instruction
  (``mma.sync m16n8k16`` for bf16 = 16 elements = 32 bytes; ``m16n8k32`` for int8 =
  32 bytes; ``m16n8k8`` for tf32 = 32 bytes). A K-slice narrower than that is padded
  with zeros; it is the unit of the textbook example in :func:`headwise.hardware.
  planner.k_slice_waste`.

A CPU has no tensor cores: its "tile" is a register/cache block, its alignment is
the SIMD width (AVX2: 32 bytes = 8 fp32; AVX-512: 64 bytes = 16 fp32), and its K
loop has no padding (``mma_k_bytes`` = one element).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..checks import check_choice, check_int, check_real

__all__ = [
    "DTYPE_BYTES",
    "Tile",
    "HardwareProfile",
    "GPU_PROFILES",
    "PROFILE_NAMES",
    "get_profile",
    "cpu_profile",
    "measure_cpu",
    "cache_dir",
]

# Bytes per element as stored in memory. tf32 is computed in 19 bits but stored
# and moved as fp32, so it costs 4 bytes of bandwidth.
DTYPE_BYTES: dict[str, int] = {
    "fp32": 4,
    "tf32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "fp8": 1,
}

TERA = 1e12


class Tile(NamedTuple):
    """A thread-block (GPU) or cache block (CPU) tile: ``bm x bn`` outputs, ``bk``
    elements of K per main-loop step."""

    bm: int
    bn: int
    bk: int

    def __str__(self) -> str:
        return f"{self.bm}x{self.bn}x{self.bk}"


@dataclass(frozen=True, eq=False)
class HardwareProfile:
    """What the planner knows about one chip.

    Attributes:
        key: short name accepted by :func:`get_profile` (``"h100"``, ``"cpu"``...).
        name: human-readable name.
        sm_count: streaming multiprocessors (GPU) or worker threads (CPU): the units
            tiles are spread over, which sets the wave size.
        peak_flops: dense peak, FLOP/s (int8/fp8: OP/s), per dtype the chip supports.
        mem_bandwidth: main-memory bandwidth, bytes/s.
        align_bytes: dimension alignment wanted for full-speed loads, bytes.
        mma_k_bytes: K width of one tensor-core MMA instruction, bytes.
        l2_bytes: last-level on-chip cache (L2 for GPUs, L2 per core x cores for CPU).
        tiles: candidate tiles per dtype, largest first (ties prefer earlier ones).
        launch_overhead_s: fixed cost per GEMM call (kernel launch / dispatch), s.
        is_cpu: True for the measured local CPU profile.
        source: where the numbers come from.
    """

    key: str
    name: str
    sm_count: int
    peak_flops: Mapping[str, float]
    mem_bandwidth: float
    align_bytes: int
    mma_k_bytes: int
    l2_bytes: int
    tiles: Mapping[str, tuple[Tile, ...]]
    launch_overhead_s: float = 4e-6
    is_cpu: bool = False
    source: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("sm_count", self.sm_count)
        for name in ("align_bytes", "mma_k_bytes"):
            check_int(name, getattr(self, name))
        check_int("l2_bytes", self.l2_bytes, minimum=0)
        check_real("mem_bandwidth", self.mem_bandwidth, minimum=0, min_open=True)
        check_real("launch_overhead_s", self.launch_overhead_s, minimum=0)
        for d, peak in self.peak_flops.items():
            check_choice("peak_flops key", d, list(DTYPE_BYTES))
            check_real(f"peak_flops[{d!r}]", peak, minimum=0, min_open=True)
            tiles = self.tiles.get(d)
            if not tiles or not all(isinstance(t, tuple) and len(t) == 3 for t in tiles):
                raise ValueError(f"tiles[{d!r}] must hold at least one (bm, bn, bk) Tile for "
                                 f"each dtype of peak_flops, got {tiles!r}")
            for t in tiles:
                for name, v in zip(("bm", "bn", "bk"), t, strict=True):
                    check_int(f"tiles[{d!r}] {name}", v)

    @property
    def dtypes(self) -> list[str]:
        """The dtypes this chip has a peak for, in :data:`DTYPE_BYTES` order."""
        return [d for d in DTYPE_BYTES if d in self.peak_flops]

    def check_dtype(self, dtype: str) -> str:
        """Return ``dtype`` normalised, or raise ``ValueError`` naming what is accepted."""
        d = str(dtype).lower()
        if d not in DTYPE_BYTES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
        if d not in self.peak_flops:
            raise ValueError(
                f"dtype {dtype!r} is not supported by {self.name} ({self.key}); "
                f"it supports {self.dtypes}"
            )
        return d

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``."""
        return self.peak_flops[self.check_dtype(dtype)]

    def ridge(self, dtype: str) -> float:
        """Roofline ridge point, FLOP/byte: the arithmetic intensity above which a
        kernel is compute bound."""
        return self.peak(dtype) / self.mem_bandwidth

    def align_elems(self, dtype: str) -> int:
        """Alignment in elements of ``dtype`` (bf16 8, int8/fp8 16, tf32 4 on GPUs)."""
        return max(1, self.align_bytes // DTYPE_BYTES[self.check_dtype(dtype)])

    def mma_k_elems(self, dtype: str) -> int:
        """K elements of ``dtype`` in one MMA instruction (bf16 16, int8 32 on GPUs)."""
        return max(1, self.mma_k_bytes // DTYPE_BYTES[self.check_dtype(dtype)])

    def tiles_for(self, dtype: str) -> tuple[Tile, ...]:
        """Candidate tiles for ``dtype``."""
        return self.tiles[self.check_dtype(dtype)]

    def to_dict(self) -> dict:
        """JSON-ready dict (tiles as ``"BMxBNxBK"`` strings)."""
        d = asdict(self)
        d["tiles"] = {k: [str(t) for t in v] for k, v in self.tiles.items()}
        d["peak_flops"] = dict(self.peak_flops)
        d["extra"] = dict(self.extra)
        return d


# Thread-block shapes (BM, BN) a cuBLAS/CUTLASS-style GEMM picks from, largest
# first; (128, 32) serves the N = head_dim GEMMs of small heads. BK is 128 bytes of
# K per shared-memory stage (64 bf16, 128 int8, 32 tf32), the usual stage width on
# Ampere/Hopper, and, for short K such as a small head_dim, one MMA K-step (32 bytes).
_GPU_MN = ((128, 256), (256, 128), (128, 128), (128, 64), (64, 128), (64, 64), (128, 32))
# Volta has less shared memory per SM (96 KB): smaller tiles, 64-byte K stages.
_VOLTA_MN = ((128, 128), (128, 64), (64, 128), (64, 64), (128, 32))


def _gpu_tiles(
    dtypes, mn=_GPU_MN, k_bytes: int = 128, mma_k_bytes: int = 32
) -> dict[str, tuple[Tile, ...]]:
    # deep-K tiles first: the planner prefers earlier candidates on ties
    return {
        d: tuple(
            Tile(bm, bn, kb // DTYPE_BYTES[d]) for kb in (k_bytes, mma_k_bytes) for bm, bn in mn
        )
        for d in dtypes
    }


def _gpu(key, name, sms, peaks_tflops, bw_gbs, l2_mb, source, mn=_GPU_MN, k_bytes=128):
    peaks = {d: v * TERA for d, v in peaks_tflops.items()}
    return HardwareProfile(
        key=key,
        name=name,
        sm_count=sms,
        peak_flops=peaks,
        mem_bandwidth=bw_gbs * 1e9,
        align_bytes=16,
        mma_k_bytes=32,
        l2_bytes=int(l2_mb * 2**20),
        tiles=_gpu_tiles(peaks, mn, k_bytes),
        launch_overhead_s=4e-6,
        source=source,
    )


# fp32 is the CUDA-core (non-tensor) rate; tf32/bf16/fp16/int8/fp8 are dense
# tensor-core rates (half of NVIDIA's "with sparsity" figures).
GPU_PROFILES: dict[str, HardwareProfile] = {
    p.key: p
    for p in (
        _gpu(
            "h100",
            "NVIDIA H100 SXM5 80GB",
            132,
            {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "int8": 1978.9,
             "fp8": 1978.9},
            3350,
            50,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM), dense",
        ),
        _gpu(
            "h200",
            "NVIDIA H200 SXM 141GB",
            132,
            {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "int8": 1978.9,
             "fp8": 1978.9},
            4800,
            50,
            "NVIDIA H200 datasheet (SXM), dense; same GH100 compute as H100, HBM3e",
        ),
        _gpu(
            "a100",
            "NVIDIA A100 SXM4 80GB",
            108,
            {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0, "int8": 624.0},
            2039,
            40,
            "NVIDIA A100 datasheet (SXM 80GB), dense; no fp8",
        ),
        _gpu(
            "v100",
            "NVIDIA V100 SXM2 32GB",
            80,
            # First-generation tensor cores: fp16 only (no bf16/tf32/int8 MMA).
            {"fp32": 15.7, "fp16": 125.0},
            900,
            6,
            "NVIDIA V100 datasheet (SXM2); tensor cores fp16 only",
            mn=_VOLTA_MN,
            k_bytes=64,
        ),
        _gpu(
            "l4",
            "NVIDIA L4 24GB",
            58,
            {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "int8": 242.5,
             "fp8": 242.5},
            300,
            48,
            "NVIDIA L4 datasheet, dense (half the quoted sparse rates)",
        ),
    )
}

PROFILE_NAMES = [*GPU_PROFILES, "cpu"]

_ALIASES = {
    "h100-sxm": "h100",
    "h100sxm": "h100",
    "h200-sxm": "h200",
    "a100-sxm": "a100",
    "a100-80gb": "a100",
    "v100-sxm2": "v100",
}


# ---------------------------------------------------------------------- the CPU
def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/headwise`` or ``~/.cache/headwise`` (created on write)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "headwise"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _simd_bytes() -> int:
    """SIMD register width in bytes, from the CPU flags (Linux); 16 when unknown."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    words = set(flags.split())
    if "avx512f" in words:
        return 64
    if "avx2" in words or "avx" in words:
        return 32
    return 16  # SSE / NEON


def _median_time(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: allocation, thread pool start
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure_cpu(matmul_n: int = 1024, copy_mb: int = 128, reps: int = 5) -> dict[str, float]:
    """Measure the local CPU with torch: fp32 matmul peak (``matmul_n``-square, FLOP/s),
    copy bandwidth (a ``copy_mb`` MiB tensor, read + write, bytes/s) and the fixed cost
    of one tiny matmul (s). About 1-2 s at the defaults; tests pass small sizes."""
    a = torch.randn(matmul_n, matmul_n)
    b = torch.randn(matmul_n, matmul_n)
    t_mm = _median_time(lambda: torch.matmul(a, b), reps)
    n = copy_mb * 2**20 // 4
    src = torch.empty(n)
    src.fill_(1.0)
    dst = torch.empty_like(src)
    t_cp = _median_time(lambda: dst.copy_(src), reps)
    x = torch.randn(8, 8)
    t_small = _median_time(lambda: torch.matmul(x, x), 50)
    return {
        "fp32_flops": 2.0 * matmul_n**3 / t_mm,
        "bandwidth": 2.0 * n * 4 / t_cp,
        "launch_overhead_s": t_small,
    }


def _cpu_identity() -> dict[str, object]:
    return {
        "cpu_model": _cpu_model(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
    }


def _cpu_from(measured: Mapping[str, float], ident: Mapping[str, object]) -> HardwareProfile:
    simd = _simd_bytes()
    w = simd // 4  # fp32 lanes
    # Register/cache blocks, multiples of the SIMD width; BK = 1 because a CPU
    # micro-kernel steps K one element at a time (rank-1 updates): no K padding.
    mn = ((max(64, 4 * w), max(64, 4 * w)), (32, max(32, 2 * w)), (16, max(16, w)))
    tiles = {"fp32": tuple(Tile(bm, bn, 1) for bm, bn in mn)}
    threads = int(ident["threads"])
    return HardwareProfile(
        key="cpu",
        name=f"{ident['cpu_model']} ({threads} threads)",
        sm_count=threads,
        peak_flops={"fp32": float(measured["fp32_flops"])},
        mem_bandwidth=float(measured["bandwidth"]),
        align_bytes=simd,
        mma_k_bytes=4,
        l2_bytes=0,
        tiles=tiles,
        launch_overhead_s=float(measured.get("launch_overhead_s", 2e-6)),
        is_cpu=True,
        source="measured with torch on first use (fp32 matmul, tensor copy)",
        extra={**ident, "simd_bytes": simd},
    )


def cpu_profile(
    cache: Path | str | None = None,
    *,
    measure: Callable[[], Mapping[str, float]] | None = None,
    refresh: bool = False,
) -> HardwareProfile:
    """The local CPU's profile, measured once and cached.

    Args:
        cache: folder for ``cpu_profile_t<threads>.json`` (default :func:`cache_dir`).
        measure: callable returning ``{"fp32_flops", "bandwidth", "launch_overhead_s"}``
            (default :func:`measure_cpu`); tests inject a fake one.
        refresh: measure again even if a cached result for this machine exists.

    The cache is keyed on CPU model, torch thread count and torch version, so a
    different machine or thread setting (``torch.set_num_threads``) is measured afresh.
    """
    folder = Path(cache) if cache is not None else cache_dir()
    ident = _cpu_identity()
    # one file per thread count, so runs with different torch.set_num_threads settings
    # do not keep overwriting each other's measurement
    path = folder / f"cpu_profile_t{ident['threads']}.json"
    if not refresh and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("identity") == ident:
                return _cpu_from(saved["measured"], ident)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt or old cache is simply re-measured
    measured = dict((measure or measure_cpu)())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"identity": ident, "measured": measured}, indent=2))
    except OSError:
        pass  # a read-only home is no reason to fail; we just measure next time too
    return _cpu_from(measured, ident)


def get_profile(name: str, **cpu_kwargs) -> HardwareProfile:
    """Look up a profile by name (case-insensitive): ``h100``, ``h200``, ``a100``,
    ``v100``, ``l4`` or ``cpu`` (measured; ``cpu_kwargs`` go to :func:`cpu_profile`)."""
    key = str(name).lower().strip()
    key = _ALIASES.get(key, key)
    if key == "cpu":
        return cpu_profile(**cpu_kwargs)
    if key not in GPU_PROFILES:
        raise ValueError(f"gpu must be one of {PROFILE_NAMES}, got {name!r}")
    return GPU_PROFILES[key]
