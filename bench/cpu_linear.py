"""oneDNN against torch's matmul (MKL on x86) for headwise's float32 CPU linears.

Two measurements in one run, both libraries alternating so that the machine's drift
falls on both:

1. each GEMM a training step asks of a linear (forward ``Y = X W^T``, ``dX = dY W``,
   ``dW = dY^T X``, through :mod:`headwise.kernels.cpu_linear`) at the shapes of an
   electra-small step (batch 32 x 128 = 4096 rows), in GFLOP/s;
2. a whole fp32 training step of headwise's model for each objective at electra-small
   widths (``bench/train_throughput.py``'s models, batches and optimizer), with
   ``set_cpu_linear("onednn")`` and ``set_cpu_linear("torch")`` in turn.

It prints the medians and the ratios and writes JSON to ``bench/results/``. The
``auto`` choice's own probe (``cpu_linear._probe_gain``) is run too, a few times, to show
how far its reading moves between calls.

    python bench/cpu_linear.py --out bench/results/cpu_linear_zen4.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import train_throughput as tt  # this directory's script: the models, batches and step
from headwise.app.cli_types import positive_int
from headwise.kernels import cpu_linear
from headwise.kernels.cpu_linear import dense, grad_input, grad_weight, set_cpu_linear

SHAPES = ((4096, 256, 768), (4096, 256, 256), (4096, 256, 1024), (4096, 1024, 256), (512, 256, 8192))
"""``(M, K, N)``: the fused QKV, the output projection, the MLP in and out, and one
512-row chunk of the fused loss's 8192-wide vocabulary projection."""
FORMS = ("forward", "dX", "dW")


def gemm_rates(reps: int) -> list[dict]:
    rows = []
    for m, k, n in SHAPES:
        g = torch.Generator().manual_seed(0)
        x, w, dy = (torch.randn(m, k, generator=g), torch.randn(n, k, generator=g),
                    torch.randn(m, n, generator=g))
        calls = {"forward": lambda d, x=x, w=w: dense(x, w, None, d),
                 "dX": lambda d, dy=dy, w=w: grad_input(dy, w, d),
                 "dW": lambda d, dy=dy, x=x: grad_weight(dy, x, d)}
        flops = 2.0 * m * k * n
        for form in FORMS:
            fn = calls[form]
            med = tt.alternate({"torch": lambda fn=fn: fn(False), "onednn": lambda fn=fn: fn(True)}, reps)
            rows.append({"shape": [m, k, n], "form": form,
                         "gflops": {lib: flops / t / 1e9 for lib, t in med.items()},
                         "onednn_over_torch": med["torch"] / med["onednn"]})
    return rows


def step_times(objective: str, pairs: int) -> dict:
    step, batches, gen = tt.headwise_step(objective)
    got = tt.alternate_steps(step, batches, gen,
                             {lib: lambda lib=lib: set_cpu_linear(lib) for lib in ("onednn", "torch")},
                             pairs)
    med = {lib: statistics.median(v) for lib, v in got.items()}
    return {"objective": objective, "median_step_s": med, "all_step_s": got,
            "onednn_over_torch": med["torch"] / med["onednn"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=positive_int, default=9, help="timed calls of each GEMM per library")
    p.add_argument("--pairs", type=positive_int, default=6, help="alternating pairs of training steps")
    p.add_argument("--probes", type=positive_int, default=5, help="runs of the auto probe")
    p.add_argument("--objectives", nargs="+", default=list(tt.OBJECTIVES), choices=tt.OBJECTIVES)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, default=tt.RESULTS / "cpu_linear.json")
    args = p.parse_args(argv)
    if not cpu_linear.onednn_available():
        p.error("this torch has no oneDNN linear (torch.backends.mkldnn.is_available() is False)")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does
    cpu = tt.lscpu_model()
    print(f"# {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    probes = [cpu_linear._probe_gain() for _ in range(args.probes)]
    print("auto probe, oneDNN over torch: " + ", ".join(f"{g:.2f}x" for g in probes))
    rates = gemm_rates(args.reps)
    print(f"{'M x K -> N':>18} {'GEMM':>8} | torch GFLOP/s | oneDNN GFLOP/s | oneDNN/torch")
    for row in rates:
        m, k, n = row["shape"]
        print(f"{f'{m} x {k} -> {n}':>18} {row['form']:>8} | {row['gflops']['torch']:13.0f} | "
              f"{row['gflops']['onednn']:14.0f} | {row['onednn_over_torch']:11.2f}x", flush=True)
    steps = []
    for objective in args.objectives:
        row = step_times(objective, args.pairs)
        steps.append(row)
        med = row["median_step_s"]
        print(f"electra-small {objective} fp32 step: oneDNN {med['onednn']:.3f} s, torch "
              f"{med['torch']:.3f} s: {row['onednn_over_torch']:.2f}x", flush=True)
    return tt.write_result({"benchmark": "cpu_linear", "cpu": cpu, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "probe_gains": probes,
                            "gemms": rates, "steps": steps}, args.out, "cpu_linear.py", argv)


if __name__ == "__main__":
    main()
