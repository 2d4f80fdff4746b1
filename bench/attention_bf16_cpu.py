"""bf16 attention on the CPU: headwise's ``sdpa`` backend vs torch's fused kernel.

The attention alone (no projections), forward + backward, bf16 inputs laid out as the
layer makes them (``(B, H, T, D)`` views of ``(B, T, H, D)``), 64-wide heads, full
and causal, over a range of batch, heads and lengths. headwise's backend sends the
short calls through backends/cpu_short.py (bf16 GEMMs around a float32 softmax) and
the rest to ``torch.nn.functional.scaled_dot_product_attention``; the peer is that
torch function called directly. The outputs are checked to agree first. Rounds
alternate the two; the figure is the median over ``--rounds``.

Run: ``python bench/attention_bf16_cpu.py`` (JSON to bench/results/).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from headwise.app.cli_types import positive_int
from headwise.attention.backends.cpu_causal import blocked_causal_applies
from headwise.attention.backends.cpu_short import short_bf16_applies
from headwise.attention.backends.sdpa import SdpaBackend
from headwise.attention.masks import MaskSpec

RESULTS = Path(__file__).resolve().parent / "results"
HEAD_DIM = 64
SHAPES = [(64, 4, 64), (32, 4, 128), (8, 8, 128), (16, 4, 256), (8, 8, 256), (8, 8, 512)]


def inputs(b: int, h: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, h, HEAD_DIM, generator=g).to(torch.bfloat16).transpose(1, 2)
               .requires_grad_() for _ in range(3))
    dout = torch.randn(b, h, t, HEAD_DIM, generator=g).to(torch.bfloat16)
    return q, k, v, dout


def steps(backend: SdpaBackend, q, k, v, dout, causal: bool):
    """One forward + backward through headwise's backend, and through torch's function."""
    spec = MaskSpec(batch=q.shape[0], q_len=q.shape[2], k_len=k.shape[2], causal=causal)

    def ours():
        out, _ = backend.attend(q, k, v, spec, scale=HEAD_DIM**-0.5, dropout_p=0.0,
                                need_weights=False)
        out.backward(dout)
        return out

    def theirs():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out.backward(dout)
        return out

    return ours, theirs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=9, help="alternating timed rounds (median)")
    p.add_argument("--out", type=Path, default=RESULTS / "attention_bf16_cpu.json")
    args = p.parse_args(argv)
    backend = SdpaBackend()
    print(f"# bf16 attention forward+backward, head dim {HEAD_DIM}, CPU "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"{'B':>3} {'H':>2} {'T':>4} {'causal':>6} | {'headwise':>9} | {'torch':>9} | ratio | path")
    rows = []
    for b, h, t in SHAPES:
        for causal in (False, True):
            q, k, v, dout = inputs(b, h, t)
            ours, theirs = steps(backend, q, k, v, dout, causal)
            torch.testing.assert_close(ours().float(), theirs().float(), atol=3e-2, rtol=3e-2)
            times: dict[str, list[float]] = {"headwise": [], "torch": []}
            for r in range(args.rounds):
                pair = [("headwise", ours), ("torch", theirs)]
                for name, fn in pair if r % 2 == 0 else reversed(pair):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            med = {n: statistics.median(x) for n, x in times.items()}
            path = ("cpu_short" if short_bf16_applies(q, k) else
                    "cpu_causal blocks" if causal and blocked_causal_applies(q, k, v, 0.0) else
                    "torch kernel")
            row = {"batch": b, "heads": h, "seq": t, "causal": causal, "median_s": med,
                   "all_s": times, "ratio": med["torch"] / med["headwise"], "path": path}
            rows.append(row)
            print(f"{b:>3} {h:>2} {t:>4} {str(causal):>6} | {med['headwise'] * 1e3:7.1f}ms | "
                  f"{med['torch'] * 1e3:7.1f}ms | {row['ratio']:4.2f}x | {path}")
    result = {"benchmark": "attention_bf16_cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "rounds": args.rounds, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
