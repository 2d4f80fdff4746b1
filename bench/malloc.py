"""Keeping freed memory (hardware/memory.py, as headwise's trainer does) against glibc's
malloc as it is, on headwise's fp32 training steps.

mallopt cannot be taken back within a process, so each measurement is a fresh process:
``--pairs`` pairs of them, ``HEADWISE_MALLOC=keep`` and ``=default`` alternating, each
timing ``--steps`` electra-small training steps of one objective after two warm-up steps
(``bench/train_throughput.py``'s model, batches and optimizer) and counting the minor
page faults of each step. It prints the medians and the ratio and writes JSON to
``bench/results/``.

    python bench/malloc.py --out bench/results/malloc_zen5.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import train_throughput as tt  # this directory's script: the models, batches and step
from headwise.app.cli_types import positive_int
from headwise.hardware import memory

SETTINGS = ("keep", "default")


def child(objective: str, steps: int, threads: int) -> dict:
    """One process's measurement (run with HEADWISE_MALLOC set by the parent)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as the trainer does
    said = memory.keep_freed_memory()
    step, batches, gen = tt.headwise_step(objective)
    for b in batches:
        step(b, gen)
    times, faults = [], []
    for i in range(steps):
        f0, t0 = tt.minor_faults(), time.perf_counter()
        step(batches[i % 2], gen)
        times.append(time.perf_counter() - t0)
        faults.append(tt.minor_faults() - f0)
    return {"malloc": said, "step_s": times, "page_faults": faults,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=positive_int, default=4, help="pairs of processes per objective")
    p.add_argument("--steps", type=positive_int, default=6, help="timed steps per process")
    p.add_argument("--objectives", nargs="+", default=list(tt.OBJECTIVES), choices=tt.OBJECTIVES)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, default=tt.RESULTS / "malloc.json")
    p.add_argument("--child", choices=tt.OBJECTIVES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return {}
    cpu = tt.lscpu_model()
    print(f"# {cpu}, {args.threads} threads, torch {torch.__version__}, electra-small fp32 steps")
    base = {k: v for k, v in os.environ.items() if k not in (memory.ENV, *memory.GLIBC_VARIABLES)}
    rows = []
    for objective in args.objectives:
        runs: dict[str, list[dict]] = {s: [] for s in SETTINGS}
        for r in range(args.pairs):
            for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", objective, "--steps", str(args.steps),
                     "--threads", str(args.threads)],
                    env={**base, memory.ENV: setting}, capture_output=True, text=True, check=True)
                runs[setting].append(json.loads(out.stdout.splitlines()[-1]))
        med = {s: statistics.median(statistics.median(x["step_s"]) for x in runs[s]) for s in SETTINGS}
        flt = {s: statistics.median(statistics.median(x["page_faults"]) for x in runs[s]) for s in SETTINGS}
        row = {"objective": objective, "median_step_s": med, "median_page_faults_per_step": flt,
               "default_over_keep": med["default"] / med["keep"], "runs": runs}
        rows.append(row)
        print(f"electra-small {objective} fp32 step: kept {med['keep']:.3f} s ({flt['keep']:,.0f} "
              f"faults), glibc's default {med['default']:.3f} s ({flt['default']:,.0f} faults): "
              f"{row['default_over_keep']:.3f}x", flush=True)
    return tt.write_result({"benchmark": "malloc", "cpu": cpu, "torch": torch.__version__,
                            "threads": args.threads, "rows": rows}, args.out, "malloc.py", argv)


if __name__ == "__main__":
    main()
