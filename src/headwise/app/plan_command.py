"""``headwise plan``: predict how an attention layer's GEMMs fit a GPU (or the local
CPU), and suggest head layouts that waste less.

Examples::

    headwise plan --preset gpt2-small --gpu h100 --dtype bf16 --seq 2048
    headwise plan --d-model 300 --n-heads 30 --head-dim 10 --gpu a100 --explain
    headwise plan --preset bert-base --gpu cpu --json
"""

from __future__ import annotations

import json

from ..checks import check_int, check_real
from ..hardware.planner import (
    AttentionConfig,
    GemmPlan,
    LayerPlan,
    Recommendation,
    k_slice_waste,
    recommend,
    textbook_examples,
)
from ..hardware.profiles import DTYPE_BYTES, PROFILE_NAMES, HardwareProfile, get_profile
from ..models import PRESETS, get_preset
from .cli_types import nonneg_float, nonneg_int, positive_int, refuse_unused

__all__ = ["register", "run", "resolve_preset", "TOLERANCE"]

#: ``--tolerance`` when none is given
TOLERANCE = 0.125


def resolve_preset(name: str):
    """The model shape of preset ``name`` (:func:`headwise.models.get_preset`): an object
    with ``d_model, n_heads, head_dim, n_kv_heads, n_layers`` (``None`` = default).
    Raises ValueError naming the presets for an unknown one."""
    return get_preset(name)


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="predict GEMM tiling, alignment and waste of an attention layer on a GPU",
        description=(
            "List every GEMM of one attention layer with its alignment, tile and wave "
            "quantisation, arithmetic intensity and roofline time bound on a GPU profile "
            "(or the measured local CPU), then suggest head layouts that waste less."
        ),
    )
    p.add_argument("--preset", help=f"model preset: {', '.join(PRESETS)} "
                                    "(default: none, give --d-model and --n-heads)")
    p.add_argument("--d-model", type=positive_int, help="model width (default: the preset's)")
    p.add_argument("--n-heads", type=positive_int, help="query heads H (default: the preset's)")
    p.add_argument("--head-dim", type=positive_int, help="per-head width Dh (default d_model // H)")
    p.add_argument("--n-kv-heads", type=positive_int, help="key/value heads Hkv (default H)")
    p.add_argument("--layers", type=positive_int, help="number of layers (default: preset's, else 1)")
    p.add_argument("--batch", type=positive_int, default=1, help="batch size B (default 1)")
    p.add_argument("--seq", type=positive_int, default=2048, help="sequence length T (default 2048)")
    p.add_argument("--gpu", default="h100", help=f"one of {PROFILE_NAMES} (default h100)")
    p.add_argument(
        "--dtype",
        help=f"one of {list(DTYPE_BYTES)} (default bf16 on GPUs, fp32 on the CPU)",
    )
    p.add_argument("--top", type=nonneg_int, default=5, help="recommendations to show (default 5)")
    p.add_argument(
        "--tolerance",
        type=nonneg_float,
        default=None,
        help=f"allowed relative change of H*Dh for recommendations (default {TOLERANCE}; not with --top 0)",
    )
    p.add_argument("--explain", action="store_true", help="add the K-slice padding example")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--refresh-cpu", action="store_true", help="re-measure the cached CPU profile"
    )
    p.set_defaults(func=run)


def _config(args) -> tuple[str, AttentionConfig]:
    base = _flag("--preset", args.preset, resolve_preset, args.preset) if args.preset else None
    if base is None and (args.d_model is None or args.n_heads is None):
        raise ValueError(
            "give --preset NAME or both --d-model and --n-heads "
            f"(got preset={args.preset!r}, d_model={args.d_model!r}, n_heads={args.n_heads!r})"
        )

    def pick(arg, attr, default=None):
        if arg is not None:
            return arg
        return getattr(base, attr, default) if base is not None else default

    d_model = pick(args.d_model, "d_model")
    n_heads = pick(args.n_heads, "n_heads")
    # a preset's head_dim / n_kv_heads only carry over if the head count is the preset's
    same_heads = base is not None and n_heads == base.n_heads and d_model == base.d_model
    head_dim = args.head_dim if args.head_dim is not None else (
        base.head_dim if same_heads else None
    )
    n_kv = args.n_kv_heads if args.n_kv_heads is not None else (
        base.n_kv_heads if same_heads else None
    )
    layers = pick(args.layers, "n_layers", 1)
    try:
        cfg = AttentionConfig(d_model, n_heads, head_dim, n_kv, layers)
    except ValueError as e:  # (was: "n_kv_heads (5) must divide n_heads (12)", naming no flag)
        shapes = [f"{flag} {value}" + ("" if given is not None else f" (preset {args.preset}'s)")
                  for flag, given, value in (("--d-model", args.d_model, d_model), ("--n-heads", args.n_heads, n_heads),
                                             ("--head-dim", args.head_dim, head_dim),
                                             ("--n-kv-heads", args.n_kv_heads, n_kv))
                  if value is not None]
        raise ValueError(f"{', '.join(shapes)}: {e}") from None
    return (args.preset or "custom"), cfg


def _flag(flag: str, value, fn, *a, **kw):
    """``fn(*a, **kw)``, with a ValueError's message prefixed by the flag and its value."""
    try:
        return fn(*a, **kw)
    except ValueError as e:
        raise ValueError(f"{flag} {value!r}: {e}") from None


def run(args) -> int:
    name, cfg = _config(args)
    if args.explain and args.json:
        raise ValueError(
            "--explain adds the K-slice padding table to the text output; --json always "
            "includes it (textbook, head_dim_k_slice), so drop --explain or --json"
        )
    # (a GPU profile takes no keyword; the CPU's takes refresh)
    kw = {"refresh": True} if args.refresh_cpu else {}
    prof = _flag("--gpu", args.gpu, get_profile, args.gpu, **kw)
    if args.refresh_cpu and not prof.is_cpu:
        raise ValueError(
            f"--refresh-cpu re-measures the local CPU's profile, which --gpu {args.gpu!r} "
            "does not use; give --gpu cpu or drop --refresh-cpu"
        )
    dtype = args.dtype if args.dtype is not None else ("fp32" if prof.is_cpu else "bf16")
    dtype = _flag("--dtype", dtype, prof.check_dtype, dtype)
    check_int("--top", args.top, minimum=0)
    if args.top == 0:
        refuse_unused({"--tolerance": args.tolerance}, "with --top 0 (no recommendation is searched)",
                      "drop {it} or give --top 1 or more")
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    check_real("--tolerance", tolerance, minimum=0, maximum=1, max_open=True, what="in [0, 1)")
    plan, recs = recommend(
        cfg, args.batch, args.seq, prof, dtype, tolerance=tolerance, top=args.top
    )
    assert cfg.head_dim is not None
    own = k_slice_waste(cfg.head_dim, dtype, max(prof.mma_k_bytes, DTYPE_BYTES[dtype]))
    # (on the CPU mma_k_bytes is one element, so this reports no padding)
    if args.json:
        print(
            json.dumps(
                {
                    "model": name,
                    "profile": prof.to_dict(),
                    "plan": plan.to_dict(),
                    "recommendations": [r.to_dict() for r in recs],
                    "head_dim_k_slice": own.to_dict(),
                    "textbook": [w.to_dict() for w in textbook_examples()],
                },
                indent=2,
            )
        )
        return 0
    print(_render(name, prof, plan, recs, args.explain, searched=args.top > 0))
    return 0


# ------------------------------------------------------------------ text output
def _rate(flops: float) -> str:
    return f"{flops / 1e12:,.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:,.1f} GFLOP/s"


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def _align_note(g: GemmPlan) -> str:
    bad = [f"{d.upper()}:{a.size}->{a.padded}" for d, a in g.align.items() if not a.aligned]
    return "ok" if not bad else " ".join(bad)


def _columns(rows: list[list[str]], right: str, gap: str = " ") -> list[str]:
    """``rows`` of cells (the first the header) as aligned lines, each column as wide as
    its widest cell; ``right[i]`` is ``">"`` to right-align column ``i``, else ``"<"``."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [gap.join(f"{c:{a}{w}}" for c, a, w in zip(r, right, widths, strict=True)).rstrip()
            for r in rows]


GEMM_HEAD = ["GEMM", "count", "M", "N", "K", "alignment", "tile", "tile_eff", "wave_eff",
             "AI F/B", "ridge", "bound", "time us"]
GEMM_ALIGN = "<>>>><<>>>><>"


def _gemm_cells(g: GemmPlan) -> list[str]:
    count = f"{g.launches}x" if g.launches > 1 else (f"b{g.batch}" if g.batch > 1 else "1")
    return [g.name, count, str(g.m), str(g.n), str(g.k), _align_note(g), str(g.tile),
            f"{g.tile_eff:.1%}", f"{g.wave_eff:.1%}", f"{g.intensity:.1f}", f"{g.ridge:.0f}",
            g.bound, _us(g.time_s)]


def _gemm_rows(gemms: list[GemmPlan], per_head: GemmPlan) -> tuple[list[str], str]:
    """The GEMM table (header, rule, a row per GEMM) and the per-head row, which is
    printed further down in the same columns."""
    lines = _columns([GEMM_HEAD, *map(_gemm_cells, gemms), _gemm_cells(per_head)], GEMM_ALIGN)
    return [lines[0], "-" * max(map(len, lines)), *lines[1:-1]], lines[-1]


def _render(
    name: str,
    prof: HardwareProfile,
    plan: LayerPlan,
    recs: list[Recommendation],
    explain: bool,
    searched: bool = True,
) -> str:
    c, d = plan.config, plan.dtype
    gemm_table, per_head_row = _gemm_rows(plan.gemms, plan.per_head)
    lines = [
        f"{name}: d_model={c.d_model} n_heads={c.n_heads} head_dim={c.head_dim} "
        f"n_kv_heads={c.n_kv_heads} layers={c.n_layers} | batch={plan.batch} seq={plan.seq} "
        f"| {d} on {prof.name}",
        f"  {prof.sm_count} {'threads' if prof.is_cpu else 'SMs'}, peak "
        f"{_rate(prof.peak(d))}, {prof.mem_bandwidth / 1e9:,.0f} GB/s, ridge "
        f"{prof.ridge(d):.0f} FLOP/B, alignment {prof.align_elems(d)} elements "
        f"({prof.align_bytes} B), MMA K {prof.mma_k_elems(d)} elements",
        "",
        "count: 1 launch; bN = one launch batched over N = B*H; Nx = N separate launches.",
        "time = launches * (max(FLOPs/(peak*tile_eff*wave_eff), bytes/bandwidth) "
        f"+ {prof.launch_overhead_s * 1e6:.1f} us launch)",
        "",
        *gemm_table,
        "",
        f"fused layer: {_us(plan.layer_time_s)} us; x {c.n_layers} layers = "
        f"{plan.model_time_s * 1e3:,.3f} ms; padding waste {plan.waste:.1%}",
        f"naive layer (per-head projections instead of one qkv GEMM): "
        f"{_us(plan.naive_time_s)} us, {plan.naive_time_s / plan.layer_time_s:.2f}x the fused",
        per_head_row,
        "",
    ]
    assert c.head_dim is not None
    if not prof.is_cpu:  # a CPU steps K one element at a time: nothing to pad
        own = k_slice_waste(c.head_dim, d, prof.mma_k_bytes)
        lines.append(
            f"head_dim {c.head_dim} in {d}: {own.used_bytes} B of {own.padded_bytes} B in "
            f"{own.slices} MMA K-slice(s) of {prof.mma_k_bytes} B -> "
            f"{own.wasted_fraction:.1%} padding"
        )
    if explain:
        lines += ["", "K-slice padding (a 64 x 32-byte tile; one 32-byte MMA K-slice holds "
                  "16 bf16 or 32 int8):"]
        lines.append(
            f"  {'head_dim':>8} {'dtype':<6}{'per slice':>10}{'used B':>8}{'padded B':>9}"
            f"{'wasted':>8}{'tile B':>8}{'wasted B':>9}"
        )
        for w in [*textbook_examples(), k_slice_waste(c.head_dim, d)]:
            lines.append(
                f"  {w.head_dim:>8} {w.dtype:<6}{w.elems_per_slice:>10}{w.used_bytes:>8}"
                f"{w.padded_bytes:>9}{w.wasted_fraction:>8.1%}{w.tile_bytes:>8}"
                f"{w.wasted_tile_bytes:>9}"
            )
    lines += ["", "recommendations (same d_model; no slower, no more padding; fastest first):"]
    if not searched:
        lines.append("  not searched (--top 0)")
    elif not recs:
        lines.append("  none: no nearby layout is predicted faster or less wasteful")
    else:
        table = [["n_heads", "head_dim", "n_kv", "H*Dh", "time us", "speedup", "waste", ""],
                 [str(c.n_heads), str(c.head_dim), str(c.n_kv_heads), str(c.n_heads * c.head_dim),
                  _us(plan.layer_time_s), "1.00x", f"{plan.waste:.1%}", "(given)"]]
        table += [[str(r.n_heads), str(r.head_dim), str(r.n_kv_heads), str(r.width),
                   _us(r.layer_time_s), f"{r.speedup:.2f}x", f"{r.waste:.1%}", ""] for r in recs]
        lines += ["  " + line for line in _columns(table, ">>>>>>><", gap="  ")]
    return "\n".join(lines)

