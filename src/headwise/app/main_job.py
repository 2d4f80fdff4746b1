"""``headwise train``, the whole story: train, check, evaluate, look inside the heads,
and say what happened in words.

:func:`tell_story` takes a :class:`headwise.train.Trainer` and

1. attaches the head recorder (:func:`headwise.inspect.timeline.attach_head_recorder`:
   every head's measures and role at each evaluation, ``heads.jsonl``);
2. trains (the sanity checks run before the first step) and evaluates on the
   validation split;
3. computes what a model that learned nothing from context would score
   (:func:`headwise.app.baseline_scores.baselines`);
4. inspects its own model (:func:`inspect_run`) on held-back text: passages of the
   validation split, never training text; with a CoNLL-U treebank also the syntax
   probe; and writes ``report.html`` (with the roles over training) into the run
   directory;
5. prints :func:`headwise.app.summary.summary_text`: the losses beside the baselines,
   what the heads became, and the commands to go further. It is also saved as
   ``summary.txt``; a finished run given ``--resume`` again re-prints it without
   recomputing.

The ``headwise train`` command is :func:`run_train_command`: :func:`register` adds
``--no-report`` (train and summarise, no inspection) and ``--conllu`` to the parser
that :mod:`headwise.app.train_command` builds, and routes the command here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import STDLIB_CODE
from ..distributed.ddp import in_distributed_env
from ..inspect import assign_roles, read_conllu
from ..inspect.report import REPORT_FILES, write_report
from ..inspect.timeline import attach_head_recorder, inspected_model, read_head_record, timeline_summary
from ..train.loop import Trainer
from ..train.rundir import register_run_entry, replace_file
from . import train_command
from .baseline_scores import baselines
from .cli_types import refuse_pipe, refuse_unused
from .inspection import inspect_model
from .summary import probe_line, role_leaders, summary_text

__all__ = [
    "heldout_passages",
    "inspect_run",
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
    for name in (*REPORT_FILES, SUMMARY_FILE, _STORY_FILE, f"{SUMMARY_FILE}.tmp", f"{_STORY_FILE}.tmp"):
        register_run_entry(name)  # (the .tmp files: replace_file's, left by a kill)


_register_entries()


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


# ---------------------------------------------------------------------- the story
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
        if not isinstance(saved, dict):  # JSON, but not the record this writes: none
            saved = {}
        if saved.get("key") == _story_key(trainer, conllu, report) and (
                not report or (run_dir / "report.html").is_file()):
            out(summary_path.read_text().rstrip("\n"))
            return 0
    if getattr(trainer, "is_main", True):
        # the record of the story told goes before it is told again: a kill while the report or
        # the summary is rewritten then never leaves a record naming half of either
        story_path.unlink(missing_ok=True)
    if report:
        attach_head_recorder(trainer)
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
                        checks=checks, prompt=generate_prompt(trainer.parts, str(cfg.corpus)), **heads)
    if failed:
        text += f"\n\n(no report: the inspection failed: {failed})"
    if getattr(trainer, "is_main", True):
        replace_file(summary_path, text + "\n")  # (each replaced whole)
        if not failed:  # a failed inspection is tried again by the next --resume
            replace_file(story_path, json.dumps({
                "key": _story_key(trainer, conllu, report), "validation": val, "baselines": base.to_dict(),
                "roles": heads.get("leaders"),
            }, indent=1) + "\n")
    out("")
    out(text)
    return 1 if failed else 0


def generate_prompt(parts: Any, corpus: str, words: int = 2) -> str:
    """The prompt the summary's ``generate`` command suggests: ``'def '`` for the standard
    library's code, else the first ``words`` words of the first held-back passage and a
    space (text the run's tokenizer knows, unlike a fixed prompt on a user's corpus)."""
    if corpus == STDLIB_CODE or parts.val is None:
        return "def "
    passages = heldout_passages(parts.val, parts.tokenizer, max_passages=1)
    first = passages[0].split()[:words] if passages else []
    return " ".join(first)[:40] + " " if first else "def "


def _inspect_and_report(trainer: Any, conllu: str | None, out: Any) -> dict[str, Any]:
    """Inspect the trainer's model on held-back text, write the report into the run
    directory; returns the summary's head fields (:func:`summary_text` keywords)."""
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
        "probe": probe_line(result),
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
    """``headwise train``: :func:`headwise.app.train_command.run_train`, with the story
    told on the single-process Trainer. For ``--nproc``/``--tp`` launches the run is
    trained first and then opened from its directory for the story; inside torchrun
    (one rank of many) only training happens."""
    report = not getattr(args, "no_report", False)
    conllu = getattr(args, "conllu", None)
    if not report:
        refuse_unused({"--conllu": None if conllu is None else repr(conllu)},
                      "with --no-report (the syntax probe is part of the report)", "drop {it} or --no-report")
    refuse_pipe("--conllu", conllu)
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
        cfg, _ = train_command.config_from_args(args)
        # the settings are run.json's now: the flags' defaults are no changes to them
        trainer = Trainer(cfg, resume=True, progress=False, changes={})
        return tell_story(trainer, report=report, conllu=conllu)
    return rc


def register(sub: Any) -> None:
    """Make ``headwise train`` tell the story: add ``--no-report`` and ``--conllu`` to
    the ``train`` parser (registered before this by :mod:`headwise.app.train_command`) and
    route it to :func:`run_train_command`."""
    t = sub.choices["train"]
    t.add_argument("--no-report", action="store_true",
                   help="train, evaluate and summarise, but do not inspect the heads (no report.html)")
    t.add_argument("--conllu", metavar="FILE", default=None,
                   help="a CoNLL-U treebank: also run the syntax probe on the trained model (report.html)")
    t.set_defaults(func=run_train_command)
