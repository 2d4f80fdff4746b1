"""What the report shows, as data: the role colours, the page's embedded JSON
(:func:`report_data`, :func:`timeline_data`), and the small helpers the text summary,
the figures and the HTML page share (:mod:`headwise.inspect.report`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["ROLE_COLORS", "ROLE_ABBREV", "Result", "report_data", "timeline_data"]


class _HasToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


#: what the report takes: an :class:`headwise.app.InspectResult` or its ``to_dict()``.
Result = _HasToDict | dict[str, Any]

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
# how many relations a head's panel lists
_TOP_RELATIONS = 8


def as_dict(result: Result) -> dict[str, Any]:
    """The result as its ``to_dict()``, checked to have the keys the report reads."""
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


def base_role(primary: str) -> str:
    """The role a primary role names without its relation (``syntactic:nsubj``: ``syntactic``)."""
    return primary.split(":", 1)[0]


def primary_relation(primary: str) -> str:
    """The relation a ``syntactic:REL`` primary role names, else ``""``."""
    return primary.split(":", 1)[1] if ":" in primary else ""


def relation_min_count(d: dict[str, Any]) -> int:
    """Instances a relation needs to be judged (the roles' ``min_relation_count``)."""
    return int(d["thresholds"].get("min_relation_count", 1))


def judged_best(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe's best-head rows of the relations with enough instances."""
    probe = d.get("probe")
    return [r for r in probe["best"] if r["count"] >= relation_min_count(d)] if probe else []


def fmt_value(x: Any, digits: int = 3) -> str:
    """A value as the report prints it: a dash for a missing one, floats to ``digits``."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def head_name(layer: int, head: int) -> str:
    """A head's id on the page: ``L2H3``."""
    return f"L{layer}H{head}"


def report_data(result: Result, *, title: str = "", command: str | None = None,
                pruning_metric: str | None = None,
                timeline: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The compact JSON the page embeds: per-head measures, roles with evidence and top
    relations, the probe's best-head table, the example sentences' attention maps
    as integers in thousandths (``weights[l][h][q][k]``), and with ``timeline`` (a
    run's head record) :func:`timeline_data`."""
    d = as_dict(result)
    n_layers = int(d["model"]["n_layers"])
    meas = d["measures"]
    measure_names = [k for k, v in meas.items() if isinstance(v, list) and len(v) == n_layers
                     and all(isinstance(row, list) for row in v)]
    heads: list[dict[str, Any]] = []
    probe = d.get("probe")
    min_count = relation_min_count(d)
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
            "layer": layer, "head": head, "id": head_name(layer, head), "primary": r["primary"],
            "role": base_role(r["primary"]), "roles": r["roles"], "evidence": r["evidence"],
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
        "probe_best": judged_best(d),
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
                heads[key] = {"id": head_name(*key), "layer": key[0], "head": key[1], "primary": [None] * n,
                              "roles": [[] for _ in range(n)], "measures": {m: [None] * n for m in names}}
            t = heads[key]
            t["primary"][i] = h["role"]
            t["roles"][i] = list(h.get("roles", []))
            for m in names:
                v = h["measures"].get(m)
                t["measures"][m][i] = round(v, digits) if isinstance(v, float) and math.isfinite(v) else v
    return {"steps": [int(r["step"]) for r in rows], "measures": names,
            "heads": [heads[k] for k in sorted(heads)]}
