"""The inspection report: one self-contained HTML page, PNG figures and ``measures.json``.

:func:`write_report` takes an :class:`~headwise.app.InspectResult` (or its
:meth:`~headwise.app.InspectResult.to_dict`) and writes into a folder:

* ``report.html`` — no network needed: CSS and JavaScript (package data,
  ``assets/report.css`` and ``assets/report.js``) are inline and the data is embedded as
  JSON (``<script type="application/json" id="headwise-data">``). A
  layers x heads grid coloured by each head's primary role (with a legend); clicking a
  head shows its attention heatmap on an example sentence (a sentence selector), its
  measures, its roles with their evidence, and its best relations in the syntax
  probe. ``report.html#select=L2H3`` selects layer 2, head 3 (0-based) at load
  (``#click=L2H3`` clicks its cell; ``&sentence=K`` shows example sentence K); the
  ``#status`` element records ``data-selected``, ``data-sentence`` and ``data-errors``
  (uncaught JavaScript errors, also in ``window.__errors``) for tests.
* ``roles.png``, ``entropy.png``, ``probe.png`` and, with importance, ``pruning.png``
  (matplotlib, Agg backend).
* ``measures.json`` — the whole result dict.

Given a run's head record (``timeline=``, the rows of ``heads.jsonl``, see
:mod:`headwise.inspect.timeline`) the page also has a section "Roles over training":
one row per head (``L.H``), one column per evaluation step, each cell coloured by the
head's primary role at that step (hover: the step, the roles and the measures), and a
line chart of one chosen measure per head over the steps (the selected head drawn in
its role's colour).

:func:`summary_table` gives the plain-text summary the ``headwise inspect`` command
prints (per relation: best head and accuracy against the offset baseline; role counts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checks import naming_errors
from .report_figures import write_figures
from .report_page import page_html
from .report_view import (
    ROLE_COLORS,
    Result,
    as_dict,
    fmt_value,
    relation_min_count,
    report_data,
    timeline_data,
)

__all__ = ["ROLE_COLORS", "REPORT_FILES", "write_report", "summary_table", "report_data", "timeline_data"]

#: the files :func:`write_report` may write (``pruning.png`` only with a pruning curve).
REPORT_FILES: tuple[str, ...] = ("report.html", "measures.json", "roles.png", "entropy.png", "probe.png", "pruning.png")


def summary_table(result: Result, relations: list[str] | None = None,
                  min_count: int | None = None) -> str:
    """The plain-text summary: one row per relation (most frequent first; only
    ``relations`` if given, else those with at least ``min_count`` instances, default
    the roles' ``min_relation_count``) with its best head (layer, head, direction), that
    head's accuracy, and the offset baseline (offset, accuracy); then the role counts."""
    d = as_dict(result)
    lines = [
        f"model: {d['model'].get('class')} ({d['model']['n_layers']} layers x {d['model']['n_heads']} heads); "
        f"data: {d['data'].get('n_sentences')} sentences, {d['data'].get('n_words')} words "
        f"({d['data'].get('n_skipped', 0)} skipped)"
    ]
    probe = d.get("probe")
    if probe:
        if min_count is None:
            min_count = relation_min_count(d)
        rows = [r for r in probe["best"] if (r["relation"] in relations if relations else r["count"] >= min_count)]
        few = not rows and not relations and bool(probe["best"])
        if few:  # a small corpus: show every relation rather than nothing
            rows = probe["best"]
        header = ("relation", "count", "best head", "direction", "accuracy", "baseline", "base acc", "gain")
        table = [header]
        for r in rows:
            off = r["baseline_offset"]
            gain = None
            if r["accuracy"] is not None and r["baseline_accuracy"] is not None:
                gain = r["accuracy"] - r["baseline_accuracy"]
            table.append((
                r["relation"], str(r["count"]), f"L{r['layer']} H{r['head']}", r["direction"], fmt_value(r["accuracy"]),
                "—" if off is None else f"offset {off:+d}", fmt_value(r["baseline_accuracy"]),
                "—" if gain is None else f"{gain:+.3f}",
            ))
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines.append("")
        lines.append("syntax probe (best head per relation vs the best fixed-offset baseline; layers/heads 0-based):")
        if few:
            lines.append(f"  (every relation has fewer than {min_count} instances: too few to judge heads by)")
        for k, row in enumerate(table):
            lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                          enumerate(zip(row, widths, strict=True))))
            if k == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        if not rows:
            lines.append(f"  (no relation with >= {min_count} instances)")
    counts = d["role_counts"]
    total = sum(counts.values())
    order = [r for r in ROLE_COLORS if r in counts] + sorted(r for r in counts if r not in ROLE_COLORS)
    lines.append("")
    lines.append(f"primary roles ({total} heads): " + ", ".join(f"{r} {counts[r]}" for r in order))
    return "\n".join(lines)


def write_report(result: Result, out_dir: str | os.PathLike, *, title: str = "",
                 command: str | None = None, pruning_metric: str | None = None,
                 figures: bool = True, timeline: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``measures.json`` and (with ``figures``) the PNG figures
    into ``out_dir`` (created if needed; existing files of the same names are
    replaced — the CLI guards against overwriting). Returns ``{file name: path}``.

    Args:
        result: an :class:`~headwise.app.InspectResult` or its ``to_dict()``.
        out_dir: the folder to write into.
        title: page title (default names the model class).
        command: the command line that produced the result, shown on the page.
        pruning_metric: the name of the pruning curve's metric (axis label).
        figures: also write the PNG figures (matplotlib).
        timeline: a run's head record (:func:`headwise.inspect.timeline.read_head_record`):
            adds the "Roles over training" section.
    """
    d = as_dict(result)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a folder, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = out / "measures.json"
    with naming_errors(path):  # (a full disk named no file)
        path.write_text(json.dumps(d, allow_nan=False))
    written[path.name] = path
    if figures:
        for p in write_figures(d, out, pruning_metric):
            written[p.name] = p
    view = report_data(d, title=title, command=command, pruning_metric=pruning_metric, timeline=timeline)
    path = out / "report.html"
    with naming_errors(path):
        path.write_text(page_html(d, view, [n for n in written if n.endswith(".png")]), encoding="utf-8")
    written[path.name] = path
    return written
