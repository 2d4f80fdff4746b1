"""The tile planner: predict how well one attention layer's GEMMs fit a chip.

For a model shape (``d_model``, ``n_heads`` H, ``head_dim`` Dh, ``n_kv_heads`` Hkv),
a batch ``B`` and sequence length ``T``, the layer runs these GEMMs (``M x K`` times
``K x N``):

=============  ==============  ===========  ==========  ===============================
GEMM           M               N            K           count
=============  ==============  ===========  ==========  ===============================
qkv (fused)    B*T             (H+2Hkv)*Dh  d_model     1 launch
qk (QK^T)      T               T            Dh          1 launch, batched over B*H
pv (PV)        T               Dh           T           1 launch, batched over B*H
out            B*T             d_model      H*Dh        1 launch
per-head proj  B*T             Dh           d_model     H + 2*Hkv launches (naive layer)
=============  ==============  ===========  ==========  ===============================

For each GEMM the model computes:

* alignment of M, N, K to the dtype's tensor-core requirement (16 bytes: bf16/fp16
  8 elements, int8/fp8 16, tf32 4) and the padded size;
* tile-quantisation efficiency: ``M*N*K / (ceil(M/BM)*BM * ceil(N/BN)*BN *
  ceil(K/BK)*BK)``, the useful share of the multiply-adds done in whole tiles;
* wave-quantisation efficiency: ``tiles / (ceil(tiles/SMs) * SMs)``, the share of SM
  slots busy over all waves (tiles counts every batch entry);
* arithmetic intensity ``2*M*N*K / ((M*K + K*N + M*N) * bytes)`` (A and B read once,
  C written once in the dtype) against the ridge ``peak / bandwidth``;
* the bound ``max(flops / (peak * tile_eff * wave_eff), bytes / bandwidth)``.

The tile is chosen among the profile's candidates to minimise the bound. The model
charges nothing for the extra L2 traffic of small tiles, so among candidates within
:data:`TILE_TIE` of the best the one with the least padding, then the largest
(earliest listed), is kept. The layer time
adds the profile's per-launch overhead to each launch, which is what makes H+2Hkv
small per-head GEMMs slower than one fused GEMM beyond their quantisation losses.
Softmax, masking and RoPE are not GEMMs and are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from ..checks import check_int, check_real
from .profiles import DTYPE_BYTES, HardwareProfile, Tile

__all__ = [
    "TILE_TIE",
    "AttentionConfig",
    "DimAlignment",
    "GemmPlan",
    "LayerPlan",
    "SliceWaste",
    "Recommendation",
    "align_dim",
    "tile_efficiency",
    "wave_efficiency",
    "plan_gemm",
    "plan_attention",
    "k_slice_waste",
    "textbook_examples",
    "recommend",
]

# Relative slack within which a larger tile is preferred over a marginally better
# small one (see the module docstring).
TILE_TIE = 0.02


@dataclass(frozen=True)
class AttentionConfig:
    """The attention shape of a model.

    ``head_dim`` defaults to ``d_model // n_heads`` (which must then divide evenly)
    and ``n_kv_heads`` to ``n_heads``; ``n_kv_heads`` must divide ``n_heads``.
    """

    d_model: int
    n_heads: int
    head_dim: int | None = None
    n_kv_heads: int | None = None
    n_layers: int = 1

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model)
        check_int("n_heads", self.n_heads)
        check_int("n_layers", self.n_layers)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}) when "
                    f"head_dim is not given"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        check_int("head_dim", self.head_dim)
        check_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})"
            )


@dataclass(frozen=True)
class DimAlignment:
    """One GEMM dimension against the dtype's alignment (elements)."""

    size: int
    aligned: bool
    padded: int


def align_dim(size: int, align: int) -> DimAlignment:
    """``size`` rounded up to a multiple of ``align`` (both in elements)."""
    check_int("size", size, minimum=0)
    check_int("align", align)
    padded = -(-size // align) * align
    return DimAlignment(size, padded == size, padded)


def _ceil_to(x: int, q: int) -> int:
    return -(-x // q) * q


def tile_efficiency(m: int, n: int, k: int, tile: Tile) -> float:
    """Useful multiply-adds over those done when M, N, K are rounded up to whole
    ``tile`` blocks: ``M*N*K / (ceil_BM(M) * ceil_BN(N) * ceil_BK(K))``."""
    for name, v in (("m", m), ("n", n), ("k", k), *zip(("tile.bm", "tile.bn", "tile.bk"), tile, strict=True)):
        check_int(name, v)
    done = _ceil_to(m, tile.bm) * _ceil_to(n, tile.bn) * _ceil_to(k, tile.bk)
    return (m * n * k) / done


def wave_efficiency(m: int, n: int, tile: Tile, sm_count: int, batch: int = 1) -> tuple[
    float, int, int
]:
    """``(efficiency, tiles, waves)`` for an ``M x N`` output cut into ``tile`` blocks,
    ``batch`` times, spread over ``sm_count`` units: ``tiles / (waves * sm_count)``."""
    for name, v in (("m", m), ("n", n), ("tile.bm", tile.bm), ("tile.bn", tile.bn),
                    ("sm_count", sm_count), ("batch", batch)):
        check_int(name, v)
    tiles = math.ceil(m / tile.bm) * math.ceil(n / tile.bn) * batch
    waves = math.ceil(tiles / sm_count)
    return tiles / (waves * sm_count), tiles, waves


@dataclass
class GemmPlan:
    """The model's verdict on one GEMM (``batch`` independent ``M x K @ K x N``
    products per launch, ``launches`` launches). Times are seconds, FLOPs are
    ``2*M*N*K*batch`` per launch, bytes are per launch."""

    name: str
    m: int
    n: int
    k: int
    batch: int
    launches: int
    dtype: str
    align: dict[str, DimAlignment]
    tile: Tile
    tile_eff: float
    wave_eff: float
    tiles: int
    waves: int
    flops: float
    bytes: float
    intensity: float
    ridge: float
    bound: str  # "compute" or "memory"
    bound_s: float  # per launch, the roofline max(...) of the module docstring
    time_s: float  # all launches, with the per-launch overhead
    candidates: dict[str, float] = field(default_factory=dict)  # tile -> bound_s

    @property
    def aligned(self) -> bool:
        return all(a.aligned for a in self.align.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tile"] = str(self.tile)
        d["aligned"] = self.aligned
        return d


def plan_gemm(
    name: str,
    m: int,
    n: int,
    k: int,
    profile: HardwareProfile,
    dtype: str,
    *,
    batch: int = 1,
    launches: int = 1,
    tiles: Iterable[Tile] | None = None,
) -> GemmPlan:
    """Plan one GEMM: pick the tile minimising the roofline bound (see the module
    docstring) among ``tiles`` (default: the profile's candidates for ``dtype``)."""
    dtype = profile.check_dtype(dtype)
    for arg, v in (("m", m), ("n", n), ("k", k), ("batch", batch), ("launches", launches)):
        check_int(arg, v)
    size = DTYPE_BYTES[dtype]
    al = profile.align_elems(dtype)
    flops = 2.0 * m * n * k * batch
    nbytes = float((m * k + k * n + m * n) * size * batch)
    peak, bw = profile.peak(dtype), profile.mem_bandwidth
    mem_s = nbytes / bw
    scored = []
    for t in tiles if tiles is not None else profile.tiles_for(dtype):
        te = tile_efficiency(m, n, k, t)
        we, nt, nw = wave_efficiency(m, n, t, profile.sm_count, batch)
        scored.append((max(flops / (peak * te * we), mem_s), t, te, we, nt, nw))
    if not scored:
        raise ValueError(f"tiles must hold at least one Tile, got {tiles!r}")
    best = min(s[0] for s in scored)
    # Among candidates within TILE_TIE of the best (all of them when the GEMM is
    # memory bound), keep the least padding, then the largest (earliest) tile.
    tied = [s for s in scored if s[0] <= best * (1 + TILE_TIE)]
    top_te = max(s[2] for s in tied)
    bound_s, tile, te, we, nt, nw = next(s for s in tied if s[2] >= top_te * (1 - 1e-12))
    compute_s = flops / (peak * te * we)
    return GemmPlan(
        name=name,
        m=m,
        n=n,
        k=k,
        batch=batch,
        launches=launches,
        dtype=dtype,
        align={d: align_dim(v, al) for d, v in (("m", m), ("n", n), ("k", k))},
        tile=tile,
        tile_eff=te,
        wave_eff=we,
        tiles=nt,
        waves=nw,
        flops=flops,
        bytes=nbytes,
        intensity=flops / nbytes,
        ridge=peak / bw,
        bound="compute" if compute_s >= mem_s else "memory",
        bound_s=bound_s,
        time_s=launches * (bound_s + profile.launch_overhead_s),
        candidates={str(s[1]): s[0] for s in scored},
    )


@dataclass
class LayerPlan:
    """One attention layer on one chip: the fused layer's GEMMs (``gemms``: qkv, qk,
    pv, out) and the naive layer's per-head projections (``per_head``), with the
    predicted times in seconds (``model_time_s`` covers all ``n_layers``)."""

    config: AttentionConfig
    batch: int
    seq: int
    dtype: str
    device: str
    gemms: list[GemmPlan]
    per_head: GemmPlan
    layer_time_s: float
    naive_time_s: float
    model_time_s: float
    waste: float  # share of the fused layer's multiply-adds spent on tile padding

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "batch": self.batch,
            "seq": self.seq,
            "dtype": self.dtype,
            "device": self.device,
            "gemms": [g.to_dict() for g in self.gemms],
            "per_head": self.per_head.to_dict(),
            "layer_time_s": self.layer_time_s,
            "naive_time_s": self.naive_time_s,
            "model_time_s": self.model_time_s,
            "waste": self.waste,
        }


def plan_attention(
    config: AttentionConfig, batch: int, seq: int, profile: HardwareProfile, dtype: str
) -> LayerPlan:
    """Plan every GEMM of one attention layer of ``config`` for input ``(batch, seq,
    d_model)`` on ``profile`` in ``dtype`` (see the module docstring's table)."""
    check_int("batch", batch)
    check_int("seq", seq)
    dtype = profile.check_dtype(dtype)
    H, Hkv, Dh, D = config.n_heads, config.n_kv_heads, config.head_dim, config.d_model
    assert Dh is not None and Hkv is not None
    BT = batch * seq
    gemms = [
        plan_gemm("qkv", BT, (H + 2 * Hkv) * Dh, D, profile, dtype),
        plan_gemm("qk", seq, seq, Dh, profile, dtype, batch=batch * H),
        plan_gemm("pv", seq, Dh, seq, profile, dtype, batch=batch * H),
        plan_gemm("out", BT, D, H * Dh, profile, dtype),
    ]
    # A naive layer projects Q for each of H heads and K, V for each of Hkv heads
    # (3*H GEMMs without grouped-query attention).
    per_head = plan_gemm("per_head", BT, Dh, D, profile, dtype, launches=H + 2 * Hkv)
    layer = sum(g.time_s for g in gemms)
    naive = per_head.time_s + sum(g.time_s for g in gemms[1:])
    # Waste counts padding only: idle SMs in a partial wave cost time (in the bound)
    # but compute nothing, padded tiles compute zeros.
    useful = sum(g.flops * g.launches for g in gemms)
    done = sum(g.flops * g.launches / g.tile_eff for g in gemms)
    return LayerPlan(
        config=config,
        batch=batch,
        seq=seq,
        dtype=dtype,
        device=profile.key,
        gemms=gemms,
        per_head=per_head,
        layer_time_s=layer,
        naive_time_s=naive,
        model_time_s=layer * config.n_layers,
        waste=1.0 - useful / done,
    )


# ------------------------------------------------------------ textbook example
@dataclass(frozen=True)
class SliceWaste:
    """How a ``head_dim``-long K run of ``dtype`` fills ``k_bytes``-wide MMA K-slices
    in a ``rows x k_bytes`` tile (e.g. 64 rows x 32 bytes)."""

    head_dim: int
    dtype: str
    k_bytes: int
    rows: int
    elems_per_slice: int  # elements of dtype in one K-slice (32 B: 16 bf16, 32 int8)
    used_bytes: int  # head_dim * bytes per element
    slices: int  # K-slices needed
    padded_elems: int  # head_dim rounded up to whole slices
    padded_bytes: int
    wasted_fraction: float  # share of the slice bytes that are zero padding
    tile_bytes: int  # rows * slices * k_bytes
    wasted_tile_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def k_slice_waste(head_dim: int, dtype: str, k_bytes: int = 32, rows: int = 64) -> SliceWaste:
    """The textbook example: a ``head_dim`` vector of ``dtype`` stored along K of a
    ``rows x k_bytes`` tile. 10 bf16 = 20 bytes of a 32-byte slice (16 bf16), so 12
    bytes, 37.5 %, are padding; 20 int8 = 20 bytes of 32 (32 int8), also 37.5 %."""
    check_int("head_dim", head_dim)
    check_int("k_bytes", k_bytes)
    check_int("rows", rows)
    d = str(dtype).lower()
    if d not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    size = DTYPE_BYTES[d]
    if k_bytes % size:
        raise ValueError(f"k_bytes must be a multiple of {size} for {d}, got {k_bytes}")
    per = k_bytes // size
    used = head_dim * size
    slices = -(-head_dim // per)
    padded_bytes = slices * k_bytes
    return SliceWaste(
        head_dim=head_dim,
        dtype=d,
        k_bytes=k_bytes,
        rows=rows,
        elems_per_slice=per,
        used_bytes=used,
        slices=slices,
        padded_elems=slices * per,
        padded_bytes=padded_bytes,
        wasted_fraction=1.0 - used / padded_bytes,
        tile_bytes=rows * padded_bytes,
        wasted_tile_bytes=rows * (padded_bytes - used),
    )


def textbook_examples(k_bytes: int = 32, rows: int = 64) -> list[SliceWaste]:
    """The four cases of the textbook discussion: 10 and 20 dims, bf16 and int8."""
    return [
        k_slice_waste(10, "bf16", k_bytes, rows),
        k_slice_waste(20, "int8", k_bytes, rows),
        k_slice_waste(20, "bf16", k_bytes, rows),
        k_slice_waste(10, "int8", k_bytes, rows),
    ]


# ------------------------------------------------------------ recommendations
@dataclass
class Recommendation:
    """An alternative head layout for the same ``d_model`` with its predicted
    layer time (s), waste and change against the original."""

    n_heads: int
    head_dim: int
    n_kv_heads: int
    width: int  # n_heads * head_dim
    layer_time_s: float
    waste: float
    speedup: float  # original time / this time

    def to_dict(self) -> dict:
        return asdict(self)


# The most (head_dim, n_heads) pairs :func:`recommend` searches; beyond it (a head_dim
# or head count in the hundreds of thousands) it raises instead of running for hours.
MAX_LAYOUTS = 200_000


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def recommend(
    config: AttentionConfig,
    batch: int,
    seq: int,
    profile: HardwareProfile,
    dtype: str,
    *,
    tolerance: float = 0.125,
    head_factor: float = 2.0,
    top: int = 5,
) -> tuple[LayerPlan, list[Recommendation]]:
    """Suggest head layouts near ``config`` (same ``d_model``) that waste less.

    Candidates: ``head_dim`` a multiple of the dtype's alignment (up to twice the
    original or 256), ``n_heads`` such that ``n_heads * head_dim`` stays within
    ``tolerance`` of the original ``n_heads * head_dim`` and ``n_heads`` within a factor
    ``head_factor`` of the original (fewer heads always means less attention-score
    traffic, so without this bound the fastest layout is one huge head), and
    ``n_kv_heads`` a divisor
    of ``n_heads`` keeping the K/V width ``n_kv_heads * head_dim`` within ``tolerance``
    of the original (so the KV-cache size stays put). Only candidates whose
    predicted time and waste are both no worse than the original's, and one of
    them better, are kept; they are ranked by predicted layer time. Returns the
    original's plan and up to ``top`` recommendations.
    """
    check_real("tolerance", tolerance, minimum=0, maximum=1, max_open=True, what="in [0, 1)")
    check_real("head_factor", head_factor, minimum=1, what="a finite float >= 1")
    base = plan_attention(config, batch, seq, profile, dtype)
    H0, Dh0, Hkv0 = config.n_heads, config.head_dim, config.n_kv_heads
    assert Dh0 is not None and Hkv0 is not None
    w0, kv0 = H0 * Dh0, Hkv0 * Dh0
    lo, hi = 1 - tolerance, 1 + tolerance
    step = profile.align_elems(dtype)
    check_int("top", top, minimum=0)
    if top == 0:
        return base, []
    # only a head_dim with some n_heads in both bounds below can give a candidate
    h_min, h_max = max(1, math.ceil(H0 / head_factor)), math.floor(H0 * head_factor)
    dh_lo = max(1, math.floor(w0 * lo / h_max))
    dh_hi = min(max(2 * Dh0, 256), math.ceil(w0 * hi / h_min))
    first = _ceil_to(dh_lo, step)
    n_dims = max(0, (dh_hi - first) // step + 1)

    def heads(dh: int) -> range:
        return range(max(h_min, math.ceil(w0 * lo / dh)), min(h_max, math.floor(w0 * hi / dh)) + 1)

    dims = range(first, first + n_dims * step, step) if n_dims <= MAX_LAYOUTS else range(0)
    n_layouts = n_dims if n_dims > MAX_LAYOUTS else sum(len(heads(dh)) for dh in dims)
    if n_layouts > MAX_LAYOUTS:
        raise ValueError(
            f"recommendations for n_heads={H0}, head_dim={Dh0} would search more than "
            f"{MAX_LAYOUTS:,} head layouts; give top=0 (--top 0) to plan without them"
        )
    eps = 1e-12
    out: list[Recommendation] = []
    for dh in dims:
        for h in heads(dh):
            for hkv in _divisors(h):
                if not (kv0 * lo <= hkv * dh <= kv0 * hi) or (h, dh, hkv) == (H0, Dh0, Hkv0):
                    continue
                cfg = AttentionConfig(config.d_model, h, dh, hkv, config.n_layers)
                p = plan_attention(cfg, batch, seq, profile, dtype)
                t_ok = p.layer_time_s <= base.layer_time_s * (1 + eps)
                w_ok = p.waste <= base.waste + eps
                better = p.layer_time_s < base.layer_time_s * (1 - eps) or p.waste < base.waste - eps
                if t_ok and w_ok and better:
                    out.append(
                        Recommendation(
                            h, dh, hkv, h * dh, p.layer_time_s, p.waste,
                            base.layer_time_s / p.layer_time_s,
                        )
                    )
    # fastest first; among equals the least waste, then the closest to the original
    out.sort(key=lambda r: (r.layer_time_s, r.waste, abs(r.width - w0), abs(r.n_heads - H0)))
    return base, out[:top]
