"""headwise's tiled Triton attention against PyTorch's fused attention on one GPU.

TFLOP/s of the forward pass and of forward + backward, bf16, 16 heads, head dims
64 and 128, causal and not, sequence lengths 512 ... 16k at a fixed 16k tokens
per batch (batch = 16384 // T). Peers, on the same inputs: F.scaled_dot_product_
attention restricted to each of its fused kernels (FLASH_ATTENTION,
CUDNN_ATTENTION, EFFICIENT_ATTENTION; each skipped if unavailable) and compiled
FlexAttention (a causal block mask when causal). Times are medians of
triton.testing.do_bench. FLOPs: 4 * B * H * T^2 * D for the forward (two
matmuls), 2.5x that for the backward, halved when causal.

    PYTHONPATH=src python bench/gpu_attention.py            # ~4 minutes on an H100
    PYTHONPATH=src python bench/gpu_attention.py --quick    # smoke run, one shape

Prints a markdown table per pass with the ratio headwise / best torch kernel and
headwise's fraction of the GPU's dense bf16 peak; writes
bench/results/gpu_attention.json (and $OUT/gpu_attention.json when OUT is set),
rewritten after every shape so that an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 16384
HEADS = 16
SEQS = [512, 1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]
TORCH_IMPLS = ["flash", "cudnn", "efficient", "flex"]
# dense bf16 tensor-core peak (no sparsity), TFLOP/s
PEAKS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
         ("A100", 312.0), ("L40S", 362.1), ("B200", 2250.0)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one small shape per setting (smoke)")
    p.add_argument("--peak", type=float, default=None,
                   help="dense bf16 peak TFLOP/s of this GPU (default: from its name)")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="stop starting new shapes after this many seconds (default 240)")
    p.add_argument("--flex-compile-budget-s", type=float, default=100.0,
                   help="skip FlexAttention once its compilations took this long (default 100)")
    p.add_argument("--no-flex", action="store_true", help="leave FlexAttention out")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_attention.json")
    args = p.parse_args(argv)
    if args.peak is not None and not (args.peak > 0):
        p.error(f"--peak must be a positive number of TFLOP/s, got {args.peak}")
    return args


def flops(batch: int, seq: int, head_dim: int, causal: bool, mode: str) -> float:
    """Matmul FLOPs of one attention call over (batch, HEADS, seq, head_dim)."""
    fwd = 4.0 * batch * HEADS * seq * seq * head_dim
    total = fwd if mode == "fwd" else 3.5 * fwd
    return total / 2 if causal else total


def detect_peak(name: str) -> float | None:
    for key, peak in PEAKS:
        if key.lower() in name.lower():
            return peak
    return None


class Flex:
    """Compiled FlexAttention, one compiled callable for every shape (dynamic
    shapes), with a time budget for its compilations."""

    def __init__(self, budget_s: float) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        self.flex_attention = flex_attention
        self.dynamic = True  # one compilation for every length; static shapes if that fails
        self.fn = torch.compile(flex_attention, dynamic=True)
        self.create_block_mask = create_block_mask
        self.budget_s = budget_s
        self.spent_s = 0.0
        self.masks: dict[int, object] = {}

    def call(self, q, k, v, causal: bool):
        mask = None
        if causal:
            t = q.shape[2]
            if t not in self.masks:
                self.masks[t] = self.create_block_mask(
                    lambda b, h, qi, ki: qi >= ki, None, None, t, t, device=q.device
                )
            mask = self.masks[t]
        try:
            return self.fn(q, k, v, block_mask=mask)
        except Exception:
            if not self.dynamic:
                raise
            self.dynamic = False
            self.fn = torch.compile(self.flex_attention, dynamic=False)
            return self.fn(q, k, v, block_mask=mask)


def make_impls(flex: Flex | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from headwise.kernels import tiled_attention

    def sdpa(backend):
        def run(q, k, v, causal):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run

    impls = {
        "headwise": lambda q, k, v, causal: tiled_attention(q, k, v, causal=causal),
        "flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
    }
    if flex is not None:
        impls["flex"] = flex.call
    return impls


def bench_point(impls, flex, head_dim, seq, causal, warmup, rep):
    """Times (ms) and TFLOP/s of every implementation at one shape."""
    from triton.testing import do_bench

    batch = max(1, TOKENS // seq)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd():  # (B, H, T, D) views of (B, T, H, D) buffers, as the layer makes them
        x = torch.randn(batch, seq, HEADS, head_dim, device="cuda", dtype=torch.bfloat16,
                        generator=g)
        return x.transpose(1, 2).requires_grad_()

    q, k, v = rnd(), rnd(), rnd()
    dout = torch.randn(batch, HEADS, seq, head_dim, device="cuda", dtype=torch.bfloat16,
                       generator=g)
    row = {"head_dim": head_dim, "seq": seq, "batch": batch, "causal": causal,
           "ms": {"fwd": {}, "fwd+bwd": {}}, "tflops": {"fwd": {}, "fwd+bwd": {}},
           "errors": {}, "max_abs_diff_vs_first_torch": None}
    reference_out = hw_out = None
    for name, fn in impls.items():
        if name == "flex" and flex.spent_s > flex.budget_s:
            row["errors"][name] = f"skipped: flex compile budget ({flex.budget_s:.0f} s) spent"
            continue
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                out = fn(q, k, v, causal)
            step_out = fn(q, k, v, causal)
            step_out.backward(dout)
            torch.cuda.synchronize()
        except Exception as e:  # an unavailable kernel or an unsupported shape
            row["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            torch.cuda.synchronize()
            continue
        finally:
            if name == "flex":
                flex.spent_s += time.perf_counter() - t0
        if name == "headwise":
            hw_out = out
        elif reference_out is None:
            reference_out = out
        del step_out

        def fwd(fn=fn):
            with torch.no_grad():
                fn(q, k, v, causal)

        def fwd_bwd(fn=fn):
            fn(q, k, v, causal).backward(dout)

        for mode, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            ms = do_bench(f, warmup=warmup, rep=rep, grad_to_none=[q, k, v],
                          return_mode="median")
            row["ms"][mode][name] = ms
            row["tflops"][mode][name] = flops(batch, seq, head_dim, causal, mode) / ms * 1e-9
    if reference_out is not None and hw_out is not None:
        diff = (hw_out.float() - reference_out.float()).abs().max().item()
        row["max_abs_diff_vs_first_torch"] = diff
    return row


def fmt(x: float | None, digits: int = 0) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def tables(rows: list[dict], peak: float | None) -> str:
    out = []
    for mode in ("fwd", "fwd+bwd"):
        out.append(f"\n### {mode}, bf16, {HEADS} heads, {TOKENS} tokens per batch (TFLOP/s)\n")
        out.append("| D | causal | T | B | headwise | flash | cudnn | efficient | flex "
                   "| headwise / best torch | headwise % of peak |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            tf = r["tflops"][mode]
            torch_best = max((tf[n] for n in TORCH_IMPLS if n in tf), default=None)
            hw = tf.get("headwise")
            ratio = None if (hw is None or not torch_best) else hw / torch_best
            frac = None if (hw is None or peak is None) else 100 * hw / peak
            cells = [fmt(tf.get(n)) for n in ("headwise", *TORCH_IMPLS)]
            out.append(f"| {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seq']} "
                       f"| {r['batch']} | " + " | ".join(cells)
                       + f" | {fmt(ratio, 2)} | {fmt(frac, 1)} |")
    return "\n".join(out)


def write(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / path.name).write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_attention.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "nothing was measured.", file=sys.stderr)
        return 2
    import triton

    name = torch.cuda.get_device_name()
    peak = args.peak if args.peak is not None else detect_peak(name)
    seqs, head_dims = ([512], [64]) if args.quick else (SEQS, HEAD_DIMS)
    warmup, rep = (5, 20) if args.quick else (25, 100)
    flex = None
    flex_error = None
    if not args.no_flex:
        try:
            flex = Flex(args.flex_compile_budget_s)
        except Exception as e:
            flex_error = f"{type(e).__name__}: {e}"
    impls = make_impls(flex)
    payload = {
        "device": name, "peak_tflops_bf16_dense": peak, "torch": torch.__version__,
        "triton": triton.__version__, "python": platform.python_version(),
        "dtype": "bfloat16", "heads": HEADS, "tokens_per_batch": TOKENS,
        "flops": "4*B*H*T^2*D forward, x3.5 forward+backward, /2 causal",
        "timing": f"triton.testing.do_bench median, warmup={warmup} ms, rep={rep} ms",
        "flex_error": flex_error, "flex_dynamic_shapes": None, "skipped_for_time": [],
        "rows": [],
    }
    print(f"# {name}: peak {fmt(peak, 1)} TFLOP/s bf16 dense; torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    start = time.perf_counter()
    for head_dim in head_dims:
        for causal in (False, True):
            for seq in seqs:
                if time.perf_counter() - start > args.budget_s:
                    payload["skipped_for_time"].append([head_dim, causal, seq])
                    continue
                t0 = time.perf_counter()
                row = bench_point(impls, flex, head_dim, seq, causal, warmup, rep)
                payload["rows"].append(row)
                payload["flex_dynamic_shapes"] = None if flex is None else flex.dynamic
                write(payload, args.out)
                hw = row["tflops"]["fwd+bwd"].get("headwise")
                print(f"D={head_dim} causal={causal} T={seq}: headwise fwd+bwd "
                      f"{fmt(hw)} TFLOP/s, diff vs torch {row['max_abs_diff_vs_first_torch']}, "
                      f"errors {row['errors'] or '-'} ({time.perf_counter() - t0:.1f} s)",
                      flush=True)
    write(payload, args.out)
    print(tables(payload["rows"], peak))
    if payload["skipped_for_time"]:
        print(f"\nskipped for time (--budget-s {args.budget_s:.0f}): "
              f"{payload['skipped_for_time']}")
    print(f"\nwrote {args.out}" + (f" and $OUT/{args.out.name}" if os.environ.get("OUT") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
