"""The text ``headwise train`` prints at the end of a run (:func:`summary_text`, saved as
``summary.txt``): the losses beside the baselines, what the heads became
(:func:`role_leaders`), the syntax probe in one line, and the commands to go further."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..inspect import OTHER, PRIORITY
from .baseline_scores import Baselines

__all__ = ["role_leaders", "summary_text", "probe_line"]


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
    d = result if isinstance(result, dict) else result.to_dict()
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in d["roles"]:
        groups.setdefault(r["primary"].split(":", 1)[0], []).append(r)
    out = []
    for role in [*PRIORITY, OTHER]:
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
        elif role == OTHER:
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
                 train_s: float | None = None, checks: Sequence[str] = (), prompt: str = "def ") -> str:
    """The text ``headwise train`` prints at the end (and saves as ``summary.txt``);
    ``prompt``: the one its ``generate`` command suggests (text of the run's corpus)."""
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
            word = "nearest" if x["role"] == OTHER else "strongest"
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
        lines.append(f"  generate          headwise generate {q(run)} --prompt {q(prompt)}")
    lines.append(f"  evaluate          headwise eval {q(run)}")
    lines.append(f"  inspect further   headwise inspect {q(run)} --conllu TREEBANK.conllu --out "
                 f"{q(run + '/inspect')} --importance")
    return "\n".join(lines)


def probe_line(result: Any) -> str | None:
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
