"""What a model that learned nothing from context would score on a run's validation
targets (:func:`baselines`): the uniform loss ``ln V``, the unigram loss (the training
split's token frequencies scored on the validation targets the objective scores) and
the accuracy of always guessing the most frequent token; for RTD also the binary
entropy of the replacement rate and always guessing "original". ``headwise train``'s
summary sets the run's losses beside them (:mod:`headwise.app.summary`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Baselines", "scored_targets", "unigram_baseline", "binary_entropy", "baselines"]

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
