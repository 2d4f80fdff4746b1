"""The metrics log (one JSON object per line) and the loss-curve figure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..checks import is_int, is_real, naming_errors

__all__ = ["MetricsLog", "plot_loss_curve", "jsonl_lines"]


def jsonl_lines(text: str) -> list[tuple[int, str, Any]]:
    """``(line number, line, value)`` for each non-blank line of JSON-lines ``text``:
    ``value`` is the parsed JSON, or the :class:`json.JSONDecodeError` of a line that
    is not JSON. A torn last line (a writer killed, or a disk full, mid-record: no
    newline after it) that is not JSON is left out; every writer ends a record with one."""
    pieces = text.split("\n")  # after a final newline the last piece is ""
    out = []
    for number, line in enumerate(pieces, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(pieces):
                continue
            value = e
        out.append((number, line, value))
    return out


class MetricsLog:
    """Appends records to ``metrics.jsonl``. On resume, records after the resumed
    step are dropped first, so the log never holds two histories."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            kept = [r for r in self.read() if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            with naming_errors(self.path):
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        with naming_errors(self.path), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """The records. A torn last line (a run killed, or a disk that filled up, while
        it was being written: no newline after it) is not one and is skipped; any other
        line that is not a JSON object is refused, naming the file and the line."""
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8", errors="replace")
        records = []
        for n, _, record in jsonl_lines(text):
            if not isinstance(record, dict):
                raise ValueError(f"{self.path} is damaged: line {n} is not a JSON record; "
                                 "fix or delete that line")
            problem = _record_problem(record)
            if problem is not None:
                raise ValueError(f"{self.path} is damaged: line {n} is not a metrics record ({problem}); "
                                 "fix or delete that line")
            records.append(record)
        return records


def _record_problem(record: dict[str, Any]) -> str | None:
    """What keeps ``record`` from being one the trainer writes (its step an integer; a train
    or validation record's loss and other values numbers), or None."""
    if not is_int(record.get("step")) or record["step"] < 0:
        return f"its step is {record.get('step')!r}, not a step number"
    if "split" in record and not isinstance(record["split"], str):
        return f"its split is {record['split']!r}, not a name"
    if record.get("split") not in ("train", "val"):
        return None
    if "loss" not in record:
        return f"a {record['split']} record without a loss"
    for key, value in record.items():
        if key != "split" and not is_real(value):
            return f"its {key} is {value!r}, not a number"
    return None


def plot_loss_curve(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Train and validation loss against step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for split, style in (("train", "-"), ("val", "o-")):
        pts = [(r["step"], r["loss"]) for r in records if r.get("split") == split and math.isfinite(r["loss"])]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=split, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with naming_errors(out):
            fig.savefig(out)
    finally:
        plt.close(fig)
    return Path(out)
