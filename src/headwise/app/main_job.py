"""``headwise train``, the whole story: train, check, evaluate, look inside the heads,
and say what happened in words.

:func:`tell_story` takes a :class:`headwise.train.Trainer` and

1. attaches the head recorder (:func:`headwise.inspect.timeline.attach_head_recorder`:
   every head's measures and role at each evaluation, ``heads.jsonl``);
2. trains (the sanity checks run before the first step) and evaluates on the
   validation split;
3. computes what a model that learned nothing from context would score
   (:func:`baselines`): the uniform loss ``ln V``, the unigram loss (the training
   split's token frequencies scored on the validation targets the objective scores)
   and the accuracy of always guessing the most frequent token (for RTD: the binary
   entropy of the replacement rate and always guessing "original");
4. inspects its own model (:func:`inspect_run`) on held-back text: passages of the
   validation split, never training text; with a CoNLL-U treebank also the syntax
   probe; and writes ``report.html`` (with the roles over training) into the run
   directory;
5. prints :func:`summary_text`: the losses beside the baselines, what the heads
   became, and the commands to go further. It is also saved as ``summary.txt``; a
   finished run given ``--resume`` again re-prints it without recomputing.

The ``headwise train`` command is :func:`run_train_command`: :func:`register` adds
``--no-report`` (train and summarise, no inspection) and ``--conllu`` to the parser
that :mod:`headwise.train.command` builds, and routes the command here. This module
sits above :mod:`headwise.train` and :mod:`headwise.inspect` and imports both;
neither imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Baselines",
    "scored_targets",
    "unigram_baseline",
    "binary_entropy",
    "baselines",
    "heldout_passages",
    "inspect_run",
    "role_leaders",
    "summary_text",
    "tell_story",
    "run_train_command",
    "register",
    "SUMMARY_FILE",
]

#: the saved summary inside the run directory
SUMMARY_FILE = "summary.txt"
_STORY_FILE = "story.json"


def _register_entries() -> None:
    """Declare the files the story writes into a run directory (``--overwrite`` may remove them)."""
    from ..inspect.report import REPORT_FILES
    from ..train.rundir import register_run_entry

    for name in (*REPORT_FILES, SUMMARY_FILE, _STORY_FILE):
        register_run_entry(name)


_register_entries()
# the training split is read up to this many blocks (evenly spaced) for the unigram counts
_MAX_COUNT_BLOCKS = 1 << 15


# ---------------------------------------------------------------------- baselines
@dataclass
class Baselines:
    """What a model that ignores the context would score on the validation targets.

    Attributes:
        objective: ``mlm``, ``clm`` or ``rtd``.
        vocab_size: ``V``.
        uniform: ``ln V`` (nats), the loss of a uniform guess.
        unigram: cross-entropy (nats) of the training split's token frequencies on
            the validation targets (for RTD: the generator's masked targets).
        most_frequent_id, most_frequent_token: the training split's most frequent target.
        most_frequent_accuracy: how often that token is the validation target.
        n_train_targets, n_val_targets: targets counted.
        replaced_fraction: RTD only: the validation tokens the generator replaced.
        disc_entropy: RTD only: binary entropy (nats) of ``replaced_fraction``, the
            discriminator loss of always guessing that rate.
        always_original_accuracy: RTD only: ``1 - replaced_fraction``.
    """

    objective: str
    vocab_size: int
    uniform: float
    unigram: float
    most_frequent_id: int
    most_frequent_token: str
    most_frequent_accuracy: float
    n_train_targets: int
    n_val_targets: int
    replaced_fraction: float | None = None
    disc_entropy: float | None = None
    always_original_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scored_targets(blocks: Any, objective: str, *, is_special: np.ndarray | None = None,
                   pad_id: int | None = None, indices: np.ndarray | None = None) -> np.ndarray:
    """The token ids ``objective`` is scored on in ``blocks`` (a
    :class:`headwise.data.TokenBlocks`), as a flat int64 array.

    * ``clm``: every next token, ``block[1:]`` of each block, padding left out.
    * ``mlm`` / ``rtd``: every maskable token (``is_special[id]`` False, the masker's
      table). Each is selected with the same probability, so their frequencies are
      the expected frequencies of the masked targets without drawing a mask.

    ``indices``: the blocks to read (positions in ``blocks``; default all).
    """
    if objective not in ("mlm", "rtd", "clm"):
        raise ValueError(f"objective must be mlm, rtd or clm, got {objective!r}")
    idx = np.arange(len(blocks), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    ids = blocks.batch(idx).numpy()
    if objective == "clm":
        t = ids[:, 1:].reshape(-1)
        return t[t != pad_id] if pad_id is not None else t
    if is_special is None:
        raise ValueError(f"objective {objective!r} needs is_special (which ids are never masked)")
    t = ids.reshape(-1)
    return t[~np.asarray(is_special, dtype=bool)[t]]


def unigram_baseline(train_targets: np.ndarray, val_targets: np.ndarray, vocab_size: int, *,
                     smoothing: float = 1.0) -> tuple[float, int, float]:
    """``(cross-entropy in nats, most frequent id, its accuracy)``: the training
    targets' frequencies ``p(t) = (count(t) + smoothing) / (N + smoothing * V)``
    scored on ``val_targets`` (``-mean log p``), and how often the training split's
    most frequent target is the validation target. With ``smoothing=0`` and the same
    targets on both sides the first is the entropy of their frequencies."""
    train = np.asarray(train_targets, dtype=np.int64)
    val = np.asarray(val_targets, dtype=np.int64)
    if train.size == 0 or val.size == 0:
        raise ValueError(f"need training and validation targets, got {train.size} and {val.size}")
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    if counts.size > vocab_size:
        raise ValueError(f"a target id is >= vocab_size {vocab_size}")
    probs = (counts + smoothing) / (train.size + smoothing * vocab_size)
    with np.errstate(divide="ignore"):
        ce = float(-np.log(probs[val]).mean())
    top = int(counts.argmax())
    return ce, top, float((val == top).mean())


def _token_text(tok: Any, i: int) -> str:
    """How token ``i`` reads as text (byte-level BPE's "Ġ" is a space)."""
    text = tok.decode([i], skip_special_tokens=False)
    return text if text else (tok.id_to_token(i) or f"<{i}>")


def binary_entropy(p: float) -> float:
    """``-p ln p - (1 - p) ln(1 - p)`` in nats (0 at p = 0 or 1)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


def baselines(parts: Any, cfg: Any, val_metrics: dict[str, float] | None = None) -> Baselines:
    """:class:`Baselines` of a run (``parts``: its :class:`headwise.train.build.RunParts`,
    ``cfg``: its TrainConfig), on the validation blocks the evaluation reads (the first
    ``eval_batches * batch_size``); ``val_metrics`` gives RTD its replacement rate."""
    kind = cfg.objective
    tok = parts.tokenizer
    vocab = tok.vocab_size
    is_special = None
    if kind in ("mlm", "rtd"):
        is_special = parts.objective.masker.is_special.cpu().numpy()
    pad = tok.pad_id
    n_train = len(parts.train)
    spread = None if n_train <= _MAX_COUNT_BLOCKS else np.linspace(0, n_train - 1, _MAX_COUNT_BLOCKS).round()
    train = scored_targets(parts.train, kind, is_special=is_special, pad_id=pad, indices=spread)
    n_eval = min(len(parts.val), cfg.eval_batches * cfg.batch_size)  # what evaluate_blocks reads
    val = scored_targets(parts.val, kind, is_special=is_special, pad_id=pad, indices=np.arange(n_eval))
    ce, top, acc = unigram_baseline(train, val, vocab)
    b = Baselines(kind, vocab, math.log(vocab), ce, top, _token_text(tok, top), acc,
                  int(train.size), int(val.size))
    if kind == "rtd" and val_metrics and "replaced_fraction" in val_metrics:
        r = float(val_metrics["replaced_fraction"])
        b.replaced_fraction, b.disc_entropy, b.always_original_accuracy = r, binary_entropy(r), 1.0 - r
    return b


# ---------------------------------------------------------------------- held-back text
def _boundary_table(tok: Any) -> np.ndarray:
    """``(V,)`` bool: tokens after which a passage may end (a newline, or . ! ?)."""
    table = np.zeros(tok.vocab_size, dtype=bool)
    for i in range(tok.vocab_size):
        s = tok.id_to_token(i) or ""
        if "\n" in s or "Ċ" in s or s.rstrip() in (".", "!", "?", ":"):
            table[i] = True
    return table


def heldout_passages(blocks: Any, tok: Any, *, max_passages: int = 512, max_tokens: int = 64,
                     min_tokens: int = 4) -> list[str]:
    """Passages of text from ``blocks`` (the validation split): each block is cut at
    its special tokens (frame, document separators), then into runs of whole
    sentences or lines of at most ``max_tokens`` tokens (a longer one is cut at
    ``max_tokens``), decoded to text. Passages of fewer than ``min_tokens`` tokens,
    and a leading word fragment, are left out."""
    special = np.zeros(tok.vocab_size, dtype=bool)
    special[list(tok.special_ids)] = True
    boundary = _boundary_table(tok)
    cont = getattr(tok, "is_continuation", None)
    out: list[str] = []

    def emit(ids: list[int]) -> None:
        k = 0
        while cont is not None and k < len(ids) and cont[ids[k]]:
            k += 1
        ids = ids[k:]
        if len(ids) >= min_tokens:
            text = tok.decode(ids).strip()
            if text:
                out.append(text)

    for b in range(len(blocks)):
        ids = blocks[b].tolist()
        segments: list[list[int]] = [[]]
        for t in ids:
            if special[t]:
                segments.append([])
            else:
                segments[-1].append(t)
        for seg in segments:
            units: list[list[int]] = [[]]
            for t in seg:
                units[-1].append(t)
                if boundary[t]:
                    units.append([])
            cur: list[int] = []
            for u in units:
                while len(u) > max_tokens:  # one over-long sentence or line: cut it
                    if cur:
                        emit(cur)
                        cur = []
                    emit(u[:max_tokens])
                    u = u[max_tokens:]
                if len(cur) + len(u) > max_tokens:
                    emit(cur)
                    cur = []
                cur += u
            emit(cur)
            if len(out) >= max_passages:
                return out[:max_passages]
    return out


# ---------------------------------------------------------------------- inspection
def inspect_run(objective: Any, tokenizer: Any, kind: str, val_blocks: Any, *,
                conllu: str | Path | None = None, max_passages: int = 512, keep_examples: int = 8,
                corpus: str = "") -> Any:
    """Inspect the model inside a run's ``objective`` (the encoder, RTD discriminator
    or decoder) and return an :class:`headwise.app.InspectResult`.

    The measures (entropy, offsets, specials, sinks) and the example maps come from
    :func:`heldout_passages` of ``val_blocks``: the run's own kind of text, none of it
    seen in training. Decoders also get the induction test. With ``conllu`` the
    treebank's sentences are run too, for the syntax probe only, and the roles are
    assigned from both (syntactic roles from the probe)."""
    from ..inspect import assign_roles, read_conllu
    from .inspection import inspect_model
    from ..inspect.timeline import inspected_model

    model = inspected_model(objective, kind)
    passages = heldout_passages(val_blocks, tokenizer, max_passages=max_passages)
    if not passages:
        raise ValueError("the validation split gave no passage of text to inspect")
    result = inspect_model(model, passages, tokenizer, keep_examples=keep_examples)
    result.data["source"] = f"validation split of {corpus}" if corpus else "validation split"
    result.data["passages"] = len(passages)
    if conllu is not None:
        sentences = read_conllu(conllu)
        if not sentences:
            raise ValueError(f"--conllu {str(conllu)!r} holds no sentence")
        treebank = inspect_model(model, sentences, tokenizer, induction=False)
        result.probe = treebank.probe
        result.roles = assign_roles(result.measures, result.probe, result.induction, result.thresholds)
        result.data["source"] += f"; syntax probe on {conllu}"
        result.data["probe_data"] = dict(treebank.data, source=str(conllu))
        result.timings["probe_total"] = sum(treebank.timings.values())
    return result


#: how each role's strength is read from a head's evidence, and said
_ROLE_STRENGTH = {
    "induction": ("induction", "induction score {:.2f}"),
    "previous-token": ("previous-token", "{:.0%} of its attention on the previous token"),
    "next-token": ("next-token", "{:.0%} of its attention on the next token"),
    "self": ("self", "{:.0%} of its attention on itself"),
    "special": ("special", "{:.0%} of its attention on special tokens"),
    "broad": ("broad", "normalised entropy {:.2f}"),
}


#: the roles an "other" head can be near, with the threshold each is held to ("broad" is
#: left out: it names the absence of a pattern)
_NEAR = (("previous-token", "positional"), ("next-token", "positional"), ("self", "positional"),
         ("special", "special"), ("induction", "induction"))


def _nearest_role(heads: list[dict[str, Any]], thresholds: dict[str, Any]) -> tuple | None:
    """The "other" head closest to a role: the largest evidence / threshold ratio."""
    best = None
    for h in heads:
        for role, key in _NEAR:
            v, limit = h["evidence"].get(role), thresholds.get(key)
            if v is None or not limit:
                continue
            if best is None or v / limit > best[0]:
                best = (v / limit, h, role, v, limit)
    if best is None:
        return None
    _, h, role, v, limit = best
    says = _ROLE_STRENGTH[role][1].format(v)
    need = f"{limit:.2f}" if role == "induction" else f"{limit:.0%}"
    return h, v, f"closest to a role: {says} ({role} needs {need})"


def role_leaders(result: Any) -> list[dict[str, Any]]:
    """Per primary role (in the roles' priority order, then ``other``): ``{"role",
    "count", "head": "L1H2" or None, "strength": float or None, "says": str}``: how
    many heads have it as their primary role, and the strongest of them (syntactic:
    the largest margin over the relation's offset baseline; other: the head nearest to
    a role's threshold, and which)."""
    from ..inspect import PRIORITY

    d = result if isinstance(result, dict) else result.to_dict()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in d["roles"]:
        groups.setdefault(r["primary"].split(":", 1)[0], []).append(r)
    out = []
    for role in [*PRIORITY, "other"]:
        heads = groups.get(role)
        if not heads:
            continue
        best = None
        if role == "syntactic":
            cands = []
            for h in heads:
                rel = h["primary"].split(":", 1)[1]
                ev = (h["evidence"].get("syntactic") or {}).get(rel) or {}
                if ev.get("margin") is not None:
                    cands.append((ev["margin"], h, rel, ev))
            if cands:
                m, h, rel, ev = max(cands, key=lambda c: c[0])
                acc = ev.get("accuracy")
                best = (h, m, f"{rel}: accuracy {acc:.2f}, {m:+.2f} over the best fixed offset")
        elif role in _ROLE_STRENGTH:
            key, fmt = _ROLE_STRENGTH[role]
            cands = [(h["evidence"].get(key), h) for h in heads if h["evidence"].get(key) is not None]
            if cands:
                v, h = max(cands, key=lambda c: c[0])
                best = (h, v, fmt.format(v))
        elif role == "other":
            best = _nearest_role(heads, d.get("thresholds") or {})
        out.append({
            "role": role, "count": len(heads),
            "head": f"L{best[0]['layer']}H{best[0]['head']}" if best else None,
            "strength": best[1] if best else None, "says": best[2] if best else "",
        })
    return out


# ---------------------------------------------------------------------- summary
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def summary_text(*, run_dir: str | Path, cfg: Any, step: int, val: dict[str, float], base: Baselines,
                 leaders: list[dict[str, Any]] | None = None, n_heads: tuple[int, int] | None = None,
                 probe: str | None = None, timeline: str | None = None, report: str | Path | None = None,
                 train_s: float | None = None, checks: Sequence[str] = ()) -> str:
    """The text ``headwise train`` prints at the end (and saves as ``summary.txt``)."""
    run = str(run_dir)
    q = shlex.quote
    lines = [f"headwise run {run}: {cfg.objective} {cfg.preset} on {cfg.corpus}, step {step} of {cfg.steps}"
             + (f" ({train_s / 60:.1f} min of training this time)" if train_s else "")]
    if checks:
        lines.append("sanity checks before step 1:")
        lines += [f"  {c}" for c in checks]
    lines.append("")
    lines.append(f"validation ({base.n_val_targets:,} scored targets; losses in nats per token, lower is better):")
    uni = f"uniform ln {base.vocab_size} = {base.uniform:.2f}"
    gram = f"unigram {base.unigram:.2f}"
    mf = (f"always {base.most_frequent_token!r} (the most frequent token) scores "
          f"{_pct(base.most_frequent_accuracy)}")
    if cfg.objective == "rtd":
        if base.disc_entropy is not None:
            lines.append(f"  discriminator loss   {val['disc_loss']:.3f}   vs {base.disc_entropy:.3f}, the binary "
                         f"entropy of the replacement rate ({_pct(base.replaced_fraction)} replaced)")
            lines.append(f"  discriminator acc.   {_pct(val['disc_accuracy'])}   vs "
                         f"{_pct(base.always_original_accuracy)} for always guessing \"original\"")
        if "gen_loss" in val:
            lines.append(f"  generator MLM loss   {val['gen_loss']:.3f}   vs {uni}; {gram}")
        if "gen_accuracy" in val:
            lines.append(f"  generator accuracy   {_pct(val['gen_accuracy'])}   vs {mf}")
    else:
        what = "masked-token" if cfg.objective == "mlm" else "next-token"
        lines.append(f"  loss        {val['loss']:.3f}   vs {uni}; {gram}")
        if cfg.objective == "clm":
            lines.append(f"  perplexity  {math.exp(min(val['loss'], 50)):.1f}   vs {math.exp(base.unigram):.0f} "
                         f"for the unigram")
        lines.append(f"  {what} accuracy  {_pct(val['accuracy'])}   vs {mf}")
    if leaders is not None:
        total = sum(x["count"] for x in leaders)
        shape = f"{n_heads[0]} layers x {n_heads[1]} heads" if n_heads else f"{total} heads"
        lines.append("")
        lines.append(f"what the {total} heads became ({shape}; layers and heads 0-based), by primary role:")
        width = max(len(x["role"]) for x in leaders)
        for x in leaders:
            word = "nearest" if x["role"] == "other" else "strongest"
            tail = f"   {word} {x['head']}: {x['says']}" if x["head"] else ""
            lines.append(f"  {x['role'].ljust(width)}  {x['count']:>3}{tail}")
        if probe:
            lines.append(probe)
        if timeline:
            lines.append(timeline)
    lines.append("")
    lines.append("next:")
    if report is not None:
        path = Path(report).resolve()
        lines.append(f"  open the report   python3 -m webbrowser {q(path.as_uri())}")
    if cfg.objective == "clm":
        lines.append(f"  generate          headwise generate {q(run)} --prompt {q('def ')}")
    lines.append(f"  evaluate          headwise eval {q(run)}")
    lines.append(f"  inspect further   headwise inspect {q(run)} --conllu TREEBANK.conllu --out "
                 f"{q(run + '/inspect')} --importance")
    return "\n".join(lines)


def _probe_line(result: Any) -> str | None:
    """One line on the syntax probe: relations judged, and how many a head beats
    the offset baseline on by the syntactic margin."""
    d = result.to_dict()
    probe = d.get("probe")
    if not probe:
        return None
    need = d["thresholds"]["min_relation_count"]
    margin = d["thresholds"]["syntactic_margin"]
    judged = [r for r in probe["best"] if r["count"] >= need]
    won = [r for r in judged if r["accuracy"] is not None and r["baseline_accuracy"] is not None
           and r["accuracy"] - r["baseline_accuracy"] >= margin]
    best = max(judged, key=lambda r: (r["accuracy"] or 0) - (r["baseline_accuracy"] or 0), default=None)
    text = (f"  syntax probe ({d['data'].get('probe_data', {}).get('source', 'treebank')}): a head beats the "
            f"best fixed offset by >= {margin:.2f} on {len(won)} of {len(judged)} relations")
    if best is not None and best["accuracy"] is not None and best["baseline_accuracy"] is not None:
        text += (f"; best gain {best['relation']} L{best['layer']}H{best['head']} {best['accuracy']:.2f} vs "
                 f"{best['baseline_accuracy']:.2f} at offset {best['baseline_offset']:+d}")
    return text


# ---------------------------------------------------------------------- the story
def _attach_recorder(trainer: Any) -> bool:
    try:
        from ..inspect.timeline import attach_head_recorder
    except ImportError:  # pragma: no cover - the recorder is part of the package
        return False
    return attach_head_recorder(trainer) is not None


def _keep_check_lines(trainer: Any) -> list[str]:
    """A list that will hold the sanity checks' result lines (``[ok] ...``) the trainer
    prints before its first step (they are also printed as before)."""
    kept: list[str] = []
    shown = trainer._print

    def keep(line: str) -> None:
        if line.startswith(("[ok]", "[FAIL]")):
            kept.append(line)
        shown(line)

    trainer._print = keep
    return kept


def _story_key(trainer: Any, conllu: str | None, report: bool) -> dict[str, Any]:
    return {"step": trainer.step, "conllu": conllu, "report": report}


def tell_story(trainer: Any, *, report: bool = True, conllu: str | Path | None = None,
               out: Any = print) -> int:
    """Train ``trainer`` to its end, evaluate, inspect (unless ``report`` is False) and
    print the summary with ``out``; writes ``report.html`` (and the inspection's
    figures and ``measures.json``), ``summary.txt`` and ``story.json`` into the run
    directory. A run with nothing left to train whose saved summary was made at the
    same step with the same options has it re-printed. Returns 0, or 1 when the
    inspection failed (the summary is printed all the same, without the heads)."""
    run_dir = Path(trainer.run_dir)
    cfg = trainer.cfg
    conllu = None if conllu is None else str(conllu)
    if conllu is not None and not Path(conllu).is_file():
        raise FileNotFoundError(f"--conllu {conllu!r}: no such file")
    finished = trainer.step >= cfg.steps
    story_path, summary_path = run_dir / _STORY_FILE, run_dir / SUMMARY_FILE
    if finished and story_path.is_file() and summary_path.is_file():
        try:
            saved = json.loads(story_path.read_text())
        except ValueError:
            saved = {}
        if saved.get("key") == _story_key(trainer, conllu, report) and (
                not report or (run_dir / "report.html").is_file()):
            out(summary_path.read_text().rstrip("\n"))
            return 0
    if report:
        _attach_recorder(trainer)
    checks = _keep_check_lines(trainer)
    start = trainer.step
    t0 = time.perf_counter()
    val = trainer.run()
    train_s = time.perf_counter() - t0 if trainer.step > start else None
    if not val:  # nothing was trained in this call (a finished run resumed): evaluate now
        val = trainer.evaluate()
    base = baselines(trainer.parts, cfg, val)
    heads: dict[str, Any] = {}
    failed = None
    if report:
        try:
            heads = _inspect_and_report(trainer, conllu, out)
        except Exception as e:  # the trained run stands; say what failed and still summarise
            failed = f"{type(e).__name__}: {e}"
            print(f"headwise train: the inspection failed ({failed}); the run itself is complete",
                  file=sys.stderr)
    text = summary_text(run_dir=run_dir, cfg=cfg, step=trainer.step, val=val, base=base, train_s=train_s,
                        checks=checks, **heads)
    if failed:
        text += f"\n\n(no report: the inspection failed: {failed})"
    if getattr(trainer, "is_main", True):
        summary_path.write_text(text + "\n")
        if not failed:  # a failed inspection is tried again by the next --resume
            story_path.write_text(json.dumps({
                "key": _story_key(trainer, conllu, report), "validation": val, "baselines": base.to_dict(),
                "roles": heads.get("leaders"),
            }, indent=1) + "\n")
    out("")
    out(text)
    return 1 if failed else 0


def _inspect_and_report(trainer: Any, conllu: str | None, out: Any) -> dict[str, Any]:
    """Inspect the trainer's model on held-back text, write the report into the run
    directory; returns the summary's head fields (:func:`summary_text` keywords)."""
    from ..inspect.report import write_report
    from ..inspect.timeline import read_head_record, timeline_summary

    cfg, run_dir = trainer.cfg, Path(trainer.run_dir)
    t1 = time.perf_counter()
    result = inspect_run(trainer.objective, trainer.parts.tokenizer, cfg.objective, trainer.parts.val,
                         conllu=conllu, corpus=str(cfg.corpus))
    record = read_head_record(run_dir) or None
    written = write_report(result, run_dir, title=f"headwise run {run_dir} ({cfg.objective}, step {trainer.step})",
                           command=_reinspect_command(run_dir, conllu), timeline=record)
    out(f"inspected {result.data['n_sentences']} held-back passages in {time.perf_counter() - t1:.1f} s")
    return {
        "leaders": role_leaders(result),
        "n_heads": (int(result.model["n_layers"]), int(result.model["n_heads"])),
        "probe": _probe_line(result),
        "timeline": "\n" + timeline_summary(record) if record else None,
        "report": written["report.html"],
    }


def _reinspect_command(run_dir: Path, conllu: str | None) -> str:
    parts = ["headwise", "train", "--resume", "--out", str(run_dir)]
    if conllu:
        parts += ["--conllu", conllu]
    return " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------------- the command
def run_train_command(args: argparse.Namespace) -> int:
    """``headwise train``: :func:`headwise.train.command.run_train`, with the story
    told on the single-process Trainer. For ``--nproc``/``--tp`` launches the run is
    trained first and then opened from its directory for the story; inside torchrun
    (one rank of many) only training happens."""
    from ..distributed.ddp import in_distributed_env
    from ..train import command as train_command

    report = not getattr(args, "no_report", False)
    conllu = getattr(args, "conllu", None)
    if conllu is not None and not Path(conllu).is_file():
        raise FileNotFoundError(f"--conllu {conllu!r}: no such file")
    if in_distributed_env():
        return train_command.run_train(args)
    told: list[bool] = []

    def story(trainer: Any) -> int:
        told.append(True)
        return tell_story(trainer, report=report, conllu=conllu)

    rc = train_command.run_train(args, story=story)
    if rc == 0 and not told:  # trained by a launcher's processes: tell it from the run directory
        from ..train.loop import Trainer

        cfg, _ = train_command.config_from_args(args)
        trainer = Trainer(cfg, resume=True, progress=False)
        return tell_story(trainer, report=report, conllu=conllu)
    return rc


def register(sub: Any) -> None:
    """Make ``headwise train`` tell the story: add ``--no-report`` and ``--conllu`` to
    the ``train`` parser (registered before this by :mod:`headwise.train.command`) and
    route it to :func:`run_train_command`."""
    t = sub.choices["train"]
    t.add_argument("--no-report", action="store_true",
                   help="train, evaluate and summarise, but do not inspect the heads (no report.html)")
    t.add_argument("--conllu", metavar="FILE", default=None,
                   help="a CoNLL-U treebank: also run the syntax probe on the trained model (report.html)")
    t.set_defaults(func=run_train_command)
