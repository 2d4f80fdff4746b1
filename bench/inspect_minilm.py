"""How long does ``headwise inspect`` take on the CPU? all-MiniLM-L6-v2 over 500 EWT sentences.

Times, each the median of ``--repeats`` runs on the same inputs:

* ``inspect_model`` end to end (tokenise, capture every head's attention in
  length-sorted batches, token-level measures, the word-level syntax probe, induction
  scores, roles; ``keep_examples=8`` as the command keeps);
* ``write_report`` (``report.html``, ``measures.json``, three PNG figures);
* the peer: Hugging Face ``transformers`` running the same checkpoint
  (``AutoModel``, ``output_attentions=True``, eager attention) over the same padded
  batches, which only returns the maps (no measures): how much of inspect's time is
  the forward passes themselves.

    PYTHONPATH=src python bench/inspect_minilm.py            # ~1-2 minutes on 2 cores
    PYTHONPATH=src python bench/inspect_minilm.py --quick    # smoke run (50 sentences, 1 repeat)

Prints the medians and ratios and writes bench/results/inspect_minilm.json. Target:
the whole inspection of 500 sentences in under a minute on this CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from headwise.app.cli_types import positive_int
from headwise.app.inspection import inspect_model
from headwise.inspect import align_words, read_conllu
from headwise.inspect.report import write_report
from headwise.models.hf import load_minilm, packaged_model_path, resolve_model_folder

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "en_ewt-ud-dev.conllu"


def _peer_model():
    """The same checkpoint in transformers (eager attention, so it can return the maps)."""
    try:
        from transformers import AutoModel
    except ImportError:
        return None
    folder = resolve_model_folder(packaged_model_path("minilm"))
    return AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()


def _peer_seconds(model, sentences: list, tok, batch_size: int) -> float:
    """transformers' own forward with output_attentions over the same length-sorted batches."""
    seqs = sorted((align_words(s.words, tok)[0] for s in sentences), key=len)
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(0, len(seqs), batch_size):
            chunk = seqs[k : k + batch_size]
            t = max(len(s) for s in chunk)
            ids = torch.zeros(len(chunk), t, dtype=torch.long)
            mask = torch.zeros(len(chunk), t, dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
            assert len(out.attentions) == 6
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conllu", type=Path, default=DEFAULT_DATA, help="CoNLL-U file (default: EWT dev)")
    p.add_argument("--sentences", type=positive_int, default=None, help="sentences to inspect (default 500)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs (default 3)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--quick", action="store_true", help="50 sentences, 1 repeat")
    p.add_argument("--out", type=Path, default=RESULTS / "inspect_minilm.json")
    args = p.parse_args(argv)
    if args.quick:
        given = [f for f, v in (("--sentences", args.sentences), ("--repeats", args.repeats)) if v is not None]
        if given:
            p.error(f"{' and '.join(given)} {'have' if len(given) > 1 else 'has'} no effect with --quick, which "
                    f"sets 50 sentences and 1 repeat; drop {'them' if len(given) > 1 else 'it'} or --quick")
    args.sentences = args.sentences or (50 if args.quick else 500)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if not args.conllu.is_file():
        print(f"--conllu {str(args.conllu)!r}: no such file", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sentences = read_conllu(args.conllu)[: args.sentences]
    model, tok = load_minilm()
    peer_model = _peer_model()

    inspect_s, report_s, peer_s = [], [], []
    stages: list[dict[str, float]] = []
    result = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = inspect_model(model, sentences, tok, batch_size=args.batch_size, keep_examples=8)
        inspect_s.append(time.perf_counter() - t0)
        stages.append(dict(result.timings))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_report(result, tmp)
            report_s.append(time.perf_counter() - t0)
        if peer_model is not None:
            peer_s.append(_peer_seconds(peer_model, sentences, tok, args.batch_size))
    assert result is not None
    med = statistics.median
    out = {
        "what": "headwise inspect on all-MiniLM-L6-v2, CPU",
        "data": {"file": args.conllu.name, "sentences": result.data["n_sentences"], "words": result.data["n_words"],
                 "tokens": result.data["n_tokens"]},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version()},
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "inspect_model_s": {"median": med(inspect_s), "runs": inspect_s},
        "write_report_s": {"median": med(report_s), "runs": report_s},
        "total_s": med(inspect_s) + med(report_s),
        "inspect_stages_s": {k: med(s[k] for s in stages) for k in stages[0]},
        "peer_transformers_attentions_s": {"median": med(peer_s), "runs": peer_s} if peer_s else None,
        "target_s": 60.0,
    }
    print(f"{out['data']['sentences']} sentences ({out['data']['tokens']} tokens), {args.threads} threads, "
          f"median of {args.repeats}:")
    print(f"  inspect_model  {med(inspect_s):7.2f} s   stages: "
          + ", ".join(f"{k} {v:.2f}" for k, v in out["inspect_stages_s"].items()))
    print(f"  write_report   {med(report_s):7.2f} s")
    print(f"  total          {out['total_s']:7.2f} s   (target < 60 s: {'met' if out['total_s'] < 60 else 'MISSED'})")
    if peer_s:
        print(f"  peer: transformers forward with output_attentions {med(peer_s):.2f} s; "
              f"inspect_model / peer = {med(inspect_s) / med(peer_s):.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
