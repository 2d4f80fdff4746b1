"""Per-head measures of where attention goes, averaged over many sentences.

Every measure is a mean over **query rows** (one row = one non-padding query token of
one sentence), computed from attention maps ``(B, L, H, T, T)`` together with boolean
masks ``(B, T)`` saying which positions are real tokens, special tokens and
punctuation. Padding never counts: padded queries are skipped and padded keys are not
"attendable". With ``causal=True`` a query ``i`` can attend to keys ``<= i`` only.

* ``entropy``: mean over rows of ``-sum_k p log p`` (nats).
* ``normalized_entropy``: each row's entropy divided by ``log(number of attendable
  keys)``, so 1 = uniform over everything it could see; rows that can see a single
  key (the first token of a causal model) are skipped (their entropy is always 0).
* ``to_special`` / ``to_punct``: mean attention mass on special tokens
  (``[CLS]``, ``[SEP]``, BOS) / on punctuation tokens.
* ``offsets[o]`` for ``o`` in :data:`OFFSETS`: mean attention from query ``i`` to key
  ``i + o`` over the rows where that key exists (0 = itself, -1 = previous token).
* ``received[p]``: mean attention key position ``p`` receives from the queries that
  can attend to it; a position whose mean exceeds the sink threshold (0.3) is an
  attention sink (:meth:`HeadMeasures.sinks`).

:func:`induction_scores` measures copying on repeated random tokens
(Olsson et al. 2022, "In-context learning and induction heads").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_int, is_int
from .capture import capture, eval_mode

__all__ = [
    "OFFSETS",
    "SINK_THRESHOLD",
    "HeadMeasures",
    "MeasureAccumulator",
    "head_measures",
    "repeated_random_tokens",
    "induction_score_from_weights",
    "induction_scores",
]

#: relative offsets measured: attention from query ``i`` to key ``i + o``.
OFFSETS: tuple[int, ...] = (-2, -1, 0, 1, 2)
#: a key position is an attention sink of a head when its mean received attention
#: exceeds this (fraction of a query's attention).
SINK_THRESHOLD = 0.3


@dataclass
class HeadMeasures:
    """Per-head averages, each ``(L, H)`` float64 unless noted.

    Attributes:
        entropy, normalized_entropy, to_special, to_punct: see the module docstring.
        offsets: ``{o: (L, H)}`` for every ``o`` in :data:`OFFSETS`.
        received: ``(L, H, P)`` mean attention received by key position ``p`` (NaN
            where no query could attend to ``p``).
        received_count: ``(P,)`` how many query rows could attend to each position.
        n_rows: number of query rows averaged.
        causal: whether the maps were causal.
    """

    entropy: Tensor
    normalized_entropy: Tensor
    to_special: Tensor
    to_punct: Tensor
    offsets: dict[int, Tensor]
    received: Tensor
    received_count: Tensor
    n_rows: int
    causal: bool

    def sinks(self, threshold: float = SINK_THRESHOLD, min_rows: int = 1) -> list[dict[str, Any]]:
        """Attention sinks: ``[{"layer", "head", "position", "mean_attention"}]`` for
        every head and key position whose mean received attention exceeds
        ``threshold``, over positions seen by at least ``min_rows`` query rows;
        sorted by layer, head, position."""
        ok = self.received_count >= min_rows
        rec = torch.where(ok[None, None, :], self.received, torch.zeros_like(self.received))
        hits = (rec > threshold).nonzero().tolist()
        return [
            {"layer": l_, "head": h, "position": p, "mean_attention": float(self.received[l_, h, p])}
            for l_, h, p in hits
        ]

    def max_received(self) -> Tensor:
        """``(L, H)``: the largest mean attention any key position receives."""
        return torch.nan_to_num(self.received, nan=0.0).amax(-1)

    def table(self) -> dict[str, Tensor]:
        """Every ``(L, H)`` measure by name (offsets as ``"offset_-1"`` ...)."""
        out = {
            "entropy": self.entropy,
            "normalized_entropy": self.normalized_entropy,
            "to_special": self.to_special,
            "to_punct": self.to_punct,
            "max_received": self.max_received(),
        }
        out.update({f"offset_{o:+d}" if o else "offset_0": t for o, t in self.offsets.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``(L, H)`` tables as nested lists, sinks, counts."""
        return {
            "n_rows": self.n_rows,
            "causal": self.causal,
            **{k: v.tolist() for k, v in self.table().items()},
            "sinks": self.sinks(),
        }


def _check_masks(weights: Tensor, **masks: Tensor | None) -> None:
    if not isinstance(weights, Tensor) or weights.dim() != 5 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(
            f"weights must be a tensor (B, L, H, T, T), got shape {tuple(getattr(weights, 'shape', ()))}"
        )
    b, t = weights.shape[0], weights.shape[-1]
    for name, m in masks.items():
        if m is None:
            continue
        if not isinstance(m, Tensor) or m.dtype != torch.bool or tuple(m.shape) != (b, t):
            raise ValueError(
                f"{name} must be a bool tensor of shape (B, T) = {(b, t)}, got "
                f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}"
            )


class MeasureAccumulator:
    """Accumulates :class:`HeadMeasures` over batches of maps, so a corpus never has
    to be held in memory. Call :meth:`update` per batch, then :meth:`result`."""

    def __init__(self, *, causal: bool = False) -> None:
        self.causal = causal
        self._sums: dict[str, Tensor] = {}
        self._n_rows = 0
        self._n_norm = 0
        self._offset_counts = {o: 0 for o in OFFSETS}
        self._received = torch.zeros(0)
        self._received_count = torch.zeros(0, dtype=torch.float64)

    def _add(self, name: str, value: Tensor) -> None:
        value = value.double().cpu()
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    @torch.no_grad()
    def update(
        self,
        weights: Tensor,
        valid: Tensor | None = None,
        special: Tensor | None = None,
        punct: Tensor | None = None,
    ) -> None:
        """Add a batch: ``weights (B, L, H, T, T)`` (rows = queries), ``valid (B, T)``
        True for real (non-padding) tokens (default all), ``special (B, T)`` True for
        special tokens, ``punct (B, T)`` True for punctuation (default none)."""
        _check_masks(weights, valid=valid, special=special, punct=punct)
        b, n_layers, n_heads, t, _ = weights.shape
        dev = weights.device
        w = weights.float()
        valid = torch.ones(b, t, dtype=torch.bool, device=dev) if valid is None else valid.to(dev)
        attendable = valid[:, :, None] & valid[:, None, :]  # (B, Tq, Tk)
        if self.causal:
            attendable = attendable & torch.ones(t, t, dtype=torch.bool, device=dev).tril()
        # a model gives padded (and, if causal, future) keys zero weight already; zeroing
        # them here keeps garbage out of hand-made maps too
        w = w * attendable[:, None, None].to(w.dtype)
        qv = valid.to(w.dtype)[:, None, None, :]  # (B, 1, 1, T) weights of query rows
        self._n_rows += int(valid.sum())

        ent = -torch.special.xlogy(w, w).sum(-1)  # (B, L, H, T)
        self._add("entropy", (ent * qv).sum((0, 3)))
        n_keys = attendable.sum(-1)  # (B, T)
        multi = (n_keys > 1) & valid
        log_n = torch.log(n_keys.clamp(min=2).to(w.dtype))[:, None, None, :]
        self._add("normalized_entropy", (ent / log_n * multi.to(w.dtype)[:, None, None, :]).sum((0, 3)))
        self._n_norm += int(multi.sum())

        for name, m in (("to_special", special), ("to_punct", punct)):
            if m is None:
                self._add(name, torch.zeros(n_layers, n_heads))
                continue
            mass = (w * m.to(dev, w.dtype)[:, None, None, None, :]).sum(-1)
            self._add(name, (mass * qv).sum((0, 3)))

        for o in OFFSETS:
            if abs(o) >= t:
                continue
            diag = torch.diagonal(w, offset=o, dim1=-2, dim2=-1)  # (B, L, H, T - |o|)
            # diagonal(offset=o) pairs query i with key i + o
            q_ok = valid[:, : t - o] if o >= 0 else valid[:, -o:]
            k_ok = valid[:, o:] if o >= 0 else valid[:, : t + o]
            pair = (q_ok & k_ok).to(w.dtype)[:, None, None, :]
            self._add(f"offset_{o}", (diag * pair).sum((0, 3)))
            self._offset_counts[o] += int((q_ok & k_ok).sum())

        # received attention per absolute key position, from the queries that can see it
        rec = (w * qv[..., None]).sum((0, 3))  # (L, H, Tk)
        cnt = attendable.sum((0, 1)).double().cpu()  # (Tk,)
        if self._received.shape[-1] < t:
            grow = t - self._received.shape[-1]
            self._received = torch.cat(
                [self._received.reshape(n_layers, n_heads, -1), torch.zeros(n_layers, n_heads, grow).double()], -1
            )
            self._received_count = torch.cat([self._received_count, torch.zeros(grow).double()])
        self._received[..., :t] += rec.double().cpu()
        self._received_count[:t] += cnt
        self._shape = (n_layers, n_heads)

    def result(self) -> HeadMeasures:
        """The averages so far (raises ValueError before any non-empty update)."""
        if self._n_rows == 0:
            raise ValueError("no query rows were accumulated: call update() with at least one real token")

        def mean(name: str, n: int) -> Tensor:
            return self._sums[name] / n if n else torch.full(self._shape, float("nan"), dtype=torch.float64)

        count = self._received_count
        received = self._received / torch.where(count > 0, count, torch.full_like(count, float("nan")))
        return HeadMeasures(
            entropy=mean("entropy", self._n_rows),
            normalized_entropy=mean("normalized_entropy", self._n_norm),
            to_special=mean("to_special", self._n_rows),
            to_punct=mean("to_punct", self._n_rows),
            # an offset no sentence was long enough for has count 0, hence NaN
            offsets={o: mean(f"offset_{o}", self._offset_counts[o]) for o in OFFSETS},
            received=received,
            received_count=count,
            n_rows=self._n_rows,
            causal=self.causal,
        )


def head_measures(
    weights: Tensor,
    valid: Tensor | None = None,
    special: Tensor | None = None,
    punct: Tensor | None = None,
    *,
    causal: bool = False,
) -> HeadMeasures:
    """:class:`HeadMeasures` of one batch of maps ``weights (B, L, H, T, T)`` (a single
    ``(L, H, T, T)`` map is taken as B = 1); masks ``(B, T)`` bool as in
    :meth:`MeasureAccumulator.update`."""
    if isinstance(weights, Tensor) and weights.dim() == 4:
        weights = weights[None]
        valid, special, punct = (None if m is None else m.reshape(1, -1) for m in (valid, special, punct))
    acc = MeasureAccumulator(causal=causal)
    acc.update(weights, valid, special, punct)
    return acc.result()


# ------------------------------------------------------------------ induction
def repeated_random_tokens(
    n: int,
    batch: int = 8,
    *,
    low: int = 0,
    high: int,
    bos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(batch, [1 +] 2n)`` long: per row ``[bos] r r`` where ``r`` is ``n`` distinct
    random ids from ``[low, high)`` (distinct, so "the token after the previous
    occurrence" is unambiguous; with fewer than ``n`` ids available they repeat)."""
    check_int("n", n)
    check_int("batch", batch)
    if not (is_int(high) and is_int(low)) or high <= low:
        raise ValueError(f"need ints low < high for the token range, got low={low!r}, high={high!r}")
    span = high - low
    if span >= n:
        keys = torch.rand(batch, span, generator=generator)
        r = keys.argsort(-1)[:, :n] + low
    else:
        r = torch.randint(low, high, (batch, n), generator=generator)
    seq = torch.cat([r, r], 1)
    if bos_id is not None:
        seq = torch.cat([torch.full((batch, 1), bos_id, dtype=seq.dtype), seq], 1)
    return seq


def induction_score_from_weights(weights: Tensor, n: int, *, bos: bool = False) -> Tensor:
    """Induction score of maps over ``[bos] r r`` sequences: ``weights (..., T, T)``
    with ``T = 2n (+1)``; returns ``(...)``, the mean over the second copy's queries
    ``i`` of the attention to key ``i - n + 1`` (the token right after the previous
    occurrence of token ``i``). Pass ``(B, L, H, T, T)`` and average over B, or
    ``(L, H, T, T)`` directly."""
    off = 1 if bos else 0
    if not isinstance(weights, Tensor) or weights.dim() < 2 or weights.shape[-1] != 2 * n + off:
        raise ValueError(
            f"weights must be (..., T, T) with T = 2*n{' + 1' if bos else ''} = {2 * n + off}, got "
            f"{tuple(getattr(weights, 'shape', ()))}"
        )
    q = torch.arange(off + n, off + 2 * n, device=weights.device)
    return weights[..., q, q - n + 1].mean(-1)


def _default_forward(model: nn.Module, input_ids: Tensor) -> Any:
    return model(input_ids)


@torch.no_grad()
def induction_scores(
    model: nn.Module,
    *,
    n: int = 32,
    batch: int = 8,
    vocab_range: tuple[int, int] | None = None,
    bos_id: int | None = None,
    seed: int = 0,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
) -> Tensor:
    """Run ``model`` on ``batch`` sequences ``[bos] r r`` of ``n`` random tokens and
    return the ``(L, H)`` induction scores (mean over the batch of
    :func:`induction_score_from_weights`).

    Args:
        vocab_range: ``(low, high)`` ids to draw from; default
            ``(1000, vocab_size)`` with ``vocab_size`` from ``model.cfg`` (skipping the
            low ids where tokenizers keep specials and BERT its ``[unused]`` pieces), or
            ``(vocab_size // 4, vocab_size)`` for vocabularies under 4000.
        bos_id: prepend this id (e.g. ``[CLS]`` or ``<|endoftext|>``).
        forward: ``forward(model, input_ids)``; default ``model(input_ids)``.
    """
    if vocab_range is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None:
            raise ValueError("vocab_range is needed: the model has no .cfg to read vocab_size from")
        v = cfg.vocab_size
        vocab_range = (1000 if v >= 4000 else v // 4, v)
    low, high = vocab_range
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    ids = repeated_random_tokens(n, batch, low=low, high=high, bos_id=bos_id, generator=g).to(device)
    fwd = forward or _default_forward
    with eval_mode(model), capture(model, "weights") as cap:
        fwd(model, ids)
    stacked = cap.stack("weights")  # (L, B, H, T, T)
    return induction_score_from_weights(stacked.float(), n, bos=bos_id is not None).mean(1).double().cpu()

