"""Training throughput: headwise's objectives vs Hugging Face transformers, same configs.

Three pairs, each built from one config with the same widths, initial weights drawn
independently (throughput does not depend on the values), the same batches and the
same optimizer step (AdamW, clip at 1.0):

* ``mlm``: headwise :class:`~headwise.objectives.MaskedLM` vs ``BertForMaskedLM``
  (labels -100 outside the masked positions, as a transformers user trains it);
* ``rtd``: headwise :class:`~headwise.objectives.ReplacedTokenDetection` vs
  ``ElectraForPreTraining`` with an ``ElectraForMaskedLM`` generator whose embeddings
  are the discriminator's (ELECTRA's recipe: MLM loss + 50 x BCE, samples drawn
  without gradient);
* ``clm``: headwise :class:`~headwise.objectives.CausalLM` vs ``GPT2LMHeadModel``.

Both sides get the headwise architecture of their transformers twin: post-norm,
exact GELU, token types and eps 1e-12 for BERT/ELECTRA; pre-norm and tanh GELU for
GPT-2. Sizes: ``tiny`` (4 layers, 128 wide, FFN 512) and ``electra-small`` widths
(12 layers, 256 wide, FFN 1024, 4 heads; ELECTRA's 128-wide factorised embeddings
for rtd, embeddings as wide as the model for mlm and clm, which BERT and GPT-2
require); vocab 8192, dropout off, batch 32 x 128, fp32 (``--precision bf16``
adds autocast rows, both sides under the same ``torch.autocast``).

Each round times ``--steps`` optimizer steps of every implementation, in alternating
order; the figure is the median step time over ``--rounds`` rounds. Model FLOP
utilisation (MFU) counts the matmul FLOPs the objective needs (3x the forward: every
layer on every token, the vocabulary projection only on the rows that are scored)
against the machine's fp32 GEMM rate measured in the same run: the faster of a 2048^3
``torch.matmul`` (MKL on x86) and the same GEMM in oneDNN, which headwise's fp32 CPU
linears use where it is faster (kernels/cpu_linear.py; on AMD CPUs MKL runs AVX2 code).
Each rate is the median of a measurement at the start and one in every round, as the
machine may be shared; the MFU against ``torch.matmul`` alone is reported too.
``--cpu-linear torch`` runs headwise's linears on torch's matmul, as transformers' are.
``--malloc keep`` keeps freed memory in the process (both sides), as headwise's trainer
does (hardware/memory.py); by default glibc's malloc is left as it is. The JSON has the
median minor page faults per step of each side.

Run: ``python bench/train_throughput.py`` (JSON to ``bench/results/``); short:
``--rounds 2 --steps 1 --sizes tiny --objectives clm``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from headwise.app.cli_types import positive_int
from headwise.hardware import memory
from headwise.kernels.cpu_linear import cpu_linear_choice, dense, onednn_available, set_cpu_linear
from headwise.models import Decoder, EncoderForMLM, ModelConfig, build_electra
from headwise.objectives import IGNORE_INDEX, CausalLM, MaskedLM, ReplacedTokenDetection
from headwise.objectives.mlm import TokenMasker

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB, BATCH, SEQ = 8192, 32, 128
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (UNK, CLS, SEP)
SIZES = {
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, d_ff=512),
    "electra-small": dict(d_model=256, n_layers=12, n_heads=4, d_ff=1024),
}
OBJECTIVES = ("mlm", "rtd", "clm")
DISC_WEIGHT = 50.0


def headwise_config(objective: str, size: str) -> ModelConfig:
    widths = SIZES[size]
    if objective == "clm":  # GPT-2
        return ModelConfig(vocab_size=VOCAB, max_len=SEQ, norm="pre", activation="gelu_tanh",
                           layer_norm_eps=1e-5, dropout=0.0, attn_dropout=0.0, **widths)
    embedding_size = 128 if objective == "rtd" else None  # ELECTRA factorises; BERT cannot
    return ModelConfig(vocab_size=VOCAB, max_len=SEQ, norm="post", activation="gelu",
                       layer_norm_eps=1e-12, type_vocab_size=2, embedding_size=embedding_size,
                       dropout=0.0, attn_dropout=0.0, **widths)


def masker_kwargs() -> dict:
    return dict(vocab_size=VOCAB, mask_id=MASK, pad_id=PAD, special_ids=list(SPECIALS))


def make_batches(n: int, seq: int, seed: int) -> list[torch.Tensor]:
    """``n`` batches of random non-special token ids, ``[CLS] ... [SEP]`` framed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = torch.randint(5, VOCAB, (BATCH, seq), generator=g)
        b[:, 0], b[:, -1] = CLS, SEP
        out.append(b)
    return out


# --------------------------------------------------------------------------- FLOPs
def _encoder_flops_per_token(cfg: ModelConfig, seq: int, causal: bool) -> float:
    """Forward matmul FLOPs of one token through the blocks (and embed_proj)."""
    d, f = cfg.d_model, cfg.d_ff
    qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    per_layer = 2 * d * qkv + 2 * cfg.n_heads * cfg.head_dim * d + 2 * 2 * d * f
    # scores and weighted values: 2 * (T * Dh) each per head, half of it when causal
    attn = 2 * 2 * seq * cfg.n_heads * cfg.head_dim * (0.5 if causal else 1.0)
    proj = 2 * cfg.embedding_size * d if cfg.embedding_size != d else 0
    return cfg.n_layers * (per_layer + attn) + proj


def step_flops(objective: str, cfg: ModelConfig, n_tokens: int, n_scored: float, seq: int) -> float:
    """Training matmul FLOPs (3x forward) of one step the objective needs."""
    v, e, d = cfg.vocab_size, cfg.embedding_size, cfg.d_model
    if objective == "clm":
        fwd = n_tokens * (_encoder_flops_per_token(cfg, seq, True) + 2 * d * v)
    elif objective == "mlm":
        fwd = n_tokens * _encoder_flops_per_token(cfg, seq, False) + n_scored * (2 * d * e + 2 * e * v)
    else:
        from headwise.models import generator_config

        g = generator_config(cfg)
        disc = n_tokens * (_encoder_flops_per_token(cfg, seq, False) + 2 * d * d + 2 * d)
        gen = n_tokens * _encoder_flops_per_token(g, seq, False) + n_scored * (
            2 * g.d_model * e + 2 * e * v)
        fwd = disc + gen
    return 3.0 * fwd


def gemm_rate(n: int = 2048, reps: int = 5, library: str = "torch") -> float:
    """fp32 GEMM FLOP/s on two ``n x n`` matrices (median of ``reps``): ``torch``'s
    ``torch.matmul`` (MKL on x86) or ``onednn``'s linear, the one headwise's
    kernels/cpu_linear.py takes where it is faster."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    def run():
        return dense(a, b, None, True) if library == "onednn" else torch.matmul(a, b)

    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def gemm_libraries() -> list[str]:
    """The fp32 GEMM libraries this torch has: torch's matmul, and oneDNN where built in."""
    return ["torch", "onednn"] if onednn_available() else ["torch"]


def best_gemm_rate(reps: int = 5) -> dict[str, float]:
    """Each library's 2048^3 fp32 rate, and under ``best`` the higher: the machine's rate."""
    rates = {lib: gemm_rate(reps=reps, library=lib) for lib in gemm_libraries()}
    rates["best"] = max(rates.values())
    return rates


# --------------------------------------------------------------------------- steps
@dataclass
class Impl:
    name: str
    params: list
    loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def headwise_impl(objective: str, cfg: ModelConfig) -> Impl:
    if objective == "mlm":
        obj = MaskedLM(EncoderForMLM(cfg), **masker_kwargs())
    elif objective == "rtd":
        generator, discriminator = build_electra(cfg)
        obj = ReplacedTokenDetection(discriminator, generator, disc_weight=DISC_WEIGHT,
                                     **masker_kwargs())
    else:
        obj = CausalLM(Decoder(cfg), pad_id=PAD)
    obj.train()

    def loss(batch, gen):
        return obj(batch, generator=gen, metrics=False).loss

    return Impl("headwise", list(obj.parameters()), loss)


def hf_impl(objective: str, cfg: ModelConfig) -> Impl:
    import transformers as tf

    common = dict(vocab_size=cfg.vocab_size, num_hidden_layers=cfg.n_layers,
                  max_position_embeddings=cfg.max_len, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.layer_norm_eps,
                  type_vocab_size=2, hidden_act="gelu", pad_token_id=PAD)
    if objective == "clm":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model,
            n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=cfg.layer_norm_eps)).train()

        def loss(batch, gen):
            labels = batch[:, 1:].masked_fill(batch[:, 1:] == PAD, IGNORE_INDEX)
            return model(input_ids=batch[:, :-1], labels=batch[:, :-1], shift_labels=labels).loss

        return Impl("transformers", list(model.parameters()), loss)

    masker = TokenMasker(**masker_kwargs(), mask_token_prob=0.8 if objective == "mlm" else 0.85,
                         random_token_prob=0.1 if objective == "mlm" else 0.0)
    if objective == "mlm":
        model = tf.BertForMaskedLM(tf.BertConfig(
            hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads,
            intermediate_size=cfg.d_ff, **common)).train()

        def loss(batch, gen):
            inputs, selected = masker(batch, gen)
            labels = batch.masked_fill(~selected, IGNORE_INDEX)
            return model(input_ids=inputs, labels=labels).loss

        return Impl("transformers", list(model.parameters()), loss)

    from headwise.models import generator_config

    g = generator_config(cfg)
    disc = tf.ElectraForPreTraining(tf.ElectraConfig(
        embedding_size=cfg.embedding_size, hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff, **common)).train()
    gen_model = tf.ElectraForMaskedLM(tf.ElectraConfig(
        embedding_size=g.embedding_size, hidden_size=g.d_model, num_attention_heads=g.n_heads,
        intermediate_size=g.d_ff, **common)).train()
    gen_model.electra.embeddings = disc.electra.embeddings  # shared, as ELECTRA does
    gen_model.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    params = list({id(p): p for p in [*disc.parameters(), *gen_model.parameters()]}.values())

    def loss(batch, gen):
        inputs, selected = masker(batch, gen)
        labels = batch.masked_fill(~selected, IGNORE_INDEX)
        out = gen_model(input_ids=inputs, labels=labels)
        with torch.no_grad():
            probs = torch.softmax(out.logits[selected].detach().float(), dim=-1)
            sampled = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        corrupted = batch.clone()
        corrupted[selected] = sampled
        replaced = (corrupted != batch).long()
        d_out = disc(input_ids=corrupted, labels=replaced)
        return out.loss + DISC_WEIGHT * d_out.loss

    return Impl("transformers", params, loss)


#: AdamW implementation for both sides: "fused" (one kernel per parameter) or "default"
#: (torch's choice on the CPU: several elementwise ops per parameter)
ADAMW = {"fused": {"fused": True}, "default": {}}


def make_step(impl: Impl, precision: str, adamw: str = "fused"
              ) -> Callable[[torch.Tensor, torch.Generator], float]:
    decay = [p for p in impl.params if p.dim() >= 2]
    no_decay = [p for p in impl.params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, **ADAMW[adamw])

    def step(batch, gen):
        opt.zero_grad(set_to_none=True)
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        with ctx:
            loss = impl.loss(batch, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(impl.params, 1.0)
        opt.step()
        return loss.item()  # the one sync a progress bar needs

    return step


def bench_pair(objective: str, size: str, precision: str, rounds: int, steps: int,
               peak: dict[str, float], adamw: str = "fused") -> dict:
    cfg = headwise_config(objective, size)
    seq = SEQ + 1 if objective == "clm" else SEQ  # CLM: the model reads 128, scores 128
    torch.manual_seed(0)
    impls = [headwise_impl(objective, cfg), hf_impl(objective, cfg)]
    step_fns = [make_step(i, precision, adamw) for i in impls]
    batches = make_batches(steps + 1, seq, seed=1)
    gens = [torch.Generator().manual_seed(2) for _ in impls]
    first = [fn(batches[-1], g) for fn, g in zip(step_fns, gens, strict=True)]  # warm-up
    times: dict[str, list[float]] = {i.name: [] for i in impls}
    faults: dict[str, list[float]] = {i.name: [] for i in impls}  # minor page faults per step
    rates = []
    for r in range(rounds):
        rates.append(best_gemm_rate(reps=3))  # the machine is shared: its rate now, each round
        order = range(len(impls)) if r % 2 == 0 else reversed(range(len(impls)))
        for k in order:
            f0, t0 = minor_faults(), time.perf_counter()
            for b in batches[:steps]:
                step_fns[k](b, gens[k])
            times[impls[k].name].append((time.perf_counter() - t0) / steps)
            faults[impls[k].name].append((minor_faults() - f0) / steps)
    # expected scored rows: every maskable token is selected with p = 0.15
    maskable = BATCH * (SEQ - 2)
    n_tokens = BATCH * SEQ
    n_scored = n_tokens if objective == "clm" else 0.15 * maskable
    flops = step_flops(objective, cfg, n_tokens, n_scored, SEQ)
    med = {k: statistics.median(v) for k, v in times.items()}
    peaks = {lib: statistics.median([peak[lib], *(r[lib] for r in rates)]) for lib in peak}
    row = {
        "objective": objective, "size": size, "precision": precision,
        "first_loss": dict(zip(times, first, strict=True)),
        "median_step_s": med, "all_step_s": times,
        "median_page_faults_per_step": {k: statistics.median(v) for k, v in faults.items()},
        "tokens_per_s": {k: n_tokens / v for k, v in med.items()},
        "ratio": med["transformers"] / med["headwise"],
        "model_flops_per_step": flops,
        "gemm_flops_fp32": peaks["best"], "gemm_flops_fp32_by_library": peaks,
        "gemm_flops_fp32_rounds": rates,
        # against the fastest fp32 GEMM this torch runs here, and against torch.matmul's
        "mfu": {k: flops / v / peaks["best"] for k, v in med.items()},
        "mfu_vs_torch_matmul": {k: flops / v / peaks["torch"] for k, v in med.items()},
    }
    return row


def profile_pair(objective: str, size: str, precision: str, rows: int = 15, adamw: str = "fused") -> None:
    """Print the costliest ops of one training step of each side (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = headwise_config(objective, size)
    seq = SEQ + 1 if objective == "clm" else SEQ
    torch.manual_seed(0)
    batch = make_batches(1, seq, seed=1)[0]
    for impl in (headwise_impl(objective, cfg), hf_impl(objective, cfg)):
        step, gen = make_step(impl, precision, adamw), torch.Generator().manual_seed(2)
        step(batch, gen)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            step(batch, gen)
            took = time.perf_counter() - t0
        print(f"== {impl.name}: {size} {objective} {precision}, one step {took:.2f} s")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def commit_id() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        # results written by earlier runs do not change the code
        dirty = subprocess.run(["git", "status", "--porcelain", "src", "bench",
                                ":(exclude)bench/results"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# What this directory's A/B scripts (cpu_linear.py, gelu.py, malloc.py) share with this one.

def headwise_step(objective: str, size: str = "electra-small", n_batches: int = 2
                  ) -> tuple[Callable[[torch.Tensor, torch.Generator], float], list[torch.Tensor],
                             torch.Generator]:
    """headwise's fp32 training step for ``objective`` at ``size`` (fused AdamW), this
    script's batches for it and the generator its masking draws from."""
    cfg = headwise_config(objective, size)
    seq = SEQ + 1 if objective == "clm" else SEQ
    torch.manual_seed(0)
    step = make_step(headwise_impl(objective, cfg), "fp32", "fused")
    return step, make_batches(n_batches, seq, seed=1), torch.Generator().manual_seed(2)


def alternate(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each callable, called in alternating order after two warm-up
    calls each."""
    names = list(calls)
    for name in names * 2:
        calls[name]()
    got: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            calls[name]()
            got[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in got.items()}


def alternate_steps(step: Callable[[torch.Tensor, torch.Generator], float],
                    batches: list[torch.Tensor], gen: torch.Generator,
                    sides: dict[str, Callable[[], None]], pairs: int) -> dict[str, list[float]]:
    """Seconds per training step of each side, ``pairs`` times in alternating order: a
    side's callable switches to it, one untimed step settles, then ``batches`` are timed."""
    names = list(sides)
    got: dict[str, list[float]] = {name: [] for name in names}
    for r in range(pairs):
        for name in (names if r % 2 == 0 else names[::-1]):
            sides[name]()
            step(batches[0], gen)  # one step to settle after the switch
            t0 = time.perf_counter()
            for b in batches:
                step(b, gen)
            got[name].append((time.perf_counter() - t0) / len(batches))
    return got


def write_result(result: dict, out: Path, script: str, argv: list[str] | None) -> dict:
    """Add the commit and the command line to ``result`` and write it to ``out`` as JSON."""
    result["commit"] = commit_id()
    result["command"] = f"python bench/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=None,
                   help="interleaved rounds (default 5; not with --profile)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps per round (default 3; not with --profile)")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                   help="fp32 and/or bf16 (autocast on both sides; default fp32)")
    p.add_argument("--profile", action="store_true",
                   help="instead of timing, profile one step of each side (torch.profiler) and "
                        "print the ops that cost most")
    p.add_argument("--adamw", choices=list(ADAMW), default="fused",
                   help="AdamW for both sides: fused (default) or torch's CPU default "
                        "(per-parameter elementwise ops)")
    p.add_argument("--cpu-linear", choices=["auto", "onednn", "torch"], default=None,
                   help="headwise's fp32 CPU linears (kernels/cpu_linear.py): auto (its "
                        "default), onednn, or torch's matmul as transformers uses")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: torch's, one per core)")
    p.add_argument("--malloc", choices=["default", "keep"], default="default",
                   help="glibc's malloc for the whole process, both sides: as it is (default), "
                        "or keeping freed memory as headwise's trainer does (hardware/memory.py)")
    p.add_argument("--out", type=Path, default=RESULTS / "train_throughput_cpu.json")
    args = p.parse_args(argv)
    timing = [f for f, v in (("--rounds", args.rounds), ("--steps", args.steps)) if v is not None]
    if args.profile and timing:
        p.error(f"{' and '.join(timing)} {'have' if len(timing) > 1 else 'has'} no effect with --profile, which "
                f"profiles one step of each side; drop {'them' if len(timing) > 1 else 'it'} or --profile")
    args.rounds, args.steps = args.rounds or 5, args.steps or 3
    malloc = {"setting": "default", "applied": False, "why": "glibc's malloc as it is"}
    if args.malloc == "keep":
        os.environ[memory.ENV] = "keep"
        malloc = memory.keep_freed_memory()
        if not malloc["applied"]:
            p.error(f"--malloc keep could not be applied: {malloc['why']}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    commit = commit_id()  # the code the run imported
    torch.set_flush_denormal(True)  # as headwise's trainer does, for both sides
    import transformers

    from headwise.hardware.precision import native_bf16

    if args.cpu_linear is not None:  # (before --profile's steps too, which it was not)
        set_cpu_linear(args.cpu_linear)
    if args.profile:
        for size in args.sizes:
            for objective in args.objectives:
                for precision in args.precision:
                    profile_pair(objective, size, precision, adamw=args.adamw)
        return {}
    linear_choice = cpu_linear_choice()
    peak = best_gemm_rate()
    cpu = lscpu_model()
    print(f"# training step, batch {BATCH} x {SEQ}, AdamW, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {cpu}")
    native, why = native_bf16("cpu")
    libs = ", ".join(f"{lib} {r / 1e9:.1f}" for lib, r in peak.items() if lib != "best")
    print(f"# fp32 GEMM rate (2048^3): {libs} GFLOP/s; native bf16: {native} ({why})")
    print(f"# headwise's fp32 CPU linears: {'oneDNN' if linear_choice['onednn'] else 'torch'} "
          f"({linear_choice['why']}); MFU is against the faster library's rate")
    print(f"# malloc, both sides: {malloc['why']}")
    print(f"{'size':>13} {'obj':>4} {'prec':>5} | {'headwise tok/s':>14} | {'transformers':>12} | "
          f"{'ratio':>6} | MFU headwise / transformers")
    rows = []
    result = {
        "benchmark": "train_throughput_cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "commit": commit,
        "machine": platform.machine(),
        "gemm_flops_fp32": peak["best"], "gemm_flops_fp32_by_library": peak,
        "headwise_cpu_linear": linear_choice,
        "malloc": malloc,
        "native_bf16": native, "native_bf16_why": why,
        "batch": BATCH, "seq": SEQ, "vocab": VOCAB,
        "rounds": args.rounds, "steps": args.steps, "adamw": args.adamw,
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for objective in args.objectives:
            for precision in args.precision:
                row = bench_pair(objective, size, precision, args.rounds, args.steps, peak,
                                 args.adamw)
                rows.append(row)
                tps, mfu = row["tokens_per_s"], row["mfu"]
                print(f"{size:>13} {objective:>4} {precision:>5} | {tps['headwise']:14,.0f} | "
                      f"{tps['transformers']:12,.0f} | {row['ratio']:5.2f}x | "
                      f"{mfu['headwise']:.0%} / {mfu['transformers']:.0%} (against torch.matmul: "
                      f"{row['mfu_vs_torch_matmul']['headwise']:.0%} / "
                      f"{row['mfu_vs_torch_matmul']['transformers']:.0%})", flush=True)
                args.out.write_text(json.dumps(result, indent=2))  # so far: kept if a later row fails
    # other processes on the machine: 1/5/15-minute load averages before and after
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
