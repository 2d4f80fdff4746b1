"""int8 attention (headwise.kernels.int8_attention) against bf16 attention on one GPU.

Forward TFLOP/s, bf16 inputs, 16 heads, head dims 64 and 128, causal and not,
sequence lengths 1k ... 16k at 16k tokens per batch (batch = 16384 // T). Peers on
the same inputs: headwise's bf16 tiled kernel and F.scaled_dot_product_attention
(FLASH_ATTENTION, else PyTorch's choice). FLOPs: 4 * B * H * T^2 * D, halved when
causal (the same count for every implementation, so ratios are time ratios).
Accuracy on the same inputs: relative L2 error and worst-row cosine of int8 and of
the bf16 tiled kernel against fp32 SDPA.

Before the sweep it checks, in a few seconds, that the CUDA int8 paths run and are
accurate: Int8Linear (torch._int_mm, per-token activations) against F.linear, and a
tiny bf16 model quantised with ``quantize(..., "int8", attention="int8")``
(every block's cosine against the bf16 model).

    PYTHONPATH=src python bench/gpu_int8_attention.py          # ~2-3 minutes on an H100
    PYTHONPATH=src python bench/gpu_int8_attention.py --quick  # smoke run, 2 shapes

Writes bench/results/gpu_int8_attention.json (and $OUT/gpu_int8_attention.json when
OUT is set), rewritten after every shape. Without CUDA it exits with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpu_attention import fmt, write  # the sibling benchmark's table cell and JSON writer

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 16384
HEADS = 16
SEQS = [1024, 2048, 4096, 8192, 16384]
HEAD_DIMS = [64, 128]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two shapes (smoke)")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting new shapes after this (s)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_int8_attention.json")
    return p.parse_args(argv)


def rel_and_cos(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.float().flatten(0, -2), ref.float().flatten(0, -2)
    rel = ((o - r).norm() / r.norm()).item()
    cos = F.cosine_similarity(o, r, dim=-1).min().item()
    return rel, cos


def check_modules() -> dict:
    """The CUDA int8 paths: Int8Linear via torch._int_mm, and a quantised tiny model."""
    from headwise.formats import Int8Linear, compare_formats, quantize
    from headwise.models import Decoder, ModelConfig

    out: dict = {}
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(1000, 768, device="cuda", generator=g) * 0.02
    b = torch.randn(1000, device="cuda", generator=g)
    x = torch.randn(4, 300, 768, device="cuda", generator=g)
    lin = Int8Linear.from_float(w, b)
    for dtype in (torch.float32, torch.bfloat16):
        y = lin(x.to(dtype))
        out[f"int8_linear_rel_err_{str(dtype)[6:]}"] = rel_and_cos(y, F.linear(x, w, b))[0]
    out["int8_linear_small_m_rel_err"] = rel_and_cos(lin(x[:1, :5]), F.linear(x[:1, :5], w, b))[0]
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=512)
    model = Decoder(cfg).cuda().to(torch.bfloat16).eval()
    q = quantize(model, "int8", attention="int8")
    ids = torch.randint(0, 1000, (8, 512), device="cuda")
    with torch.no_grad():
        report = compare_formats(model, q, [ids])
    out["tiny_decoder_int8_layer_cosines"] = {k: v["cosine"] for k, v in report["layers"].items()}
    out["tiny_decoder_int8_output_cosine"] = report["output"]["cosine"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_int8_attention.py needs a CUDA GPU (int8 tensor cores); none is visible here. "
              "Run it on a GPU machine: PYTHONPATH=src python bench/gpu_int8_attention.py", file=sys.stderr)
        return 2
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    from headwise.kernels import tiled_attention
    from headwise.kernels.int8_attention import int8_attention

    name = torch.cuda.get_device_name()
    result = {"device": name, "torch": torch.__version__, "heads": HEADS, "tokens": TOKENS,
              "command": "PYTHONPATH=src python bench/gpu_int8_attention.py" + (" --quick" if args.quick else ""),
              "checks": {}, "rows": []}
    t0 = time.perf_counter()
    try:
        result["checks"] = check_modules()
    except Exception as e:  # report and go on to the kernel sweep
        result["checks"] = {"error": f"{type(e).__name__}: {e}"}
    print("checks:", json.dumps(result["checks"], indent=1))
    write(result, args.out)

    def sdpa(q, k, v, causal):
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except RuntimeError:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    impls = {
        "int8": lambda q, k, v, c: int8_attention(q, k, v, causal=c),
        "tiled_bf16": lambda q, k, v, c: tiled_attention(q, k, v, causal=c),
        "sdpa_bf16": sdpa,
    }
    shapes = [(d, t, c) for d in HEAD_DIMS for t in SEQS for c in (False, True)]
    if args.quick:
        shapes = [(64, 1024, False), (128, 4096, True)]
    print("| D | T | causal | int8 TFLOP/s | tiled bf16 | sdpa bf16 | int8/tiled | int8/sdpa | int8 rel err | "
          "tiled rel err |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for d, t, causal in shapes:
        if time.perf_counter() - t0 > args.budget_s:
            result["stopped"] = f"time budget {args.budget_s:.0f} s spent"
            break
        batch = max(1, TOKENS // t)
        g = torch.Generator(device="cuda").manual_seed(0)
        # (B, H, T, D) views of (B, T, H, D) buffers, as the layer makes them
        q, k, v = (torch.randn(batch, t, HEADS, d, device="cuda", dtype=torch.bfloat16, generator=g)
                   .transpose(1, 2) for _ in range(3))
        k = k + 0.5  # a shared key offset, as trained models have
        flops = 4.0 * batch * HEADS * t * t * d / (2 if causal else 1)
        row: dict = {"head_dim": d, "seq": t, "batch": batch, "causal": causal, "tflops": {}, "ms": {},
                     "rel_err_vs_fp32": {}, "min_row_cosine_vs_fp32": {}, "errors": {}}
        with torch.no_grad():
            ref = sdpa(q.float(), k.float(), v.float(), causal)
            for impl, fn in impls.items():
                try:
                    out = fn(q, k, v, causal)
                    torch.cuda.synchronize()
                except Exception as e:
                    row["errors"][impl] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    continue
                row["rel_err_vs_fp32"][impl], row["min_row_cosine_vs_fp32"][impl] = rel_and_cos(out, ref)
                ms = do_bench(lambda fn=fn, q=q, k=k, v=v, c=causal: fn(q, k, v, c), warmup=25, rep=100,
                              return_mode="median")
                row["ms"][impl], row["tflops"][impl] = ms, flops / ms * 1e-9
            del ref
        result["rows"].append(row)
        write(result, args.out)
        tf = row["tflops"]

        def ratio(a, b, tf=tf):
            return None if a not in tf or b not in tf else tf[a] / tf[b]

        print(f"| {d} | {t} | {causal} | {fmt(tf.get('int8'))} | {fmt(tf.get('tiled_bf16'))} | "
              f"{fmt(tf.get('sdpa_bf16'))} | {fmt(ratio('int8', 'tiled_bf16'), 2)} | "
              f"{fmt(ratio('int8', 'sdpa_bf16'), 2)} | {fmt(row['rel_err_vs_fp32'].get('int8'), 4)} | "
              f"{fmt(row['rel_err_vs_fp32'].get('tiled_bf16'), 4)} |" + (f" errors: {row['errors']}"
                                                                            if row["errors"] else ""))
    write(result, args.out)
    print(f"wrote {args.out}" + (f" and $OUT/{args.out.name}" if os.environ.get("OUT") else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
