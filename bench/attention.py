"""Self-attention forward+backward: headwise vs torch.nn.MultiheadAttention.

d_model 512, 8 heads, batch 8, T in {128, 512, 2048}, causal and not, fp32 on the
CPU (``--precision bf16``: every implementation under the same bf16
``torch.autocast``). Rows: headwise MultiHeadAttention (backend auto), headwise.nn.MultiheadAttention
(the drop-in), torch.nn.MultiheadAttention, and headwise's reference backend (the
textbook loop over heads). All share the same weights and inputs; outputs are
checked to agree before anything is timed.

Time: median of --repeats runs after a warm-up, runs of the implementations
interleaved so that machine noise hits them alike. Peak memory: the growth of the
process's peak resident set during one forward+backward, each measured in a fresh
subprocess. Run: ``headwise bench attention`` or ``python bench/attention.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from headwise.app.cli_types import HelpFormatter, positive_int
from headwise.attention import MultiHeadAttention
from headwise.nn import MultiheadAttention as DropIn

D_MODEL, HEADS, BATCH = 512, 8, 8
IMPLS = ["headwise", "headwise.nn", "torch", "reference"]
RESULTS = Path(__file__).resolve().parent / "results"


def build(impl: str, seq: int, causal: bool, seed: int = 0):
    """Return ``step()``: one forward+backward of ``impl`` on fixed inputs."""
    torch.manual_seed(seed)
    theirs = torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
    x = torch.randn(BATCH, seq, D_MODEL, requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(seq) if causal else None
    if impl == "torch":
        def step():
            out, _ = theirs(x, x, x, attn_mask=mask, is_causal=causal, need_weights=False)
            out.sum().backward()
            return out
        return step
    if impl == "headwise.nn":
        ours = DropIn(D_MODEL, HEADS, batch_first=True)
        ours.load_state_dict(theirs.state_dict())

        def step():
            out, _ = ours(x, x, x, attn_mask=mask, is_causal=causal, need_weights=False)
            out.sum().backward()
            return out
        return step
    layer = MultiHeadAttention(D_MODEL, HEADS, backend="auto" if impl == "headwise" else "reference")
    with torch.no_grad():  # torch's in_proj is our fused QKV weight for H == Hkv
        layer.qkv_weight.copy_(theirs.in_proj_weight)
        layer.qkv_bias.copy_(theirs.in_proj_bias)
        layer.out_proj.load_state_dict(theirs.out_proj.state_dict())

    def step():
        out = layer(x, causal=causal)
        out.sum().backward()
        return out
    return step


def peak_memory_mb(impl: str, seq: int, causal: bool, precision: str = "fp32") -> float:
    """Peak memory (MB) above the resident set before one forward+backward, in a fresh
    process. Large blocks are mmapped (MALLOC_MMAP_THRESHOLD_) so freed memory leaves
    the resident set, and the kernel's peak (VmHWM) is reset just before the step."""
    bench_dir = str(Path(__file__).resolve().parent)
    code = (
        f"import sys; sys.path.insert(0, {bench_dir!r}); import attention as b, gc\n"
        f"s = b.build({impl!r}, {seq}, {causal!r}); gc.collect()\n"
        "def kb(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1])\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "import torch, contextlib\n"
        f"ctx = torch.autocast('cpu', dtype=torch.bfloat16) if {precision!r} == 'bf16' else contextlib.nullcontext()\n"
        "r0 = kb('VmRSS:')\n"
        "with ctx: s()\n"
        "print((kb('VmHWM:') - r0) / 1024)"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def physical_memory_bytes() -> int | None:
    """The machine's physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(seqs: list[int], parser: argparse.ArgumentParser) -> None:
    """Refuse a ``--seq`` whose score matrices cannot fit: the reference backend and
    torch's module hold about four ``(batch, heads, T, T)`` fp32 tensors at once (the
    scores, their softmax and both gradients)."""
    memory = physical_memory_bytes()
    if memory is None:
        return
    for seq in seqs:
        need = 4 * BATCH * HEADS * seq * seq * 4
        if need > memory:
            parser.error(f"argument --seq: T={seq} needs about {need / 2**30:,.0f} GiB for the "
                         f"{BATCH} x {HEADS} x T x T score matrices, more than this machine's "
                         f"{memory / 2**30:.0f} GiB")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("--seq", type=positive_int, nargs="+", default=[128, 512, 2048],
                   help="sequence lengths T to time")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per implementation (median)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16: all implementations under the same CPU autocast")
    p.add_argument("--out", type=Path, default=RESULTS / "attention_cpu.json",
                   help="JSON results file (headwise bench attention: a new file under runs/bench/)")
    args = p.parse_args(argv)
    check_fits(args.seq, p)
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    bf16 = args.precision == "bf16"
    precision = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    tol = dict(atol=5e-2, rtol=5e-2) if bf16 else dict(atol=1e-4, rtol=1e-4)
    print(f"# forward+backward self-attention, d_model {D_MODEL}, {HEADS} heads, batch {BATCH}, "
          f"{args.precision}, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    header = (f"{'T':>5} {'causal':>6} | " + " | ".join(f"{i:>11}" for i in IMPLS)
              + " | torch/headwise | torch/nn | peak MB: headwise, torch, reference")
    print(header)
    for seq in args.seq:
        for causal in (False, True):
            steps = {i: build(i, seq, causal) for i in IMPLS}
            with precision():
                outs = {i: steps[i]().detach().float() for i in IMPLS}  # also the warm-up
            for i in IMPLS:
                torch.testing.assert_close(outs[i], outs["torch"], **tol)
            times = {i: [] for i in IMPLS}
            for _ in range(args.repeats):
                for i in IMPLS:
                    with precision():
                        t0 = time.perf_counter()
                        steps[i]()
                        times[i].append(time.perf_counter() - t0)
            med = {i: statistics.median(times[i]) for i in IMPLS}
            mem = {} if args.no_memory else {
                i: peak_memory_mb(i, seq, causal, args.precision) for i in ("headwise", "torch", "reference")
            }
            row = {
                "seq": seq,
                "causal": causal,
                "median_s": med,
                "all_s": times,
                "speedup_vs_torch": med["torch"] / med["headwise"],
                "dropin_speedup_vs_torch": med["torch"] / med["headwise.nn"],
                "peak_mb": mem,
            }
            rows.append(row)
            mem_s = ", ".join(f"{mem[i]:.0f}" for i in mem) if mem else "-"
            print(f"{seq:>5} {str(causal):>6} | " + " | ".join(f"{med[i] * 1e3:9.1f}ms" for i in IMPLS)
                  + f" | {row['speedup_vs_torch']:13.2f}x | {row['dropin_speedup_vs_torch']:7.2f}x | {mem_s}")
    result = {
        "benchmark": "attention_cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
