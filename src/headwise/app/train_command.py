"""``headwise train | check | generate | eval``: the training run and what reads it.

``headwise train`` runs in this process (:class:`headwise.train.Trainer`), on N local
processes (``--nproc``/``--tp``: :func:`headwise.app.launch.launch`), or as one rank
inside torchrun (:func:`headwise.app.launch.run_distributed`); ``eval --format``
evaluates the run in another number format (:mod:`headwise.app.format_eval`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

import torch

from ..data import is_builtin_corpus
from ..data.tokenizer import KINDS as TOKENIZER_KINDS
from ..data.tokenizer_training import MAX_VOCAB_SIZE, min_vocab_size
from ..devices import resolve_device
from ..distributed.ddp import in_distributed_env
from ..formats import FORMATS
from ..hardware.precision import PRECISIONS, resolve_precision
from ..models import PRESETS
from ..train.build import check_attention_backend, default_tokenizer_kind, model_config_for
from ..train.checkpoint import checkpoint_report, interruption_note
from ..train.config import DECAYS, OBJECTIVES, RTD_GENERATORS, TrainConfig
from ..train.loop import Trainer
from ..train.optim import OPTIMIZERS
from ..train.reader import evaluate_run, load_run
from ..train.recipes import RECIPES, apply_recipe
from ..train.sanity import run_checks
from .cli_types import (
    float_in,
    int_at_least,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    refuse_pipe,
    refuse_unused,
    run_directory,
    seed_int,
)
from .format_eval import evaluate_run_format
from .launch import launch, run_distributed

#: (flag, argparse type, help) of the numeric TrainConfig settings
_NUMBERS = (
    ("batch-size", positive_int, "blocks per optimizer step (per accumulation micro-batch)"),
    ("block-len", positive_int, "tokens per block"),
    ("accum", positive_int, "gradient accumulation: micro-batches per optimizer step"),
    ("lr", positive_float, "peak learning rate (AdamW)"),
    ("weight-decay", nonneg_float, "AdamW weight decay (not on biases and norms)"),
    ("warmup", nonneg_int, "linear warm-up steps"),
    ("min-lr-ratio", float_in(0.0, 1.0), "the learning rate decays to this fraction of its peak"),
    ("grad-clip", positive_float, "clip the global gradient norm to this"),
    ("eval-every", positive_int, "validate every N steps"),
    ("eval-batches", positive_int, "validation batches per evaluation"),
    ("log-every", positive_int, "log training metrics every N steps"),
    ("checkpoint-every", positive_int, "write a checkpoint every N steps"),
    ("seed", seed_int, "random seed (data order, initialisation, masking)"),
    ("vocab-size", int_at_least(1, MAX_VOCAB_SIZE),
     "the most tokens a trained tokenizer may have, specials included (not with --tokenizer)"),
    ("dropout", float_in(0.0, 1.0, high_open=True), "dropout, replacing the preset's"),
)


def register(sub) -> None:
    t = sub.add_parser("train", help="train a model from scratch (mlm, rtd or clm)",
                       description="Train a model from random weights; see README for the run directory.")
    d = TrainConfig()
    t.add_argument("--objective", choices=OBJECTIVES, default=d.objective,
                   help="fill in the blank (mlm), replaced-token detection (rtd, ELECTRA) or next token (clm)")
    t.add_argument("--corpus", default=None,
                   help="a file or folder (.txt .md .jsonl), stdlib-docs, stdlib-code or hf:NAME[:CONFIG] "
                        "(default: stdlib-docs for mlm/rtd, stdlib-code for clm)")
    t.add_argument("--preset", default=d.preset,
                   help=", ".join(PRESETS))
    t.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="set objective, preset, tokenizer, batch, optimizer and schedule at once; flags given "
                        "explicitly win (headwise.train.recipes; shakespeare-char: docs/training.md)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default {d.steps})")
    g.add_argument("--max-time", type=positive_float, default=None,
                   help="stop after this many minutes, with a checkpoint; the learning rate stays flat "
                        "after warm-up (default: no time limit)")
    t.add_argument("--out", default=None, help="run directory (default runs/<objective>-<preset>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    for name, typ, text in _NUMBERS:
        field = name.replace("-", "_")
        default = getattr(d, field)
        t.add_argument(f"--{name}", type=typ, default=default, dest=field,
                       help=text + (" (default: the preset's)" if default is None else ""))
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="adamw, or muon: Muon on the blocks' weight matrices (at --muon-lr), AdamW on the rest")
    t.add_argument("--muon-lr", type=positive_float, default=d.muon_lr, dest="muon_lr",
                   help="Muon's peak learning rate (with --optimizer muon)")
    t.add_argument("--decay", choices=DECAYS, default=d.decay,
                   help="learning-rate decay after warm-up")
    t.add_argument("--tokenizer", default=None,
                   help="a tokenizer.json to use instead of training one (default: train one on the corpus)")
    t.add_argument("--tokenizer-kind", choices=TOKENIZER_KINDS, default=None,
                   help="kind of tokenizer to train (default: wordpiece for mlm/rtd, bpe for clm; "
                        "not with --tokenizer)")
    t.add_argument("--whole-word-masking", action="store_true", help="mask whole words, not single tokens")
    t.add_argument("--rtd-generator", choices=RTD_GENERATORS, default=d.rtd_generator,
                   help="'uniform': generator-free random replacement (ablation)")
    t.add_argument("--model", type=_overrides, default={},
                   help="override preset fields, e.g. d_model=64,n_layers=2,positions=rope")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--device", default="auto", help="auto (a GPU if there is one, else the CPU), cpu, cuda or cuda:N")
    t.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: autocast forwards with fp32 master weights and optimizer state; auto "
                        "(the default) picks bf16 where the device has native bf16 (CUDA sm80+, a CPU "
                        "with AVX512-BF16 or AMX), else fp32. bf16 elsewhere runs emulated (slow) "
                        "and says so; the run directory's precision.json records what ran")
    t.add_argument("--no-sanity-checks", dest="sanity_checks", action="store_false",
                   help="skip the initial-loss and causality checks before the first step")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=positive_int, default=1,
                   help="train on N local processes (data parallel; gloo on CPU, NCCL on GPUs); "
                        "--batch-size stays the global batch. For several machines use torchrun -m headwise train")
    t.add_argument("--tp", type=positive_int, default=1,
                   help="head-parallel degree: split each attention layer's heads over this many of the processes")
    t.set_defaults(func=run_train)
    _mark_defaults(t)

    c = sub.add_parser("check", help="run the sanity checks on a run directory")
    c.add_argument("run", type=run_directory, metavar="RUN", help="a run directory (with run.json)")
    _device_flag(c)
    c.set_defaults(func=run_check)

    gen = sub.add_parser("generate", help="sample text from a trained decoder (clm run)")
    gen.add_argument("run", type=run_directory, metavar="RUN",
                     help="a clm run directory (with run.json and a checkpoint)")
    gen.add_argument("--prompt", default="", help="text to continue (default: start from end-of-text)")
    gen.add_argument("--max-new-tokens", type=nonneg_int, default=100,
                     help="tokens to add, at most: it stops at end-of-text, where a document of the corpus ends")
    gen.add_argument("--temperature", type=nonneg_float, default=0.8, help="softmax temperature; 0 is greedy")
    gen.add_argument("--top-k", type=positive_int, default=None,
                     help=f"sample among the K most likely tokens, K below the run's vocabulary size "
                          f"(default {TOP_K}, or every token with a smaller vocabulary; not with --temperature 0)")
    gen.add_argument("--seed", type=seed_int, default=None,
                     help="random seed of the sampling (default 0; not with --temperature 0)")
    _device_flag(gen)
    gen.set_defaults(func=run_generate)

    e = sub.add_parser("eval", help="evaluate a run on its validation split or another corpus")
    e.add_argument("run", type=run_directory, metavar="RUN", help="a run directory (with run.json and a checkpoint)")
    e.add_argument("--corpus", default=None, help="evaluate on this corpus instead of the run's validation split")
    e.add_argument("--batches", type=positive_int, default=50, help="evaluate on at most N batches")
    e.add_argument("--format", choices=FORMATS, default="fp32",
                   help="also run the model in this number format and compare it with fp32: every block's "
                        "output (cosine, relative L1) and the metrics (see docs/formats.md)")
    _device_flag(e)
    e.set_defaults(func=run_eval)


def _overrides(text: str) -> dict:
    """``"a=1,b=x"`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when they can be)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--model expects KEY=VALUE pairs, got {item!r}")
        if key.strip() in out:
            raise argparse.ArgumentTypeError(f"--model sets {key.strip()!r} twice, in {text!r}; give each key once")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


class _Default:
    """A flag's default, wrapped so that a run can tell a setting given on the command
    line from one left alone (a resume changes only what was given)."""

    def __init__(self, value) -> None:
        self.value = value

    def __str__(self) -> str:
        return str(self.value)

    __repr__ = __str__


def _mark_defaults(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.dest in TrainConfig.__dataclass_fields__ and action.default not in (None, argparse.SUPPRESS):
            action.default = _Default(action.default)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """The run's TrainConfig from ``headwise train``'s arguments, and the settings that
    were given explicitly (what a ``--resume`` may change)."""
    given = {k: v for k, v in vars(args).items()
             if k in TrainConfig.__dataclass_fields__ and v is not None and not isinstance(v, _Default)}
    fields = {k: (v.value if isinstance(v, _Default) else v) for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and v is not None}
    if getattr(args, "recipe", None) is not None:
        fields = apply_recipe(args.recipe, fields, given)
    fields.setdefault("out", f"runs/{fields['objective']}-{fields['preset']}")
    if args.max_time is not None and args.steps is None and not args.resume:
        refuse_unused({"--decay": given.get("decay") if given.get("decay") != "constant" else None},
                      "with --max-time without --steps (the schedule cannot know its length, so the "
                      "learning rate stays flat after warm-up)", "give --steps too, or drop --decay")
        fields["steps"] = 10**9
        # with only a time budget the schedule cannot know its length: keep the lr flat
        fields["decay"] = "constant"
    return TrainConfig(**fields), given


def run_train(args: argparse.Namespace, *, story=None) -> int:
    """Train as ``args`` say. ``story(trainer) -> exit status``, when given, takes over
    the single-process Trainer before it runs (headwise.app: train, inspect, summarise).
    Ctrl-C is one line saying what the run keeps and how to resume it, status 130; so is
    SIGTERM (what a scheduler sends a job it stops), status 143, for a single process or
    the --nproc launcher (which stops its workers first)."""
    cfg, given = config_from_args(args)
    try:
        with _sigterm_as_interrupt(single=not in_distributed_env()):
            return _run_train(args, cfg, given, story)
    except KeyboardInterrupt:
        print(f"headwise train: {interruption_note(Path(cfg.out))}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"headwise train: {interruption_note(Path(cfg.out), how='terminated (SIGTERM)')}", file=sys.stderr)
        return 128 + signal.SIGTERM


class _Terminated(BaseException):
    """SIGTERM arrived: unwinds the run as Ctrl-C's KeyboardInterrupt does."""


@contextlib.contextmanager
def _sigterm_as_interrupt(single: bool):
    """Within, SIGTERM raises :class:`_Terminated` in the main thread of a single-process
    run or of the --nproc launcher (whose workers it then interrupts; under torchrun each
    rank is left to torchrun's own handling)."""
    if not single or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise _Terminated

    before = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _run_train(args: argparse.Namespace, cfg: TrainConfig, given: dict, story) -> int:
    check_before_start(cfg, resume=args.resume, given=given)
    nproc, tp = getattr(args, "nproc", 1), getattr(args, "tp", 1)
    changes = given if args.resume else None
    if in_distributed_env():  # started by torchrun: this process is one rank
        if nproc != 1:
            raise ValueError(f"--nproc {nproc} inside torchrun: torchrun already started the processes; drop --nproc")
        run_distributed(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, tp=tp,
                        changes=changes)
        return 0
    if nproc != 1 or tp != 1:
        return launch(cfg, nproc, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, tp=tp,
                      changes=changes)
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, changes=changes)
    if story is not None:
        return story(trainer)
    val = trainer.run()
    print(f"run {trainer.run_dir}: step {trainer.step}; validation " + json.dumps(
        {k: round(v, 4) for k, v in val.items()}))
    return 0


def check_before_start(cfg: TrainConfig, *, resume: bool = False, given: dict | None = None) -> None:
    """Refuse settings that would fail only after the run directory is written: the
    device, an --out that is a file, the tokenizer's settings (--vocab-size too small, or given
    with --tokenizer: ``given`` holds the settings given explicitly), the model fields (--model,
    --dropout, --block-len) and whether the attention backend can train it on the device.
    Raises ValueError or FileExistsError naming the flag."""
    device = resolve_device(cfg.device, what="--device")
    given = given or {}
    builtin = is_builtin_corpus(cfg.corpus)
    if not resume and not builtin and not Path(cfg.corpus).exists():
        raise FileNotFoundError(f"--corpus {cfg.corpus!r}: no such file or folder; accepted: a file or folder "
                                "(.txt .md .jsonl), stdlib-docs, stdlib-code or hf:NAME[:CONFIG]")
    if not resume and not builtin:
        refuse_pipe("--corpus", cfg.corpus)
    if cfg.tokenizer is not None and not resume:
        refuse_unused({"--vocab-size": given.get("vocab_size"), "--tokenizer-kind": given.get("tokenizer_kind")},
                      f"with --tokenizer {cfg.tokenizer!r} (the tokenizer file decides)",
                      "drop {it} or --tokenizer")
        refuse_pipe("--tokenizer", cfg.tokenizer)
        if Path(cfg.tokenizer).is_dir():
            raise IsADirectoryError(f"--tokenizer {cfg.tokenizer!r} is a folder; give the tokenizer.json file "
                                    f"itself (e.g. {str(Path(cfg.tokenizer) / 'tokenizer.json')!r})")
        if not Path(cfg.tokenizer).is_file():
            raise FileNotFoundError(f"--tokenizer {cfg.tokenizer!r}: no such file; give a tokenizer.json "
                                    "(e.g. one from another run directory)")
    elif not resume:
        kind = cfg.tokenizer_kind or default_tokenizer_kind(cfg.objective)
        if cfg.vocab_size < min_vocab_size(kind):
            raise ValueError(
                f"--vocab-size {cfg.vocab_size} is too small for the {kind} tokenizer: it needs at least "
                f"{min_vocab_size(kind)} (its special tokens + " + ("the 256 bytes" if kind == "bpe" else "1 character")
                + ("; a wordpiece tokenizer needs every character of its corpus" if kind == "wordpiece" else "")
                + ")")
    if not resume:  # (a resume compares what is given with the saved run instead)
        _refuse_ignored_settings(cfg, given)
    if not str(cfg.out).strip():  # Path("") is the working folder
        raise ValueError("--out '' is empty; give a folder for the run")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file, not a folder; give a folder for the run")
    if not resume:  # a resume builds the saved model (and checks its backend then)
        model_cfg = model_config_for(cfg, cfg.vocab_size)  # the tokenizer's size is not known yet: any valid one
        check_attention_backend(cfg, model_cfg, device, resolve_precision(cfg.precision, device))


def _refuse_ignored_settings(cfg: TrainConfig, given: dict) -> None:
    """Refuse a setting given explicitly that the run would not use."""
    # why a constant decay (where --min-lr-ratio does nothing) is the run's, and what decays
    if "decay" in given:
        flat, decays = "--decay constant", "--decay cosine or linear"
    elif cfg.max_time is not None:
        flat = "--max-time without --steps: the learning rate stays flat after warm-up"
        decays = "--steps and --decay cosine or linear"
    else:
        flat, decays = f"--recipe {cfg.recipe}'s decay constant", "--decay cosine or linear"
    unused = (
        ("--muon-lr", "muon_lr", cfg.optimizer != "muon", f"--optimizer {cfg.optimizer}", "--optimizer muon"),
        ("--whole-word-masking", "whole_word_masking", cfg.objective == "clm", "--objective clm",
         "--objective mlm or rtd"),
        ("--rtd-generator", "rtd_generator", cfg.objective != "rtd", f"--objective {cfg.objective}",
         "--objective rtd"),
        ("--min-lr-ratio", "min_lr_ratio", cfg.decay == "constant", flat, decays),
    )
    for flag, field, ignored, why, needs in unused:
        if ignored:
            refuse_unused({flag: given.get(field)}, f"with {why} (only with {needs})")
    _check_warmup(cfg, given)


def _check_warmup(cfg: TrainConfig, given: dict) -> None:
    """Refuse a --warmup that the run's --steps leave no room for (the learning rate would
    not reach --lr, or the decay never start); warn when the default warm-up is the one."""
    if cfg.max_time is not None or cfg.warmup < cfg.steps:
        return
    short = cfg.warmup > cfg.steps
    if not short and cfg.decay == "constant":
        return  # the rate reaches --lr at the last step, and nothing decays anyway
    what = (f"the learning rate would still be rising at the end, at {cfg.steps / cfg.warmup:.0%} of --lr"
            if short else "the learning rate would reach --lr only at the last step")
    if cfg.decay != "constant":
        what += f", and --decay {cfg.decay} would never start"
    if "warmup" in given:
        raise ValueError(f"--warmup {cfg.warmup} is not below --steps {cfg.steps}: {what}; "
                         f"give --warmup {cfg.steps - 1} or less")
    source = f"--recipe {cfg.recipe}'s" if cfg.recipe is not None else "the default"
    print(f"warning: {source} --warmup {cfg.warmup} is not below --steps {cfg.steps}: {what}; "
          "give --warmup below --steps to change it", file=sys.stderr)


def _device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (default: the run's own --device setting)")


def _run_device(args: argparse.Namespace) -> str:
    """The device for reading ``args.run``: ``--device`` if given, else the run's own
    setting; either is checked here, so an unusable one is named with its source."""
    if getattr(args, "device", None) is not None:
        return str(resolve_device(args.device, what="--device"))
    saved = TrainConfig.from_json(Path(args.run) / "run.json").device
    try:
        return str(resolve_device(saved, what="the run's device"))
    except ValueError as e:
        raise ValueError(f"{e}; {args.run}/run.json says device {saved!r}: pass --device to use another") from None


def run_check(args: argparse.Namespace) -> int:
    run = load_run(args.run, fresh_weights=True, device=_run_device(args),
                   corpus_use="check runs the sanity checks on a batch of its training split: put it back there")
    lines, intact = [], True
    report = checkpoint_report(args.run)
    for name, problem in report:
        lines.append(f"[{'ok' if problem is None else 'FAIL'}] checkpoint {name}: "
                     + ("intact (every file has its recorded size and hash)" if problem is None else problem))
        intact = intact and problem is None
    if not report:
        lines.append("[ok] checkpoints: none written yet")
    batch = run.train.batch(run.train.sampler(min(8, len(run.train)), seed=0).batch_indices(0))
    results = run_checks(run.objective, batch, run.tokenizer.vocab_size, run.cfg.objective)
    for line in lines + [r.line() for r in results]:
        print(line)
    return 0 if intact and all(r.passed for r in results) else 1


TOP_K = 50
"""``headwise generate``'s ``--top-k`` when none is given."""


def run_generate(args: argparse.Namespace) -> int:
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a byte the shell's locale could not decode
        c = ord(e.object[e.start])
        what = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"{chr(c)!r}"
        raise ValueError(f"--prompt is not UTF-8 text ({what} at character {e.start})") from None
    if args.temperature == 0:
        refuse_unused({"--top-k": args.top_k, "--seed": args.seed},
                      "with --temperature 0, which always takes the most likely token",
                      "drop {it} or give a temperature above 0")
    seed = 0 if args.seed is None else args.seed
    run = load_run(args.run, device=_run_device(args), data=False)  # the prompt is all the text it reads
    if run.cfg.objective != "clm":
        raise ValueError(f"generate needs a decoder (a clm run); {args.run} is a {run.cfg.objective} run")
    tok = run.tokenizer
    vocab = tok.vocab_size  # the model's too: build_parts refuses a config.json that disagrees
    if args.top_k is not None and args.top_k >= vocab:
        raise ValueError(f"--top-k {args.top_k} is not below the run's vocabulary size of {vocab} tokens, "
                         f"so every token stays in the draw and --top-k does nothing; give --top-k "
                         f"{vocab - 1} or less")
    # the default leaves out nothing from a vocabulary of TOP_K tokens or fewer: sample among every token
    top_k = args.top_k if args.top_k is not None else (TOP_K if TOP_K < vocab and args.temperature else None)
    unknown = tok.unknown_characters(args.prompt)
    if unknown:
        print(f"headwise generate: warning: --prompt has {len(unknown)} character(s) outside the run's "
              f"vocabulary, encoded as [UNK]: {' '.join(repr(c) for c in unknown)}", file=sys.stderr)
    ids = tok.encode(args.prompt) if args.prompt else [tok.eos_id]
    room = run.objective.model.positions_left(len(ids))
    if room is not None and args.max_new_tokens > room:
        max_len = len(ids) + room
        fix = (f"give --max-new-tokens {room} or less" if room > 0 else
               f"shorten --prompt to fewer than {max_len} tokens")
        raise ValueError(f"--prompt is {len(ids)} tokens and --max-new-tokens {args.max_new_tokens}: "
                         f"{len(ids) + args.max_new_tokens} positions, more than the model's learned "
                         f"positions (max_len={max_len}); {fix}")
    x = torch.tensor([ids], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    # it stops at the end of a document, as the corpus's documents end (its blocks join them
    # with end-of-text): what follows would be the start of another, unrelated one
    out = run.objective.model.generate(x, args.max_new_tokens, temperature=args.temperature,
                                       top_k=top_k, eos_id=tok.eos_id, generator=g)
    print(tok.decode(out[0].tolist()))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    # the run's own corpus: for its validation split, and for int8's calibration on its training split
    calibrates = getattr(args, "format", "fp32") == "int8"
    refuse_pipe("--corpus", args.corpus)
    if args.corpus is None:
        use = "eval of the validation split reads it: put it back there, or give --corpus to evaluate on another corpus"
    else:
        use = "eval --format int8 calibrates on its training split: put it back there, or give another --format"
    run = load_run(args.run, device=_run_device(args), data=args.corpus is None or calibrates, corpus_use=use)
    if getattr(args, "format", "fp32") != "fp32":
        report = evaluate_run_format(run, args.format, corpus=args.corpus, max_batches=args.batches)
        print(json.dumps(report, indent=2))
        return 0
    metrics = evaluate_run(run, corpus=args.corpus, max_batches=args.batches)
    print(json.dumps({k: round(v, 5) for k, v in metrics.items()}, indent=2))
    return 0
