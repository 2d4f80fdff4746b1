"""The inspection report: one self-contained HTML page, PNG figures and ``measures.json``.

:func:`write_report` takes an :class:`~headwise.inspect.InspectResult` (or its
:meth:`~headwise.inspect.InspectResult.to_dict`) and writes into a folder:

* ``report.html`` — no network needed: CSS and JavaScript are inline and the data is
  embedded as JSON (``<script type="application/json" id="headwise-data">``). A
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

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import InspectResult

__all__ = ["ROLE_COLORS", "REPORT_FILES", "write_report", "summary_table", "report_data", "timeline_data"]

#: colour of each primary role (grid cells, legend, role figure).
ROLE_COLORS: dict[str, str] = {
    "induction": "#d62728",
    "syntactic": "#2ca02c",
    "previous-token": "#1f77b4",
    "next-token": "#17becf",
    "self": "#9467bd",
    "special": "#bcbd22",
    "broad": "#ff7f0e",
    "other": "#c7c7c7",
}
#: two-letter labels drawn in the grid cells.
ROLE_ABBREV: dict[str, str] = {
    "induction": "in",
    "syntactic": "sy",
    "previous-token": "pr",
    "next-token": "nx",
    "self": "se",
    "special": "sp",
    "broad": "br",
    "other": "",
}
#: the files :func:`write_report` may write (``pruning.png`` only with a pruning curve).
REPORT_FILES: tuple[str, ...] = ("report.html", "measures.json", "roles.png", "entropy.png", "probe.png", "pruning.png")

# how many relations a head's panel lists
_TOP_RELATIONS = 8


def _as_dict(result: InspectResult | dict[str, Any]) -> dict[str, Any]:
    if isinstance(result, dict):
        d = result
    elif hasattr(result, "to_dict"):
        d = result.to_dict()
    else:
        raise TypeError(f"result must be an InspectResult or its to_dict(), got {type(result).__name__}")
    for key in ("model", "data", "measures", "roles", "role_counts", "thresholds"):
        if key not in d:
            raise ValueError(f"result is missing {key!r}; expected InspectResult.to_dict() keys")
    return d


def _base_role(primary: str) -> str:
    return primary.split(":", 1)[0]


def _primary_relation(primary: str) -> str:
    """The relation a ``syntactic:REL`` primary role names, else ``""``."""
    return primary.split(":", 1)[1] if ":" in primary else ""


def _min_count(d: dict[str, Any]) -> int:
    """Instances a relation needs to be judged (the roles' ``min_relation_count``)."""
    return int(d["thresholds"].get("min_relation_count", 1))


def _judged_best(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe's best-head rows of the relations with enough instances."""
    probe = d.get("probe")
    return [r for r in probe["best"] if r["count"] >= _min_count(d)] if probe else []


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


# ------------------------------------------------------------------ summary table
def summary_table(result: InspectResult | dict[str, Any], relations: list[str] | None = None,
                  min_count: int | None = None) -> str:
    """The plain-text summary: one row per relation (most frequent first; only
    ``relations`` if given, else those with at least ``min_count`` instances, default
    the roles' ``min_relation_count``) with its best head (layer, head, direction), that
    head's accuracy, and the offset baseline (offset, accuracy); then the role counts."""
    d = _as_dict(result)
    lines = [
        f"model: {d['model'].get('class')} ({d['model']['n_layers']} layers x {d['model']['n_heads']} heads); "
        f"data: {d['data'].get('n_sentences')} sentences, {d['data'].get('n_words')} words "
        f"({d['data'].get('n_skipped', 0)} skipped)"
    ]
    probe = d.get("probe")
    if probe:
        if min_count is None:
            min_count = _min_count(d)
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
                r["relation"], str(r["count"]), f"L{r['layer']} H{r['head']}", r["direction"], _fmt(r["accuracy"]),
                "—" if off is None else f"offset {off:+d}", _fmt(r["baseline_accuracy"]),
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


# ------------------------------------------------------------------ data for the page
def report_data(result: InspectResult | dict[str, Any], *, title: str = "", command: str | None = None,
                pruning_metric: str | None = None,
                timeline: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The compact JSON the page embeds: per-head measures, roles with evidence and top
    relations, the probe's best-head table, the example sentences' attention maps
    as integers in thousandths (``weights[l][h][q][k]``), and with ``timeline`` (a
    run's head record) :func:`timeline_data`."""
    d = _as_dict(result)
    n_layers = int(d["model"]["n_layers"])
    meas = d["measures"]
    measure_names = [k for k, v in meas.items() if isinstance(v, list) and len(v) == n_layers
                     and all(isinstance(row, list) for row in v)]
    heads: list[dict[str, Any]] = []
    probe = d.get("probe")
    min_count = _min_count(d)
    ind = d.get("induction")
    imp = d.get("importance")
    for r in d["roles"]:
        layer, head = int(r["layer"]), int(r["head"])
        m = {k: meas[k][layer][head] for k in measure_names}
        if ind is not None:
            m["induction"] = ind[layer][head]
        if imp is not None:
            m["importance"] = imp[layer][head]
        rels = []
        if probe:
            for i, rel in enumerate(probe["relations"]):
                count = probe["counts"][i]
                if count < 1:
                    continue
                best, best_dir = None, None
                for direction in probe["directions"]:
                    a = probe["accuracy"][direction][rel][layer][head]
                    if a is not None and (best is None or a > best):
                        best, best_dir = a, direction
                base = probe["baseline_accuracy"][i]
                if best is None:
                    continue
                rels.append({
                    "relation": rel, "count": count, "accuracy": best, "direction": best_dir,
                    "baseline_offset": probe["baseline_offset"][i], "baseline_accuracy": base,
                    "margin": None if base is None else best - base, "judged": count >= min_count,
                })
            rels.sort(key=lambda x: (not x["judged"], -(x["margin"] if x["margin"] is not None else -9.0)))
        heads.append({
            "layer": layer, "head": head, "id": _head_name(layer, head), "primary": r["primary"],
            "role": _base_role(r["primary"]), "roles": r["roles"], "evidence": r["evidence"],
            "measures": m, "relations": rels[:_TOP_RELATIONS],
        })
    examples = []
    for ex in d.get("examples") or []:
        w = ex["weights"]
        examples.append({
            "tokens": ex["tokens"],
            "words": ex.get("words"),
            "weights": [[[[0 if v is None else int(round(v * 1000)) for v in row] for row in hm] for hm in lay]
                        for lay in w],
        })
    return {
        "title": title,
        "command": command,
        "model": d["model"],
        "data": d["data"],
        "thresholds": d["thresholds"],
        "role_counts": d["role_counts"],
        "role_colors": ROLE_COLORS,
        "measure_names": measure_names,
        "heads": heads,
        "probe_best": _judged_best(d),
        "sinks": meas.get("sinks", []),
        "pruning": d.get("pruning"),
        "pruning_metric": pruning_metric,
        "examples": examples,
        "timings": d.get("timings", {}),
        "timeline": timeline_data(timeline) if timeline else None,
    }


def timeline_data(records: Sequence[dict[str, Any]], digits: int = 4) -> dict[str, Any]:
    """The head record (rows of ``heads.jsonl``) by head, for the page: ``{"steps":
    [...], "measures": [names], "heads": [{"id", "layer", "head", "primary": [per step],
    "roles": [[...] per step], "measures": {name: [per step]}}]}`` (layer-major,
    values rounded to ``digits``)."""
    rows = sorted(records, key=lambda r: r["step"])
    if not rows:
        raise ValueError("timeline_data needs at least one row of the head record")
    names: list[str] = []
    for h in rows[-1]["heads"]:
        for k in h["measures"]:
            if k not in names:
                names.append(k)
    heads: dict[tuple[int, int], dict[str, Any]] = {}
    n = len(rows)
    for i, row in enumerate(rows):
        for h in row["heads"]:
            key = (int(h["layer"]), int(h["head"]))
            if key not in heads:
                heads[key] = {"id": _head_name(*key), "layer": key[0], "head": key[1], "primary": [None] * n,
                              "roles": [[] for _ in range(n)], "measures": {m: [None] * n for m in names}}
            t = heads[key]
            t["primary"][i] = h["role"]
            t["roles"][i] = list(h.get("roles", []))
            for m in names:
                v = h["measures"].get(m)
                t["measures"][m][i] = round(v, digits) if isinstance(v, float) and math.isfinite(v) else v
    return {"steps": [int(r["step"]) for r in rows], "measures": names,
            "heads": [heads[k] for k in sorted(heads)]}


# ------------------------------------------------------------------ figures
def _figures(d: dict[str, Any], out: Path, pruning_metric: str | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_layers, n_heads = int(d["model"]["n_layers"]), int(d["model"]["n_heads"])
    written: list[Path] = []
    cell = 0.55
    grid_w = max(4.0, n_heads * cell + 2.8)
    grid_h = max(2.5, n_layers * cell + 1.6)

    # roles.png: the grid coloured by primary role
    names = list(ROLE_COLORS)
    idx = [[names.index("other")] * n_heads for _ in range(n_layers)]
    labels = [[""] * n_heads for _ in range(n_layers)]
    for r in d["roles"]:
        role = _base_role(r["primary"])
        idx[r["layer"]][r["head"]] = names.index(role) if role in names else names.index("other")
        labels[r["layer"]][r["head"]] = _primary_relation(r["primary"]) or ROLE_ABBREV.get(role, "")
    fig, ax = plt.subplots(figsize=(grid_w, grid_h))
    ax.imshow(idx, cmap=ListedColormap([ROLE_COLORS[n] for n in names]), vmin=-0.5, vmax=len(names) - 0.5,
              aspect="equal")
    for layer in range(n_layers):
        for head in range(n_heads):
            ax.text(head, layer, labels[layer][head], ha="center", va="center", fontsize=6.5, color="black")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks([x - 0.5 for x in range(1, n_heads)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n_layers)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    counts = d["role_counts"]
    ax.legend(handles=[Patch(color=ROLE_COLORS[n], label=f"{n} ({counts.get(n, 0)})") for n in names],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title("primary role of each head (syntactic cells name their relation)", fontsize=9)
    fig.tight_layout()
    written.append(out / "roles.png")
    fig.savefig(written[-1], dpi=130)
    plt.close(fig)

    # entropy.png: normalised entropy per head
    ent = d["measures"]["normalized_entropy"]
    fig, ax = plt.subplots(figsize=(grid_w - 0.8, grid_h))
    im = ax.imshow([[math.nan if v is None else v for v in row] for row in ent], cmap="viridis", vmin=0, vmax=1,
                   aspect="equal")
    for layer in range(n_layers):
        for head in range(n_heads):
            v = ent[layer][head]
            if v is not None:
                ax.text(head, layer, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="normalised entropy (1 = uniform)")
    ax.set_title("attention entropy per head", fontsize=9)
    fig.tight_layout()
    written.append(out / "entropy.png")
    fig.savefig(written[-1], dpi=130)
    plt.close(fig)

    # probe.png: the best-head table with a bar per relation
    probe = d.get("probe")
    min_count = _min_count(d)
    rows = _judged_best(d)[:20]
    if rows:
        fig, (ax_bar, ax_tab) = plt.subplots(1, 2, figsize=(11, 0.34 * len(rows) + 1.4),
                                             gridspec_kw={"width_ratios": [1, 1.6]})
        ys = list(range(len(rows)))[::-1]
        ax_bar.barh([y + 0.2 for y in ys], [r["accuracy"] for r in rows], height=0.4, color="#2ca02c",
                    label="best head")
        ax_bar.barh([y - 0.2 for y in ys], [r["baseline_accuracy"] or 0 for r in rows], height=0.4,
                    color="#aaaaaa", label="offset baseline")
        ax_bar.set_yticks(ys)
        ax_bar.set_yticklabels([r["relation"] for r in rows])
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("accuracy")
        # one empty slot on top, level with the table's header row, so bars and rows line up
        ax_bar.set_ylim(-0.5, len(rows) + 0.5)
        ax_bar.legend(fontsize=7, loc="upper right", ncol=2, frameon=False)
        ax_tab.axis("off")
        cells = [[r["relation"], str(r["count"]), f"L{r['layer']} H{r['head']}", r["direction"],
                  _fmt(r["accuracy"]), "—" if r["baseline_offset"] is None else f"{r['baseline_offset']:+d}",
                  _fmt(r["baseline_accuracy"])] for r in rows]
        tab = ax_tab.table(cellText=cells, colLabels=["relation", "n", "head", "direction", "acc", "offset",
                                                      "base acc"], bbox=[0, 0, 1, 1], cellLoc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(7.5)
        for i, r in enumerate(rows, start=1):
            better = r["baseline_accuracy"] is not None and r["accuracy"] > r["baseline_accuracy"]
            tab[i, 4].set_facecolor("#d9f0d3" if better else "#f4d6d6")
        fig.suptitle("syntax probe: best head per relation vs the best fixed-offset baseline (0-based)", fontsize=9)
        fig.tight_layout()
    else:
        fig, ax = plt.subplots(figsize=(5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no syntax probe (give CoNLL-U input)" if not probe else
                f"no relation with >= {min_count} instances", ha="center", va="center")
    written.append(out / "probe.png")
    fig.savefig(written[-1], dpi=130)
    plt.close(fig)

    curve = d.get("pruning")
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", markersize=3)
        ax.set_xlabel("fraction of heads ablated (least important first)")
        ax.set_ylabel(pruning_metric or "metric")
        ax.set_title("pruning curve", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out / "pruning.png")
        fig.savefig(written[-1], dpi=130)
        plt.close(fig)
    return written


# ------------------------------------------------------------------ HTML
_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:18px;margin:0 0 4px}
header .meta{color:#666;font-size:12px}
code{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f0f0f0;padding:1px 4px;border-radius:3px}
main{display:flex;gap:20px;padding:16px 20px;align-items:flex-start;flex-wrap:wrap}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 14px}
h2{font-size:15px;margin:0 0 8px}
h3{font-size:13px;margin:12px 0 4px}
table.grid{border-collapse:separate;border-spacing:2px}
table.grid th{font-weight:normal;color:#666;font-size:11px;padding:0 3px}
td.cell{width:34px;height:26px;text-align:center;font-size:10px;cursor:pointer;border-radius:3px;
  border:2px solid transparent;color:#111}
td.cell:hover{border-color:#555}
td.cell.selected{border-color:#000;box-shadow:0 0 0 1px #000}
.legend{display:flex;flex-wrap:wrap;gap:6px 14px;margin-top:10px;font-size:12px}
.legend span.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-2px}
table.kv{border-collapse:collapse;font-size:12px}
table.kv td,table.kv th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
table.kv td.num{text-align:right;font-variant-numeric:tabular-nums}
#panel{min-width:420px;flex:1}
#panel .roles span{display:inline-block;padding:1px 7px;margin:2px 4px 2px 0;border-radius:9px;font-size:12px}
#heatmap-wrap{overflow:auto;max-width:100%}
select{font-size:13px;max-width:100%}
.muted{color:#888}
.good{color:#1a7f1a}.bad{color:#b22}
#timeline{flex-basis:100%;box-sizing:border-box;overflow:auto}
table.tl{border-collapse:separate;border-spacing:1px}
table.tl th{font-weight:normal;color:#666;font-size:11px;padding:0 4px;text-align:right;white-space:nowrap}
table.tl th.tl-head{cursor:pointer}
table.tl th.tl-step{text-align:left;padding:0;width:14px;max-width:14px;overflow:visible;font-size:10px}
table.tl tr.selected th.tl-head{color:#000;font-weight:bold}
td.tl-cell{width:14px;min-width:14px;height:14px;padding:0;border-radius:2px}
#tl-chart-wrap{margin-top:10px}
"""

_JS = r"""
(function(){
  window.__errors = window.__errors || [];
  window.addEventListener('error', function(e){ window.__errors.push(String(e.message || e)); mark(); });
  var D = JSON.parse(document.getElementById('headwise-data').textContent);
  var H = D.model.n_heads;
  var byId = {};
  D.heads.forEach(function(h){ byId[h.id] = h; });
  var current = null;
  var sentence = 0;  // the example sentence shown, kept across head selections

  function el(tag, attrs, text){
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v, d){
    if (v === null || v === undefined || (typeof v === 'number' && !isFinite(v))) return '\u2014';
    if (typeof v === 'number')
      return (Math.abs(v) >= 100 || Number.isInteger(v)) ? String(v) : v.toFixed(d === undefined ? 3 : d);
    return String(v);
  }
  function kvTable(rows, head){
    var t = el('table', {'class': 'kv'});
    if (head){ var tr = el('tr'); head.forEach(function(c){ tr.appendChild(el('th', null, c)); }); t.appendChild(tr); }
    rows.forEach(function(r){
      var tr = el('tr');
      r.forEach(function(c){
        tr.appendChild(el('td', typeof c === 'number' ? {'class': 'num'} : null, fmt(c)));
      });
      t.appendChild(tr);
    });
    return t;
  }
  function mark(){
    var s = document.getElementById('status');
    if (!s) return;
    s.setAttribute('data-errors', String(window.__errors.length));
    s.setAttribute('data-selected', current ? current.id : '');
    s.setAttribute('data-sentence', String(sentence));
    s.textContent = window.__errors.length ? ('errors: ' + window.__errors.join(' | ')) : '';
  }

  function heatmap(head, exIndex){
    var wrap = document.getElementById('heatmap-wrap');
    wrap.innerHTML = '';
    var ex = D.examples[exIndex];
    if (!ex){ wrap.appendChild(el('p', {'class': 'muted'}, 'no example sentences were kept')); return; }
    var w = ex.weights[head.layer][head.head];
    var toks = ex.tokens, n = toks.length;
    var c = Math.max(9, Math.min(22, Math.floor(560 / n)));
    var pad = 8 + 6.2 * Math.min(14, Math.max.apply(null, toks.map(function(t){ return t.length; })));
    var size = pad + n * c + 4;
    var NS = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('width', size); svg.setAttribute('height', size);
    svg.setAttribute('id', 'heatmap'); svg.setAttribute('data-head', head.id);
    svg.setAttribute('font-size', Math.min(11, c - 1)); svg.setAttribute('font-family', 'ui-monospace,monospace');
    function short(t){ return t.length > 14 ? t.slice(0, 13) + '\u2026' : t; }
    for (var i = 0; i < n; i++){
      var ty = document.createElementNS(NS, 'text');
      ty.setAttribute('x', pad - 4); ty.setAttribute('y', pad + i * c + c * 0.72);
      ty.setAttribute('text-anchor', 'end');
      ty.textContent = short(toks[i]); svg.appendChild(ty);
      var tx = document.createElementNS(NS, 'text');
      var x = pad + i * c + c * 0.72;
      tx.setAttribute('x', x); tx.setAttribute('y', pad - 4); tx.setAttribute('text-anchor', 'start');
      tx.setAttribute('transform', 'rotate(-90 ' + x + ' ' + (pad - 4) + ')');
      tx.textContent = short(toks[i]); svg.appendChild(tx);
      for (var j = 0; j < n; j++){
        var v = w[i][j] / 1000;
        var r = document.createElementNS(NS, 'rect');
        r.setAttribute('x', pad + j * c); r.setAttribute('y', pad + i * c);
        r.setAttribute('width', c - 1); r.setAttribute('height', c - 1);
        var g = Math.round(255 - 225 * Math.sqrt(v));
        r.setAttribute('fill', 'rgb(' + g + ',' + g + ',' + Math.round(255 - 120 * Math.sqrt(v)) + ')');
        var tt = document.createElementNS(NS, 'title');
        tt.textContent = toks[i] + ' \u2192 ' + toks[j] + ': ' + v.toFixed(3);
        r.appendChild(tt); svg.appendChild(r);
      }
    }
    wrap.appendChild(svg);
    wrap.appendChild(el('p', {'class': 'muted'}, 'rows: query token (attends from); columns: key token ' +
      '(attends to); darker = more attention (square-root scale). Hover a cell for its weight.'));
  }

  // "Roles over training": one measure of every head against the step, selected head on top
  var TL = D.timeline;
  function tlChart(){
    var wrap = document.getElementById('tl-chart-wrap');
    var pick = document.getElementById('tl-measure');
    if (!TL || !wrap || !pick) return;
    wrap.innerHTML = '';
    var name = pick.value, steps = TL.steps;
    var lo = Infinity, hi = -Infinity;
    TL.heads.forEach(function(h){ h.measures[name].forEach(function(v){
      if (v !== null && isFinite(v)){ lo = Math.min(lo, v); hi = Math.max(hi, v); } }); });
    if (!isFinite(lo)){ wrap.appendChild(el('p', {'class': 'muted'}, 'no values of ' + name)); return; }
    if (hi - lo < 1e-9){ hi = lo + 1; }
    var W = 640, Hh = 220, L = 48, R = 12, T = 10, B = 28;
    var s0 = steps[0], s1 = steps[steps.length - 1] === s0 ? s0 + 1 : steps[steps.length - 1];
    function X(s){ return L + (s - s0) / (s1 - s0) * (W - L - R); }
    function Y(v){ return T + (1 - (v - lo) / (hi - lo)) * (Hh - T - B); }
    var NS = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('width', W); svg.setAttribute('height', Hh); svg.setAttribute('id', 'tl-chart');
    svg.setAttribute('data-measure', name); svg.setAttribute('font-size', '10');
    function line(x1, y1, x2, y2, c){
      var e = document.createElementNS(NS, 'line');
      e.setAttribute('x1', x1); e.setAttribute('y1', y1); e.setAttribute('x2', x2); e.setAttribute('y2', y2);
      e.setAttribute('stroke', c); svg.appendChild(e);
    }
    function text(x, y, s, anchor){
      var e = document.createElementNS(NS, 'text');
      e.setAttribute('x', x); e.setAttribute('y', y); e.setAttribute('text-anchor', anchor || 'middle');
      e.setAttribute('fill', '#666'); e.textContent = s; svg.appendChild(e);
    }
    line(L, Hh - B, W - R, Hh - B, '#999'); line(L, T, L, Hh - B, '#999');
    [lo, (lo + hi) / 2, hi].forEach(function(v){
      text(L - 4, Y(v) + 3, fmt(v, 2), 'end'); line(L - 3, Y(v), L, Y(v), '#999'); });
    [s0, steps[Math.floor((steps.length - 1) / 2)], steps[steps.length - 1]].forEach(function(s){
      text(X(s), Hh - B + 14, String(s)); });
    text((L + W - R) / 2, Hh - 2, 'step');
    var order = TL.heads.filter(function(h){ return !current || h.id !== current.id; });
    TL.heads.forEach(function(h){ if (current && h.id === current.id) order.push(h); });
    order.forEach(function(h){
      var sel = current && h.id === current.id;
      var pts = [];
      h.measures[name].forEach(function(v, i){ if (v !== null && isFinite(v)) pts.push(X(steps[i]) + ',' + Y(v)); });
      var last = h.primary[h.primary.length - 1] || 'other';
      var pl = document.createElementNS(NS, 'polyline');
      pl.setAttribute('points', pts.join(' ')); pl.setAttribute('fill', 'none');
      var col = last.split(':')[0] === 'other' ? '#333' : (D.role_colors[last.split(':')[0]] || '#333');
      pl.setAttribute('stroke', sel ? col : '#d0d0d0');
      pl.setAttribute('stroke-width', sel ? '2.5' : '1'); pl.setAttribute('data-head', h.id);
      var tt = document.createElementNS(NS, 'title'); tt.textContent = h.id + ': ' + name; pl.appendChild(tt);
      svg.appendChild(pl);
    });
    wrap.appendChild(svg);
    wrap.appendChild(el('p', {'class': 'muted'}, name + ' of every head at each evaluation' +
      (current ? '; ' + current.id + ' drawn in the colour of its last role (black: other)' : '')));
  }
  if (TL){
    var pick = document.getElementById('tl-measure');
    if (pick){
      if (TL.measures.indexOf('offset_-1') >= 0) pick.value = 'offset_-1';
      pick.addEventListener('change', tlChart);
    }
    var tlHeads = document.querySelectorAll('#timeline-grid th.tl-head');
    for (var i = 0; i < tlHeads.length; i++){
      tlHeads[i].addEventListener('click', function(ev){
        var id = ev.currentTarget.getAttribute('data-head');
        if (byId[id]) select(id);
      });
    }
  }

  function select(id){
    var h = byId[id];
    if (!h){ window.__errors.push('no head ' + id); mark(); return; }
    current = h;
    var cells = document.querySelectorAll('td.cell');
    for (var i = 0; i < cells.length; i++) cells[i].classList.toggle('selected', cells[i].id === 'cell-' + id);
    var rows = document.querySelectorAll('#timeline-grid tr.tl-row');
    for (var i = 0; i < rows.length; i++) rows[i].classList.toggle('selected', rows[i].id === 'tl-' + id);
    tlChart();
    var p = document.getElementById('panel');
    p.innerHTML = '';
    p.setAttribute('data-head', id);
    p.appendChild(el('h2', null, 'Layer ' + h.layer + ', head ' + h.head + ' (' + id + ')'));
    var roles = el('div', {'class': 'roles', 'id': 'head-roles'});
    roles.appendChild(document.createTextNode('primary: '));
    var prim = el('span', null, h.primary);
    prim.style.background = D.role_colors[h.role] || '#ccc';
    roles.appendChild(prim);
    if (h.roles.length > 1){
      roles.appendChild(document.createTextNode(' also: '));
      h.roles.slice(1).forEach(function(r){
        var s = el('span', null, r); s.style.background = '#eee'; roles.appendChild(s);
      });
    }
    p.appendChild(roles);
    var th = null;
    if (TL) TL.heads.forEach(function(x){ if (x.id === id) th = x; });
    if (th){  // its primary role over training, as runs of equal roles
      var segs = [];
      th.primary.forEach(function(r, i){
        if (r === null) return;
        var last = segs[segs.length - 1];
        if (last && last.role === r) last.to = TL.steps[i];
        else segs.push({role: r, from: TL.steps[i], to: TL.steps[i]});
      });
      var hist = el('div', {'class': 'roles', 'id': 'head-history'});
      hist.appendChild(document.createTextNode('over training (probe batch): '));
      segs.forEach(function(sg, k){
        if (k) hist.appendChild(document.createTextNode(' \u2192 '));
        var span = sg.from === sg.to ? 'step ' + sg.from : sg.from + '\u2013' + sg.to;
        var sp = el('span', null, sg.role + ' (' + span + ')');
        sp.style.background = D.role_colors[sg.role.split(':')[0]] || '#ccc';
        hist.appendChild(sp);
      });
      p.appendChild(hist);
    }

    p.appendChild(el('h3', null, 'Attention on an example sentence'));
    var sel = el('select', {'id': 'sentence'});
    D.examples.forEach(function(ex, k){
      var words = ex.words ? ex.words.join(' ') : ex.tokens.join(' ');
      var label = words.length > 90 ? words.slice(0, 89) + '\u2026' : words;
      sel.appendChild(el('option', {'value': String(k)}, (k + 1) + '. ' + label));
    });
    var chosen = sentence;
    if (!(chosen >= 0 && chosen < D.examples.length)) chosen = 0;
    sel.value = String(chosen);
    sel.addEventListener('change', function(){
      sentence = Number(sel.value);
      heatmap(current, sentence);
      mark();
    });
    if (D.examples.length) p.appendChild(sel);
    p.appendChild(el('div', {'id': 'heatmap-wrap'}));
    heatmap(h, chosen);

    p.appendChild(el('h3', null, 'Best relations in the syntax probe'));
    if (h.relations.length){
      p.appendChild(kvTable(h.relations.map(function(r){
        return [r.relation + (r.judged ? '' : ' (few)'), r.count, r.direction, r.accuracy,
                (r.baseline_offset === null ? '\u2014' : (r.baseline_offset > 0 ? '+' : '') + r.baseline_offset),
                r.baseline_accuracy,
                r.margin === null ? null : (r.margin >= 0 ? '+' : '') + r.margin.toFixed(3)];
      }), ['relation', 'n', 'direction', 'accuracy', 'offset', 'baseline', 'margin']));
    } else {
      p.appendChild(el('p', {'class': 'muted'}, 'no syntax probe (the input was not CoNLL-U)'));
    }

    p.appendChild(el('h3', null, 'Role evidence'));
    var ev = [];
    Object.keys(h.evidence).forEach(function(k){
      var v = h.evidence[k];
      if (v !== null && typeof v === 'object'){
        Object.keys(v).forEach(function(rel){
          ev.push(['syntactic:' + rel, v[rel].accuracy, 'margin ' + fmt(v[rel].margin)]);
        });
      } else ev.push([k, v, '']);
    });
    p.appendChild(kvTable(ev, ['test', 'value', '']));

    p.appendChild(el('h3', null, 'Measures'));
    var ms = Object.keys(h.measures).map(function(k){ return [k, h.measures[k]]; });
    p.appendChild(kvTable(ms, ['measure', 'value']));
    try { history.replaceState(null, '', '#select=' + id); } catch (e) { /* some file:// pages refuse */ }
    mark();
  }

  var cells = document.querySelectorAll('td.cell');
  for (var i = 0; i < cells.length; i++){
    cells[i].addEventListener('click', function(ev){ select(ev.currentTarget.id.slice(5)); });
  }
  var links = document.querySelectorAll('a.head-link');
  for (var i = 0; i < links.length; i++){
    links[i].addEventListener('click', function(ev){
      ev.preventDefault();
      select(ev.currentTarget.getAttribute('data-head'));
    });
  }
  // test and link hooks: #select=L2H3 selects a head at load, #click=L2H3 clicks its cell,
  // &sentence=K shows example sentence K (0-based)
  var m = /select=(L\d+H\d+)/.exec(location.hash);
  var k = /click=(L\d+H\d+)/.exec(location.hash);
  var sm = /sentence=(\d+)/.exec(location.hash);
  if (sm) sentence = Number(sm[1]);
  try {
    if (k && document.getElementById('cell-' + k[1])) {
      select(D.heads[0].id);
      document.getElementById('cell-' + k[1]).click();
    } else select(m ? m[1] : D.heads[0].id);
  } catch (e) { window.__errors.push(String(e && e.stack || e)); }
  document.body.setAttribute('data-ready', '1');
  mark();
})();
"""


def _grid_html(d: dict[str, Any]) -> str:
    n_layers, n_heads = int(d["model"]["n_layers"]), int(d["model"]["n_heads"])
    by = {(r["layer"], r["head"]): r for r in d["roles"]}
    rows = ["<table class='grid' id='grid'><tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_heads)) + "</tr>"]
    for layer in range(n_layers):
        cells = [f"<th>L{layer}</th>"]
        for head in range(n_heads):
            r = by.get((layer, head), {"primary": "other", "roles": []})
            role = _base_role(r["primary"])
            label = _primary_relation(r["primary"])[:6] or ROLE_ABBREV.get(role, "")
            tip = f"L{layer} H{head}: " + (", ".join(r["roles"]) or "other")
            cells.append(
                f"<td class='cell' id='cell-{_head_name(layer, head)}' data-layer='{layer}' data-head='{head}' "
                f"data-role='{html.escape(role)}' style='background:{ROLE_COLORS.get(role, '#ccc')}' "
                f"title='{html.escape(tip)}'>{html.escape(label)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rows.append("</table>")
    counts = d["role_counts"]
    legend = "".join(
        f"<span><span class='sw' style='background:{c}'></span>{html.escape(n)} ({counts.get(n, 0)})</span>"
        for n, c in ROLE_COLORS.items()
    )
    return "".join(rows) + f"<div class='legend' id='legend'>{legend}</div>"


def _probe_html(view: dict[str, Any]) -> str:
    rows = view["probe_best"]
    if not rows:
        return "<p class='muted'>No syntax probe: give CoNLL-U input (<code>--conllu</code>).</p>"
    out = ["<table class='kv' id='probe-table'><tr><th>relation</th><th>n</th><th>best head</th><th>direction</th>"
           "<th>accuracy</th><th>baseline</th><th>base acc</th></tr>"]
    for r in rows:
        better = r["baseline_accuracy"] is not None and r["accuracy"] > r["baseline_accuracy"]
        off = "—" if r["baseline_offset"] is None else f"{r['baseline_offset']:+d}"
        hid = _head_name(r["layer"], r["head"])
        out.append(
            f"<tr><td>{html.escape(r['relation'])}</td><td class='num'>{r['count']}</td>"
            f"<td><a href='#select={hid}' data-head='{hid}' class='head-link'>"
            f"L{r['layer']} H{r['head']}</a></td><td>{r['direction']}</td>"
            f"<td class='num {'good' if better else 'bad'}'>{_fmt(r['accuracy'])}</td><td>offset {off}</td>"
            f"<td class='num'>{_fmt(r['baseline_accuracy'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _timeline_html(tl: dict[str, Any] | None) -> str:
    """The "Roles over training" section: a heads x steps grid coloured by primary
    role, and the place of the measure chart the page script draws."""
    if not tl:
        return ""
    steps = tl["steps"]
    # label about 12 columns, and never two closer than their text is wide (15 px a column)
    every = max(1, math.ceil(len(steps) / 12), math.ceil((6.5 * len(str(steps[-1])) + 4) / 15))
    head = ["<tr><th>step</th>"] + [
        f"<th class='tl-step'>{s if i % every == 0 else ''}</th>" for i, s in enumerate(steps)
    ] + ["</tr>"]
    rows = []
    for h in tl["heads"]:
        cells = []
        for i, step in enumerate(steps):
            primary = h["primary"][i]
            if primary is None:
                cells.append("<td class='tl-cell tl-missing' title='not recorded'></td>")
                continue
            role = _base_role(primary)
            tip = [f"L{h['layer']} H{h['head']}, step {step}: {primary}"
                   + (f" ({', '.join(h['roles'][i])})" if len(h["roles"][i]) > 1 else "")]
            tip += [f"{m} {_fmt(h['measures'][m][i])}" for m in tl["measures"]]
            cells.append(f"<td class='tl-cell' data-step='{step}' data-role='{html.escape(role)}' "
                         f"style='background:{ROLE_COLORS.get(role, '#ccc')}' "
                         f"title='{html.escape(chr(10).join(tip))}'></td>")
        rows.append(f"<tr class='tl-row' id='tl-{h['id']}' data-head='{h['id']}'>"
                    f"<th class='tl-head' data-head='{h['id']}'>L{h['layer']}.H{h['head']}</th>{''.join(cells)}</tr>")
    legend = "".join(
        f"<span><span class='sw' style='background:{c}'></span>{html.escape(n)}</span>" for n, c in ROLE_COLORS.items()
    )
    options = "".join(f"<option value='{html.escape(m)}'>{html.escape(m)}</option>" for m in tl["measures"])
    return (
        "<section id='timeline'><h2>Roles over training</h2>"
        f"<p class='muted' style='margin:0 0 6px'>Each head's primary role at each of the run's {len(steps)} "
        f"evaluations (steps {steps[0]}..{steps[-1]}), measured on a fixed probe batch of validation blocks; "
        "hover a cell for the measures, click a head to select it.</p>"
        f"<table class='tl' id='timeline-grid'>{''.join(head)}{''.join(rows)}</table>"
        f"<div class='legend'>{legend}</div>"
        f"<h3>One measure over training</h3><select id='tl-measure'>{options}</select>"
        "<div id='tl-chart-wrap'></div></section>"
    )


def _html(d: dict[str, Any], view: dict[str, Any], figures: list[str]) -> str:
    blob = json.dumps(view, separators=(",", ":"), allow_nan=False)
    # "</" inside a <script> would end it; "<!--" would start a comment
    blob = blob.replace("</", "<\\/").replace("<!--", "<\\!--")
    title = view["title"] or f"headwise inspect: {d['model'].get('class')}"
    data = d["data"]
    meta = (f"{d['model'].get('class')}, {d['model']['n_layers']} layers x {d['model']['n_heads']} heads"
            f"{' (causal)' if d['model'].get('causal') else ''} · {data.get('n_sentences')} sentences, "
            f"{data.get('n_words')} words from {html.escape(str(data.get('source')))}"
            f" · layers and heads are 0-based")
    cmd = f"<div class='meta'><code>{html.escape(view['command'])}</code></div>" if view.get("command") else ""
    figs = "".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a> " for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<header><h1>{html.escape(title)}</h1><div class="meta">{meta}</div>{cmd}</header>
<main>
<section id="heads"><h2>Heads by primary role</h2>
<p class="muted" style="margin:0 0 6px">Click a head to see its attention, measures, roles and relations.</p>
{_grid_html(d)}
<h3>Syntax probe: best head per relation</h3>{_probe_html(view)}
<p class="muted">Figures: {figs} · data: <a href="measures.json">measures.json</a></p>
</section>
<section id="panel"><h2>Select a head</h2></section>
{_timeline_html(view.get("timeline"))}
</main>
<div id="status" data-errors="0" data-selected="" style="color:#b22;padding:0 20px"></div>
<script type="application/json" id="headwise-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


def write_report(result: InspectResult | dict[str, Any], out_dir: str | os.PathLike, *, title: str = "",
                 command: str | None = None, pruning_metric: str | None = None,
                 figures: bool = True, timeline: Sequence[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``report.html``, ``measures.json`` and (with ``figures``) the PNG figures
    into ``out_dir`` (created if needed; existing files of the same names are
    replaced — the CLI guards against overwriting). Returns ``{file name: path}``.

    Args:
        result: an :class:`~headwise.inspect.InspectResult` or its ``to_dict()``.
        out_dir: the folder to write into.
        title: page title (default names the model class).
        command: the command line that produced the result, shown on the page.
        pruning_metric: the name of the pruning curve's metric (axis label).
        figures: also write the PNG figures (matplotlib).
        timeline: a run's head record (:func:`headwise.inspect.timeline.read_head_record`):
            adds the "Roles over training" section.
    """
    d = _as_dict(result)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a folder, got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = out / "measures.json"
    path.write_text(json.dumps(d, allow_nan=False))
    written[path.name] = path
    if figures:
        for p in _figures(d, out, pruning_metric):
            written[p.name] = p
    view = report_data(d, title=title, command=command, pruning_metric=pruning_metric, timeline=timeline)
    path = out / "report.html"
    path.write_text(_html(d, view, [n for n in written if n.endswith(".png")]), encoding="utf-8")
    written[path.name] = path
    return written
