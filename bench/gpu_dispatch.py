"""Does backend="auto" pick the faster backend on this GPU? One row per shape class.

For each case (a shape class of headwise's dispatcher: dtype, head dim, mask, length
buckets, grouped or not, training or inference): first the layer-level call
``attend(q, k, v, mask, backend="auto")``, whose first call times the candidates
(``sdpa``, ``tiled``) within the dispatcher's budget; then, independently and on
fresh inputs of the same shape, ``triton.testing.do_bench`` medians of ``attend``
with ``backend="sdpa"``, ``"tiled"`` and ``"auto"`` (forward for inference cases,
forward + backward for training ones). A row agrees when auto's choice is the faster
of the two in this second measurement, or within ``--tolerance`` (default 10%) of
it. At the end, a fresh dispatcher reads the cache file this run wrote and must give
the same choices for every class measured in full (the disk round trip, keyed by
this GPU's name and the torch and Triton versions).

    PYTHONPATH=src python bench/gpu_dispatch.py             # ~30-60 s on an H100/H200
    PYTHONPATH=src python bench/gpu_dispatch.py --quick     # four cases
    PYTHONPATH=src python bench/gpu_dispatch.py --dry-run   # the plan; no GPU needed

Writes bench/results/gpu_dispatch.json (and $OUT/gpu_dispatch.json when OUT is set),
rewritten after every case. Exit status 0 when every measured row agrees and the
round trip holds, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 16384
HEADS = 16


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    causal: bool
    lengths: bool  # per-sequence key lengths (padding) instead of full keys
    training: bool

    @property
    def label(self) -> str:
        mask = ("causal" if self.causal else "full") + ("+lengths" if self.lengths else "")
        return (f"B={self.batch} H={self.heads}/{self.kv_heads} Tq={self.q_len} Tk={self.k_len} "
                f"D={self.head_dim} {mask} {'training' if self.training else 'inference'}")


def plan(args: argparse.Namespace) -> list[Case]:
    """The main grid (head dims x masks x lengths x training or not, 16k tokens per
    batch), then grouped-query, key lengths and decoding; ordered so that a run cut
    short by --budget-s has covered both head dims and both modes."""
    seqs = [1024, 4096] if args.quick else args.seqs
    head_dims = [128] if args.quick else args.head_dims
    cases = []
    for t in seqs:
        for d in head_dims:
            for causal in (True, False):
                for training in (True, False):
                    if args.quick and causal != training:
                        continue
                    cases.append(Case(max(1, TOKENS // t), HEADS, HEADS, t, t, d, causal, False,
                                      training))
    if not args.quick:
        d = head_dims[0]
        cases += [Case(4, HEADS, 4, 4096, 4096, d, True, False, True),  # grouped-query
                  Case(8, HEADS, HEADS, 2048, 2048, d, False, True, True),  # key padding
                  Case(16, HEADS, HEADS, 1, 4096, d, True, False, False)]  # decoding a token
    return cases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="four cases (smoke)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU)")
    p.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096, 16384], metavar="T")
    p.add_argument("--head-dims", type=int, nargs="+", default=[128, 64], metavar="D")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="a choice within this fraction of the faster one agrees (default 0.10)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="stop starting new cases after this many seconds (default 60)")
    p.add_argument("--dispatch-budget-ms", type=float, default=None,
                   help="the dispatcher's timing budget per class (default: its own, 500 ms)")
    p.add_argument("--warmup-ms", type=float, default=5.0, help="do_bench warm-up (default 5)")
    p.add_argument("--rep-ms", type=float, default=30.0, help="do_bench measuring time (default 30)")
    p.add_argument("--cache", type=Path, default=None,
                   help="the dispatch cache file (default $OUT/dispatch_cache.json, else "
                        "bench/results/dispatch_cache.json); emptied at the start")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_dispatch.json")
    args = p.parse_args(argv)
    for name in ("seqs", "head_dims"):
        values = getattr(args, name)
        if any(x <= 0 for x in values):
            p.error(f"--{name.replace('_', '-')} must be positive integers, got {values}")
    if any(d > 256 for d in args.head_dims):
        p.error(f"--head-dims must be <= 256, got {args.head_dims}")
    if not 0 <= args.tolerance < 1:
        p.error(f"--tolerance must be in [0, 1), got {args.tolerance}")
    for name in ("warmup_ms", "rep_ms", "budget_s"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cache is None:
        out = os.environ.get("OUT")
        args.cache = (Path(out) if out else RESULTS) / "dispatch_cache.json"
    return args


def inputs(case: Case, seed: int):
    """q, k, v (views of (B, T, H, D) buffers, as the layer makes them), the mask and
    an output gradient."""
    from headwise.attention.masks import MaskSpec

    g = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(heads, t, grad):
        x = torch.randn(case.batch, t, heads, case.head_dim, device="cuda", dtype=torch.bfloat16,
                        generator=g)
        return x.transpose(1, 2).requires_grad_(grad)

    q = rnd(case.heads, case.q_len, case.training)
    k = rnd(case.kv_heads, case.k_len, case.training)
    v = rnd(case.kv_heads, case.k_len, case.training)
    dout = rnd(case.heads, case.q_len, False)
    lengths = None
    if case.lengths:  # a quarter to all of the keys
        lengths = torch.randint(case.k_len // 4, case.k_len + 1, (case.batch,), device="cuda",
                                generator=g)
    mask = MaskSpec(case.batch, case.q_len, case.k_len, causal=case.causal, key_lengths=lengths)
    return q, k, v, mask, dout


def run_case(case: Case, args: argparse.Namespace) -> dict:
    from triton.testing import do_bench

    from headwise.attention import attend, explain_backend

    q, k, v, mask, dout = inputs(case, seed=0)

    def call(backend):
        if case.training:
            def f():
                attend(q, k, v, mask, backend=backend)[0].backward(dout)
        else:
            def f():
                with torch.no_grad():
                    attend(q, k, v, mask, backend=backend)
        return f

    row = {"case": asdict(case), "label": case.label, "bench_ms": {}, "errors": {}}
    t0 = time.perf_counter()
    call("auto")()  # the first call of the class: the dispatcher times sdpa and tiled
    torch.cuda.synchronize()
    row["dispatch_s"] = time.perf_counter() - t0
    with torch.enable_grad() if case.training else torch.no_grad():
        choice = explain_backend(q, k, v, mask, measure=False)
    row.update(auto_choice=choice.backend, auto_source=choice.source, auto_reason=choice.reason,
               auto_times_ms=choice.times_ms, auto_complete=choice.complete,
               shape_class=choice.shape_class)
    for name in ("sdpa", "tiled", "auto"):
        f = call(name)
        try:
            f()
            torch.cuda.synchronize()
            row["bench_ms"][name] = do_bench(f, warmup=args.warmup_ms, rep=args.rep_ms,
                                             grad_to_none=[q, k, v] if case.training else None,
                                             return_mode="median")
        except Exception as e:  # e.g. out of memory
            row["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    ms = row["bench_ms"]
    if "sdpa" in ms and "tiled" in ms:
        best = min(("sdpa", "tiled"), key=ms.get)
        row["best"] = best
        picked = ms.get(choice.backend)
        row["agree"] = choice.backend == best or (
            picked is not None and picked <= (1 + args.tolerance) * ms[best])
        row["auto_vs_best"] = ms["auto"] / ms[best] if "auto" in ms else None
    else:
        row["best"] = row["agree"] = row["auto_vs_best"] = None
    return row


def round_trip(rows: list[dict], cache: Path) -> dict:
    """A fresh dispatcher reading ``cache`` gives the choices of the classes measured in full."""
    from headwise.attention.backends import DISPATCHER, AttentionCall
    from headwise.attention.backends.dispatch import Dispatcher

    fresh = Dispatcher(DISPATCHER.backends)
    fresh.cache_path = cache
    checked, mismatched = 0, []
    for row in rows:
        if not row.get("auto_complete") or row.get("auto_source") == "only":
            continue
        q, k, v, mask, _ = inputs(Case(**row["case"]), seed=1)
        with torch.enable_grad() if row["case"]["training"] else torch.no_grad():
            got = fresh.choose(AttentionCall.of(q, k, v, mask), measure=False)
        checked += 1
        if got.backend != row["auto_choice"] or got.source != "disk":
            mismatched.append([row["label"], row["auto_choice"], got.backend, got.source])
    file_envs = []
    try:
        file_envs = list(json.loads(cache.read_text()).get("environments", {}))
    except (OSError, ValueError):
        pass
    return {"file": str(cache), "environments": file_envs, "checked": checked,
            "mismatched": mismatched, "ok": checked > 0 and not mismatched}


def write(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / path.name).write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = plan(args)
    if args.dry_run:
        print(f"{len(cases)} cases, tolerance {args.tolerance:.0%}, budget {args.budget_s:.0f} s, "
              f"cache {args.cache}:")
        for c in cases:
            print(f"  {c.label}")
        return 0
    if not torch.cuda.is_available():
        print("bench/gpu_dispatch.py needs a CUDA GPU; nothing was measured.", file=sys.stderr)
        return 2
    import triton

    from headwise.attention import set_backend_autotune, set_dispatch_cache

    if args.cache.exists():
        args.cache.unlink()  # measure every class afresh
    set_dispatch_cache(args.cache)
    settings = set_backend_autotune(True, budget_ms=args.dispatch_budget_ms)
    payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "python": platform.python_version(),
               "dtype": "bfloat16", "dispatch_settings": settings, "tolerance": args.tolerance,
               "timing": f"triton.testing.do_bench median, warmup={args.warmup_ms} ms, "
                         f"rep={args.rep_ms} ms",
               "command": " ".join(["bench/gpu_dispatch.py", *(argv if argv is not None
                                                             else sys.argv[1:])]),
               "rows": [], "skipped_for_time": [], "round_trip": None}
    print(f"# {payload['device']}: torch {torch.__version__}, triton {triton.__version__}; "
          f"dispatch {settings}", flush=True)
    start = time.perf_counter()
    for case in cases:
        if time.perf_counter() - start > args.budget_s:
            payload["skipped_for_time"].append(case.label)
            continue
        t0 = time.perf_counter()
        try:
            row = run_case(case, args)
        except Exception as e:
            row = {"case": asdict(case), "label": case.label, "agree": None,
                   "errors": {"case": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}}
        payload["rows"].append(row)
        write(payload, args.out)
        ms = row.get("bench_ms", {})
        print(f"{case.label}: auto -> {row.get('auto_choice')} ({row.get('auto_source')}); "
              f"sdpa {ms.get('sdpa', float('nan')):.3f} tiled {ms.get('tiled', float('nan')):.3f} "
              f"auto {ms.get('auto', float('nan')):.3f} ms; agree {row.get('agree')}; "
              f"errors {row.get('errors') or '-'} ({time.perf_counter() - t0:.1f} s)", flush=True)
    payload["round_trip"] = round_trip(payload["rows"], args.cache)
    measured = [r for r in payload["rows"] if r.get("agree") is not None]
    agree = sum(bool(r["agree"]) for r in measured)
    ratios = [r["auto_vs_best"] for r in measured if r.get("auto_vs_best")]
    payload["summary"] = {"cases": len(payload["rows"]), "measured": len(measured), "agree": agree,
                          "auto_vs_best_max": max(ratios, default=None),
                          "round_trip_ok": payload["round_trip"]["ok"]}
    write(payload, args.out)
    print("\n| case | auto picks | sdpa ms | tiled ms | auto ms | auto / best | agree |")
    print("|---|---|---:|---:|---:|---:|:---:|")
    for r in payload["rows"]:
        ms = r.get("bench_ms", {})
        cells = [f"{ms[n]:.3f}" if n in ms else "—" for n in ("sdpa", "tiled", "auto")]
        ratio = f"{r['auto_vs_best']:.2f}" if r.get("auto_vs_best") else "—"
        print(f"| {r['label']} | {r.get('auto_choice', '—')} | " + " | ".join(cells)
              + f" | {ratio} | {r.get('agree')} |")
    print(f"\nagree {agree}/{len(measured)}; round trip {payload['round_trip']}; "
          f"skipped for time {payload['skipped_for_time'] or '-'}; wrote {args.out}")
    return 0 if measured and agree == len(measured) and payload["round_trip"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
