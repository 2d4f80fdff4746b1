"""Check the tile planner against measurement: predicted vs measured GEMM times.

For a sweep of GEMM shapes (small and large, aligned and misaligned, attention-like),
predict each one's time with ``headwise.hardware.plan_gemm`` and time
``torch.matmul`` (median of several runs). The planner is judged on ranks: the
Spearman correlation between predicted and measured times (target >= 0.8). Its
peer is the plain FLOP count, the predictor anyone would use without a planner;
both correlations are printed.

    PYTHONPATH=src python bench/planner.py                 # CPU, fp32 -> bench/results/planner_cpu.json
    PYTHONPATH=src python bench/planner.py --device cuda   # GPU, bf16 -> bench/results/planner_gpu.json

With ``--device cuda`` the GPU profile is picked from the device name (``--gpu`` to
override) and the JSON is also copied to ``$OUT`` when that variable is set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from headwise.app.cli_types import positive_int
from headwise.hardware import get_profile, plan_gemm
from headwise.hardware.profiles import HardwareProfile

RESULTS = Path(__file__).resolve().parent / "results"

# (name, M, N, K, batch). Misaligned ones are off by a few elements on purpose.
CPU_SHAPES = [
    ("tiny", 32, 32, 32, 1),
    ("small", 64, 64, 64, 1),
    ("small-odd", 100, 100, 100, 1),
    ("128", 128, 128, 128, 1),
    ("128-odd", 127, 129, 131, 1),
    ("256", 256, 256, 256, 1),
    ("250", 250, 250, 250, 1),
    ("qk dh64", 256, 256, 64, 12),
    ("pv dh64", 256, 64, 256, 12),
    ("qk dh10", 512, 512, 10, 4),
    ("pv dh10", 512, 10, 512, 4),
    ("per-head", 1024, 64, 768, 1),
    ("out", 1024, 768, 768, 1),
    ("qkv", 1024, 2304, 768, 1),
    ("odd", 333, 777, 555, 1),
    ("d300", 2048, 300, 300, 1),
    ("gemv", 1, 4096, 4096, 1),
    ("1000", 1000, 1000, 1000, 1),
    ("1024", 1024, 1024, 1024, 1),
]

GPU_SHAPES = [
    ("small", 256, 256, 256, 1),
    ("small-odd", 250, 250, 250, 1),
    ("1024", 1024, 1024, 1024, 1),
    ("1000", 1000, 1000, 1000, 1),
    ("4096", 4096, 4096, 4096, 1),
    ("4095-odd", 4095, 4097, 4093, 1),
    ("8192", 8192, 8192, 8192, 1),
    ("qkv gpt2", 8192, 2304, 768, 1),
    ("out gpt2", 8192, 768, 768, 1),
    ("per-head", 8192, 64, 768, 1),
    ("qk dh64", 2048, 2048, 64, 48),
    ("pv dh64", 2048, 64, 2048, 48),
    ("qk dh10", 2048, 2048, 10, 48),
    ("pv dh10", 2048, 10, 2048, 48),
    ("d300", 8192, 300, 300, 1),
    ("odd", 3333, 7777, 5555, 1),
    ("gemv", 1, 8192, 8192, 1),
    ("tall", 65536, 128, 128, 1),
]

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks (ties get their mean rank)."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def time_cpu(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, reps: int) -> float:
    """Median seconds of ``torch.matmul(a, b, out=out)`` after a warm-up; short
    calls are repeated inside each timed run so the clock's resolution does not matter."""
    torch.matmul(a, b, out=out)
    t0 = time.perf_counter()
    torch.matmul(a, b, out=out)
    inner = max(1, min(1000, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts)


def time_cuda(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, reps: int) -> float:
    """Median seconds per ``torch.matmul`` from CUDA events, each event pair around a
    burst of calls (so launch gaps are included, as in the planner's overhead term)."""
    for _ in range(3):
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.matmul(a, b, out=out)
    end.record()
    torch.cuda.synchronize()
    inner = max(1, min(200, int(1.0 / max(start.elapsed_time(end), 1e-4))))  # ~1 ms bursts
    ts = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        end.record()
        torch.cuda.synchronize()
        ts.append(start.elapsed_time(end) / 1e3 / inner)
    return statistics.median(ts)


def gpu_profile_for(name: str) -> tuple[str, str]:
    """(profile key, dtype) for a CUDA device name; fp16 on Volta, which lacks bf16."""
    n = name.upper()
    for key in ("H200", "H100", "A100", "V100", "L4"):
        if re.search(rf"\b{key}\b", n):  # whole word: an L40S is not an L4
            return key.lower(), "fp16" if key == "V100" else "bf16"
    raise ValueError(
        f"no profile for CUDA device {name!r}; pass --gpu with one of h100, h200, a100, v100, l4"
    )


def run(device: str, prof: HardwareProfile, dtype: str, shapes, reps: int) -> dict:
    tdt = TORCH_DTYPES[dtype]
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, m, n, k, batch in shapes:
        lead = (batch,) if batch > 1 else ()
        # drawn on the device: a 48 x 2048 x 2048 operand would take seconds on the host
        a = torch.randn(*lead, m, k, generator=gen, device=device).to(tdt)
        b = torch.randn(*lead, k, n, generator=gen, device=device).to(tdt)
        out = torch.empty(*lead, m, n, device=device, dtype=tdt)
        timer = time_cuda if device == "cuda" else time_cpu
        measured = timer(a, b, out, reps)
        g = plan_gemm(name, m, n, k, prof, dtype, batch=batch)
        rows.append(
            {
                "name": name,
                "m": m,
                "n": n,
                "k": k,
                "batch": batch,
                "aligned": g.aligned,
                "tile": str(g.tile),
                "tile_eff": g.tile_eff,
                "wave_eff": g.wave_eff,
                "bound": g.bound,
                "flops": g.flops,
                "predicted_s": g.time_s,
                "measured_s": measured,
            }
        )
        del a, b, out
    pred = [r["predicted_s"] for r in rows]
    meas = [r["measured_s"] for r in rows]
    flops = [r["flops"] for r in rows]
    # the ratios are only meaningful up to one constant: normalise by the median
    scale = statistics.median(m / p for m, p in zip(meas, pred, strict=True))
    for r in rows:
        r["measured_over_predicted"] = r["measured_s"] / r["predicted_s"] / scale
    return {
        "device": device,
        "profile": prof.to_dict(),
        "dtype": dtype,
        "reps": reps,
        "torch": torch.__version__,
        "rows": rows,
        "spearman_planner": spearman(pred, meas),
        "spearman_flops": spearman(flops, meas),
        "median_measured_over_predicted": scale,
        "target": 0.8,
    }


def report(res: dict) -> str:
    head = (
        f"{'shape':<10}{'batch':>6}{'M':>7}{'N':>7}{'K':>7} {'al':<3}{'tile':<11}{'bound':<8}"
        f"{'pred us':>11}{'meas us':>11}{'meas/pred*':>11}"
    )
    lines = [
        f"planner vs torch.matmul on {res['profile']['name']} ({res['dtype']}, "
        f"median of {res['reps']})",
        head,
        "-" * len(head),
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['name']:<10}{r['batch']:>6}{r['m']:>7}{r['n']:>7}{r['k']:>7} "
            f"{'y' if r['aligned'] else 'n':<3}{r['tile']:<11}{r['bound']:<8}"
            f"{r['predicted_s'] * 1e6:>11.1f}{r['measured_s'] * 1e6:>11.1f}"
            f"{r['measured_over_predicted']:>11.2f}"
        )
    lines += [
        f"* normalised by the median measured/predicted ratio "
        f"({res['median_measured_over_predicted']:.2f})",
        f"Spearman rho, planner vs measured:   {res['spearman_planner']:.3f} "
        f"(target >= {res['target']})",
        f"Spearman rho, FLOP count vs measured: {res['spearman_flops']:.3f} (peer: no planner)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--gpu", help="GPU profile to use with --device cuda (default: from the name)")
    p.add_argument("--dtype", help="default fp32 on the CPU, bf16 on the GPU (fp16 on V100)")
    p.add_argument("--reps", type=positive_int, help="timed runs per shape (default 7 CPU, 20 GPU)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="CPU threads for torch (default 1: on a shared machine a second thread that "
        "gets descheduled stalls every parallel matmul by a scheduler tick)",
    )
    p.add_argument("--refresh-cpu", action="store_true", help="re-measure the CPU profile")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/planner_<dev>.json)")
    args = p.parse_args(argv)
    if args.device == "cpu" and args.gpu is not None:
        p.error(f"--gpu {args.gpu} has no effect with --device cpu (it names the profile of --device cuda); "
                "drop it or give --device cuda")
    if args.device == "cuda" and args.refresh_cpu:
        p.error("--refresh-cpu has no effect with --device cuda (it re-measures the CPU profile); drop it")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
        key, dtype = gpu_profile_for(torch.cuda.get_device_name())
        prof = get_profile(args.gpu or key)
        shapes, reps, tag = GPU_SHAPES, args.reps or 20, "gpu"
    else:
        torch.set_num_threads(args.threads)  # before the profile: it is per thread count
        prof = get_profile("cpu", refresh=args.refresh_cpu)
        dtype = "fp32"
        shapes, reps, tag = CPU_SHAPES, args.reps or 7, "cpu"
    dtype = prof.check_dtype(args.dtype or dtype)

    t0 = time.perf_counter()
    res = run(args.device, prof, dtype, shapes, reps)
    res["wall_s"] = time.perf_counter() - t0
    res["device_name"] = torch.cuda.get_device_name() if args.device == "cuda" else prof.name
    shown = sys.argv[1:] if argv is None else argv
    res["command"] = "PYTHONPATH=src python bench/planner.py " + " ".join(shown)
    print(report(res))

    out = args.out or RESULTS / f"planner_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    if os.environ.get("OUT"):
        copy = Path(os.environ["OUT"]) / out.name
        copy.write_text(json.dumps(res, indent=2))
        print(f"wrote {copy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
