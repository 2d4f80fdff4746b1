"""headwise's tanh GELU (through sigmoid, a slab at a time) against torch's own.

Two measurements in one run, the two alternating so that the machine's drift falls on
both:

1. the ops at one electra-small MLP's shape (batch 32 x 128 = 4096 rows, FFN 1024): the
   forward, ``kernels.gelu.gelu_tanh`` against ``F.gelu(approximate="tanh")``, and what
   the recomputing MLP's backward asks for, ``gelu_tanh_and_grad`` against
   ``F.gelu`` + ``aten.gelu_backward``;
2. a whole fp32 electra-small CLM training step (GPT-2's tanh GELU;
   ``bench/train_throughput.py``'s model, batches and optimizer) with
   ``kernels.mlp.ACTIVATIONS["gelu_tanh"]`` as shipped and with torch's ops in its place.

Freed memory is kept in the process as headwise's trainer keeps it (hardware/memory.py;
``HEADWISE_MALLOC=default`` for glibc's defaults), so that the ops' fresh outputs are
not faulted in afresh at every call, which would hide the arithmetic being compared.
It prints the medians and the ratios and writes JSON to ``bench/results/``.

    python bench/gelu.py --out bench/results/gelu_zen5.json
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

import train_throughput as tt  # this directory's script: the models, batches and step
from headwise.app.cli_types import positive_int
from headwise.hardware import memory
from headwise.kernels import mlp
from headwise.kernels.gelu import gelu_tanh, gelu_tanh_and_grad

TORCH_GELU_TANH = mlp.Activation(
    partial(F.gelu, approximate="tanh"), partial(F.gelu, approximate="tanh"),
    lambda g, h: (F.gelu(h, approximate="tanh"),
                  torch.ops.aten.gelu_backward(g, h, approximate="tanh")))
"""torch's ops in the MLP's place (what headwise ran before kernels/gelu.py)."""


def op_times(reps: int, rows: int = 4096, cols: int = 1024) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    h, dy = torch.randn(rows, cols, generator=g) * 2, torch.randn(rows, cols, generator=g)
    out = []
    for form, mine, theirs in (
            ("forward", lambda: gelu_tanh(h), lambda: TORCH_GELU_TANH.forward(h)),
            ("activation + gradient", lambda: gelu_tanh_and_grad(dy, h),
             lambda: TORCH_GELU_TANH.both(dy, h))):
        med = tt.alternate({"headwise": mine, "torch": theirs}, reps)
        out.append({"form": form, "shape": [rows, cols], "median_s": med,
                    "torch_over_headwise": med["torch"] / med["headwise"]})
    return out


def step_times(pairs: int) -> dict:
    step, batches, gen = tt.headwise_step("clm")
    shipped = mlp.ACTIVATIONS["gelu_tanh"]
    sides = {name: lambda act=act: mlp.ACTIVATIONS.update(gelu_tanh=act)
             for name, act in (("headwise", shipped), ("torch", TORCH_GELU_TANH))}
    try:
        got = tt.alternate_steps(step, batches, gen, sides, pairs)
    finally:
        mlp.ACTIVATIONS["gelu_tanh"] = shipped
    med = {side: statistics.median(v) for side, v in got.items()}
    return {"objective": "clm", "size": "electra-small", "median_step_s": med,
            "all_step_s": got, "torch_over_headwise": med["torch"] / med["headwise"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=positive_int, default=15, help="timed calls of each op per side")
    p.add_argument("--pairs", type=positive_int, default=6, help="alternating pairs of training steps")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, default=tt.RESULTS / "gelu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does
    malloc = memory.keep_freed_memory()  # and this
    cpu = tt.lscpu_model()
    print(f"# {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; malloc: {malloc['why']}")
    ops = op_times(args.reps)
    for row in ops:
        med = row["median_s"]
        print(f"{row['form']:>22} {row['shape']}: headwise {med['headwise'] * 1e3:.2f} ms, "
              f"torch {med['torch'] * 1e3:.2f} ms: {row['torch_over_headwise']:.2f}x", flush=True)
    step = step_times(args.pairs)
    med = step["median_step_s"]
    print(f"electra-small clm fp32 step: headwise's GELU {med['headwise']:.3f} s, torch's "
          f"{med['torch']:.3f} s: {step['torch_over_headwise']:.3f}x", flush=True)
    return tt.write_result({"benchmark": "gelu", "cpu": cpu, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "malloc": malloc, "ops": ops,
                            "step": step}, args.out, "gelu.py", argv)


if __name__ == "__main__":
    main()
