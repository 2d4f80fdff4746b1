"""The report's HTML page: one self-contained file (no network needed), with the
stylesheet and the script inline, read from the package data ``assets/report.css`` and
``assets/report.js``, and the data embedded as JSON
(``<script type="application/json" id="headwise-data">``).
"""

from __future__ import annotations

import functools
import html
import json
import math
from importlib import resources
from typing import Any

from .report_view import ROLE_ABBREV, ROLE_COLORS, base_role, fmt_value, head_name, primary_relation

__all__ = ["ASSETS", "page_html"]

#: the package data files the page inlines (``headwise/inspect/assets/``).
ASSETS: tuple[str, ...] = ("report.css", "report.js")


@functools.cache
def _asset(name: str) -> str:
    """The text of ``assets/NAME`` inside the installed package."""
    return resources.files(__package__).joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _grid_html(d: dict[str, Any]) -> str:
    n_layers, n_heads = int(d["model"]["n_layers"]), int(d["model"]["n_heads"])
    by = {(r["layer"], r["head"]): r for r in d["roles"]}
    rows = ["<table class='grid' id='grid'><tr><th></th>" + "".join(f"<th>H{h}</th>" for h in range(n_heads)) + "</tr>"]
    for layer in range(n_layers):
        cells = [f"<th>L{layer}</th>"]
        for head in range(n_heads):
            r = by.get((layer, head), {"primary": "other", "roles": []})
            role = base_role(r["primary"])
            label = primary_relation(r["primary"])[:6] or ROLE_ABBREV.get(role, "")
            tip = f"L{layer} H{head}: " + (", ".join(r["roles"]) or "other")
            cells.append(
                f"<td class='cell' id='cell-{head_name(layer, head)}' data-layer='{layer}' data-head='{head}' "
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
        hid = head_name(r["layer"], r["head"])
        out.append(
            f"<tr><td>{html.escape(r['relation'])}</td><td class='num'>{r['count']}</td>"
            f"<td><a href='#select={hid}' data-head='{hid}' class='head-link'>"
            f"L{r['layer']} H{r['head']}</a></td><td>{r['direction']}</td>"
            f"<td class='num {'good' if better else 'bad'}'>{fmt_value(r['accuracy'])}</td><td>offset {off}</td>"
            f"<td class='num'>{fmt_value(r['baseline_accuracy'])}</td></tr>"
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
            role = base_role(primary)
            tip = [f"L{h['layer']} H{h['head']}, step {step}: {primary}"
                   + (f" ({', '.join(h['roles'][i])})" if len(h["roles"][i]) > 1 else "")]
            tip += [f"{m} {fmt_value(h['measures'][m][i])}" for m in tl["measures"]]
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


def page_html(d: dict[str, Any], view: dict[str, Any], figures: list[str]) -> str:
    """The whole page of result dict ``d``, embedding ``view`` (:func:`report_data`) and
    linking the ``figures`` (file names)."""
    blob = json.dumps(view, separators=(",", ":"), allow_nan=False)
    # "</script" inside a <script> would end it and "<!--" start a comment; every "<" is
    # written as the JSON escape \u003c (one "<\\!--" was no JSON: JSON.parse refused the page)
    blob = blob.replace("<", "\\u003c")
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
<style>
{_asset('report.css')}</style></head>
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
<script>
{_asset('report.js')}</script>
</body></html>
"""
