"""The report's PNG figures (matplotlib, Agg backend): ``roles.png`` (the layers x
heads grid coloured by primary role), ``entropy.png`` (normalised entropy per head),
``probe.png`` (the syntax probe's best head per relation against the offset baseline)
and, with a pruning curve, ``pruning.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .report_view import (
    ROLE_ABBREV,
    ROLE_COLORS,
    base_role,
    fmt_value,
    judged_best,
    primary_relation,
    relation_min_count,
)

__all__ = ["write_figures"]


def write_figures(d: dict[str, Any], out: Path, pruning_metric: str | None) -> list[Path]:
    """Draw the figures of result dict ``d`` into the folder ``out``; returns their paths."""
    # matplotlib is imported only when figures are drawn: importing it costs every
    # `headwise` command about a second, and pyplot needs its backend chosen first
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
        role = base_role(r["primary"])
        idx[r["layer"]][r["head"]] = names.index(role) if role in names else names.index("other")
        labels[r["layer"]][r["head"]] = primary_relation(r["primary"]) or ROLE_ABBREV.get(role, "")
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
    min_count = relation_min_count(d)
    rows = judged_best(d)[:20]
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
                  fmt_value(r["accuracy"]), "—" if r["baseline_offset"] is None else f"{r['baseline_offset']:+d}",
                  fmt_value(r["baseline_accuracy"])] for r in rows]
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
