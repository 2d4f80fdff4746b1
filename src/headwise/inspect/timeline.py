"""Watch heads form: every head's measures and role at every evaluation of a run.

A :class:`HeadRecorder` hooks into :attr:`headwise.train.Trainer.eval_hooks`. Right
after each evaluation it runs the model on a fixed **probe batch**, measures every
head with :class:`~headwise.inspect.measures.MeasureAccumulator` (entropy,
normalised entropy, attention to special tokens, attention to offsets -2..+2),
scores decoders with :func:`~headwise.inspect.measures.induction_scores`, names the
roles with :func:`~headwise.inspect.roles.assign_roles`, and appends one line to
``heads.jsonl`` in the run directory::

    {"step": 400, "heads": [{"layer": 0, "head": 0, "role": "previous-token",
                             "roles": ["previous-token"],
                             "measures": {"entropy": ..., "normalized_entropy": ...,
                                          "to_special": ..., "offset_-2": ..., ...,
                                          "offset_+2": ..., "induction": ...}}, ...]}

``heads`` is layer-major (``heads[l * H + h]``); NaN is written as null.

The probe batch is a function of the run's data only: the first ``n_blocks``
validation blocks (as the model sees them: a CLM block without its last token), and
for decoders the repeated-random-token batch :func:`induction_scores` draws from its
own generator seeded with ``induction_seed``. Measuring draws from no global random
stream and puts the model back in the mode it found it, so training continues
exactly as without the recorder. On ``--resume`` the rows after the resumed step
are dropped first (as :class:`headwise.train.metrics.MetricsLog` does), so a run
killed and resumed writes the same file, byte for byte, as one that was not.

:func:`attach_head_recorder` builds one for a Trainer and appends it to the
trainer's hooks; :func:`read_head_record` reads the file back, and
:func:`role_changes` / :func:`timeline_summary` say when each head took its role.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import is_int, naming_errors
from ..train.metrics import jsonl_lines
from ..train.rundir import register_run_entry
from .capture import capture, context_length, eval_mode, is_causal, n_layers_heads
from .measures import MeasureAccumulator, induction_scores
from .roles import DEFAULT_THRESHOLDS, OTHER, RoleThresholds, assign_roles
from .tokens import induction_bos_id

__all__ = [
    "HEADS_FILE",
    "RECORDED_MEASURES",
    "HeadRecorder",
    "attach_head_recorder",
    "inspected_model",
    "read_head_record",
    "role_changes",
    "timeline_summary",
]

#: the record's file name inside a run directory.
HEADS_FILE = "heads.jsonl"
# a run's own file: --overwrite may remove it (headwise.train.rundir's manifest)
register_run_entry(HEADS_FILE)
register_run_entry(HEADS_FILE + ".tmp")  # left by a run killed while trimming the record on resume
#: the measures each row holds per head, in this order (``induction`` for decoders only).
RECORDED_MEASURES: tuple[str, ...] = (
    "entropy", "normalized_entropy", "to_special",
    "offset_-2", "offset_-1", "offset_0", "offset_+1", "offset_+2", "induction",
)


def inspected_model(objective: nn.Module, kind: str) -> nn.Module:
    """The module whose heads a run of objective ``kind`` (``mlm``, ``rtd``, ``clm``)
    is inspected on: the ``EncoderForMLM``, the RTD discriminator, or the ``Decoder``."""
    if kind == "rtd":
        return objective.discriminator
    if kind in ("mlm", "clm"):
        return objective.model
    raise ValueError(f"objective kind must be mlm, rtd or clm, got {kind!r}")


def _eager_forward(model: nn.Module, ids: Tensor) -> object:
    """``model(ids)``, bypassing an in-place ``torch.compile`` (``Trainer(compile=True)``
    compiles the objective's models): capture's hooks need the eager modules."""
    if getattr(model, "_compiled_call_impl", None) is not None:
        return model.forward(ids)
    return model(ids)


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path``; a torn last line (no newline after it: a run killed while
    writing) is skipped. Any other line that is not a record of the head recorder is
    a ValueError naming the file and the line."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is damaged: not UTF-8 text ({e})") from None
    rows = []
    for number, line, row in jsonl_lines(text):
        if isinstance(row, json.JSONDecodeError):
            raise ValueError(f"{path}, line {number} is damaged (not JSON: {row}); move the file away to inspect "
                             "without the roles over training")
        if not _is_row(row):
            raise ValueError(f"{path}, line {number} is not a head record ({{'step': int, 'heads': [{{'layer', "
                             f"'head', 'role', ...}}]}}): {line[:80]!r}; move the file away to inspect without the "
                             "roles over training")
        rows.append(row)
    return rows


def _is_row(row: Any) -> bool:
    """``row`` has the shape :meth:`HeadRecorder.record` writes (what the readers use)."""
    if not isinstance(row, dict) or not is_int(row.get("step")) or not isinstance(row.get("heads"), list):
        return False
    return all(isinstance(h, dict) and is_int(h.get("layer")) and is_int(h.get("head"))
               and isinstance(h.get("role"), str) for h in row["heads"])


def read_head_record(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of ``run_dir/heads.jsonl`` in step order (``[]`` when the run has no
    record). Each row: ``{"step", "heads": [{"layer", "head", "role", "roles",
    "measures"}]}``."""
    return sorted(_read_rows(Path(run_dir) / HEADS_FILE), key=lambda r: r["step"])


class HeadRecorder:
    """Records every head's measures and role on a fixed probe batch.

    Args:
        path: the ``heads.jsonl`` to append to.
        model: the module whose heads are measured (see :func:`inspected_model`).
        probe: ``(B, T)`` token ids, the fixed batch (no padding).
        special_ids: ids counted as special tokens (``[CLS]``, ``[SEP]``, BOS/EOS).
        causal: whether the model attends causally (default: it contains a Decoder).
        induction: also score induction (default: for causal models).
        induction_len, induction_batch, induction_seed, bos_id: the repeated random
            tokens of :func:`induction_scores` (``induction_len`` is capped so that
            ``[bos] r r`` fits the model's ``max_len``).
        thresholds: role thresholds.
        resume_step: drop the rows after this step now (a resumed run); None keeps all.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: nn.Module,
        probe: Tensor,
        *,
        special_ids: Sequence[int] = (),
        causal: bool | None = None,
        induction: bool | None = None,
        induction_len: int = 32,
        induction_batch: int = 8,
        induction_seed: int = 0,
        bos_id: int | None = None,
        thresholds: RoleThresholds = DEFAULT_THRESHOLDS,
        resume_step: int | None = None,
    ) -> None:
        if not isinstance(probe, Tensor) or probe.dim() != 2 or probe.shape[0] < 1 or probe.shape[1] < 2:
            raise ValueError(f"probe must be (B, T) token ids with B >= 1, T >= 2, got "
                             f"{tuple(getattr(probe, 'shape', ()))}")
        self.path = Path(path)
        self.model = model
        self.n_layers, self.n_heads = n_layers_heads(model)
        self.probe = probe.detach().long().cpu()
        ids = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
        self.special = torch.isin(self.probe, ids)
        self.causal = is_causal(model) if causal is None else causal
        self.induction = self.causal if induction is None else induction
        max_len = context_length(model)
        if max_len is not None:
            induction_len = min(induction_len, (max_len - (bos_id is not None)) // 2)
        if self.induction and induction_len < 2:
            raise ValueError(f"the model's max_len {max_len} leaves no room for the induction test")
        self.induction_len = induction_len
        self.induction_batch = induction_batch
        self.induction_seed = induction_seed
        self.bos_id = bos_id
        self.thresholds = thresholds
        if resume_step is not None:
            self.truncate(resume_step)

    # ------------------------------------------------------------------ file
    def truncate(self, step: int) -> None:
        """Keep only the rows up to ``step`` (and no torn line), rewritten atomically."""
        if not self.path.exists():
            return
        kept = [r for r in _read_rows(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        tmp.replace(self.path)

    def read(self) -> list[dict[str, Any]]:
        return _read_rows(self.path)

    # ------------------------------------------------------------------ measuring
    @torch.no_grad()
    def measure(self) -> dict[str, Any]:
        """``{"heads": [...]}``: the measures and roles of the model as it is now."""
        model = self.model
        device = next(model.parameters()).device
        with eval_mode(model), capture(model, "weights") as cap:
            _eager_forward(model, self.probe.to(device))
        w = cap.stack("weights").transpose(0, 1).float()  # (B, L, H, T, T)
        acc = MeasureAccumulator(causal=self.causal)
        acc.update(w, None, self.special.to(w.device), None)
        measures = acc.result()
        ind = None
        if self.induction:
            ind = induction_scores(model, n=self.induction_len, batch=self.induction_batch,
                                   bos_id=self.bos_id, seed=self.induction_seed, forward=_eager_forward)
        roles = assign_roles(measures, None, ind, self.thresholds)
        table = measures.table()
        if ind is not None:
            table["induction"] = ind
        names = [m for m in RECORDED_MEASURES if m in table]
        heads = []
        for r in roles:
            heads.append({
                "layer": r.layer, "head": r.head, "role": r.primary, "roles": r.roles,
                "measures": {m: _num(float(table[m][r.layer, r.head])) for m in names},
            })
        return {"heads": heads}

    def record(self, step: int) -> dict[str, Any]:
        """Measure now and append the row for ``step``; returns it."""
        row = {"step": int(step), **self.measure()}
        with naming_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def __call__(self, trainer: Any, step: int) -> None:
        """The :attr:`Trainer.eval_hooks` entry point."""
        self.record(step)


def attach_head_recorder(trainer: Any, *, n_blocks: int = 8, **kw: Any) -> HeadRecorder | None:
    """Build a :class:`HeadRecorder` for ``trainer`` (a :class:`headwise.train.Trainer`)
    writing ``heads.jsonl`` in its run directory, append it to ``trainer.eval_hooks``
    and return it. The probe batch is the first ``n_blocks`` validation blocks; rows
    after the trainer's current step are dropped (a resumed run). Other keyword
    arguments go to :class:`HeadRecorder`.

    Returns None, attaching nothing, on the processes that do not write the run
    directory (``trainer.is_main`` False) and for head-parallel runs (``tp > 1``: the
    heads are split over processes, and measuring them on one would need all).
    """
    if not getattr(trainer, "is_main", True):
        return None
    env = getattr(trainer, "env", None)
    if env is not None and getattr(env, "tp", 1) > 1:
        return None
    cfg, parts = trainer.cfg, trainer.parts
    model = inspected_model(trainer.objective, cfg.objective)
    n = min(n_blocks, len(parts.val))
    if n < 1:
        raise ValueError("the run has no validation block to probe the heads with")
    probe = parts.val.batch(list(range(n)))
    if cfg.objective == "clm":
        probe = probe[:, :-1]  # what the decoder sees of a block (the last token is only a target)
    tok = parts.tokenizer
    # the specials a block holds: its frame ([CLS] ... [SEP]) and document separators
    kw.setdefault("special_ids", [i for i in (tok.cls_id, tok.sep_id, tok.eos_id) if i is not None])
    kw.setdefault("bos_id", induction_bos_id(tok))
    kw.setdefault("induction_seed", cfg.seed)
    recorder = HeadRecorder(trainer.run_dir / HEADS_FILE, model, probe, resume_step=trainer.step, **kw)
    trainer.eval_hooks.append(recorder)
    return recorder


# ---------------------------------------------------------------------- reading
def role_changes(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per head (layer-major): ``{"layer", "head", "role", "since", "before", "first",
    "changes"}``: its last primary role, the step from which it has held it
    without a break, the role it held just before that (None when it never had
    another), the first recorded step, and how many times its role changed."""
    by: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for row in sorted(records, key=lambda r: r["step"]):
        for h in row["heads"]:
            by.setdefault((h["layer"], h["head"]), []).append((row["step"], h["role"]))
    out = []
    for (layer, head), seq in sorted(by.items()):
        role = seq[-1][1]
        since, before = seq[-1][0], None
        for step, r in reversed(seq):
            if r != role:
                before = r
                break
            since = step
        changes = sum(1 for a, b in zip(seq, seq[1:], strict=False) if a[1] != b[1])
        out.append({"layer": layer, "head": head, "role": role, "since": since, "before": before,
                    "first": seq[0][0], "changes": changes})
    return out


def timeline_summary(records: Sequence[dict[str, Any]]) -> str:
    """Plain text: when each head took the named role it ended with (``L1 H2 became
    previous-token at step 400 (was other)``), then the heads that lost one and ended as
    ``other`` (``stopped being broad at step 300: L0 H1, L2 H3``), and the heads whose
    role never changed in one line."""
    if not records:
        return "no head record (heads.jsonl) in this run"
    steps = sorted(r["step"] for r in records)
    lines = [f"heads over training: {len(steps)} evaluations, steps {steps[0]}..{steps[-1]}"]
    changes = role_changes(records)
    moved = sorted((c for c in changes if c["since"] > c["first"]), key=lambda c: (c["since"], c["layer"], c["head"]))
    for c in moved:  # the heads that ended with a named role first: what formed
        if c["role"] != OTHER:
            lines.append(f"  L{c['layer']} H{c['head']} became {c['role']} at step {c['since']} (was {c['before']})")
    lost: dict[tuple[int, str], list[str]] = {}  # (step, role left) -> heads, in step order
    for c in moved:
        if c["role"] == OTHER:
            lost.setdefault((c["since"], c["before"]), []).append(f"L{c['layer']} H{c['head']}")
    for (step, before), names in lost.items():
        lines.append(f"  stopped being {before} at step {step}: {', '.join(names)}")
    same: dict[str, list[str]] = {}
    for c in changes:
        if c["since"] == c["first"]:
            same.setdefault(c["role"], []).append(f"L{c['layer']} H{c['head']}")
    if same:
        lines.append("  unchanged from the first evaluation: " + "; ".join(
            f"{role} {', '.join(names)}" for role, names in sorted(same.items())))
    return "\n".join(lines)
