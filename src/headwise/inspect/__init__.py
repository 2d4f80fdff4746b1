"""Look inside the heads: capture per-head attention, measure it, name head roles, probe
for syntax, and score how much each head matters.

The pieces (each usable alone):

* :func:`capture` — record attention weights / per-head outputs of any headwise model.
* :func:`align_words`, :func:`word_level` — pieces <-> words (Clark et al. 2019).
* :class:`MeasureAccumulator` / :func:`head_measures` — entropy, attention to specials,
  punctuation and relative offsets, attention sinks; :func:`induction_scores`.
* :func:`read_conllu`, :func:`probe_syntax` — the dependency probe with offset baselines.
* :func:`assign_roles` — previous/next/self, special (no-op), broad, syntactic, induction.
* :func:`head_importance`, :func:`ablate_heads`, :func:`pruning_curve` — Michel et al. 2019.

:func:`inspect_model` runs all of it over a corpus and returns an
:class:`InspectResult` whose :meth:`~InspectResult.to_dict` is plain JSON.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .capture import CAPTURABLE, Capture, attention_layers, capture, n_layers_heads, weights_capable
from .conllu import Sentence, Token, base_relation, parse_conllu, read_conllu
from .importance import (
    ABLATION_MODES,
    ablate_heads,
    head_importance,
    head_mask,
    head_means,
    heads_to_mask,
    pruning_curve,
)
from .measures import (
    OFFSETS,
    SINK_THRESHOLD,
    HeadMeasures,
    MeasureAccumulator,
    head_measures,
    induction_score_from_weights,
    induction_scores,
    repeated_random_tokens,
)
from .roles import DEFAULT_THRESHOLDS, PRIORITY, ROLES, HeadRoles, RoleThresholds, assign_roles, role_counts
from .syntax import DIRECTIONS, SyntaxAccumulator, SyntaxProbe, probe_syntax, scored_relations
from .words import (
    AlignedText,
    align_text,
    align_words,
    batch_pooling,
    is_punctuation,
    pooling_matrices,
    word_level,
    word_units,
)

__all__ = [
    # capture
    "CAPTURABLE",
    "Capture",
    "capture",
    "attention_layers",
    "n_layers_heads",
    "weights_capable",
    # words
    "AlignedText",
    "align_words",
    "align_text",
    "word_units",
    "pooling_matrices",
    "batch_pooling",
    "word_level",
    "is_punctuation",
    # measures
    "OFFSETS",
    "SINK_THRESHOLD",
    "HeadMeasures",
    "MeasureAccumulator",
    "head_measures",
    "repeated_random_tokens",
    "induction_score_from_weights",
    "induction_scores",
    # syntax
    "Token",
    "Sentence",
    "parse_conllu",
    "read_conllu",
    "base_relation",
    "DIRECTIONS",
    "SyntaxProbe",
    "SyntaxAccumulator",
    "probe_syntax",
    # roles
    "RoleThresholds",
    "DEFAULT_THRESHOLDS",
    "ROLES",
    "PRIORITY",
    "HeadRoles",
    "assign_roles",
    "role_counts",
    # importance
    "ABLATION_MODES",
    "head_mask",
    "head_importance",
    "head_means",
    "heads_to_mask",
    "ablate_heads",
    "pruning_curve",
    # all together
    "InspectResult",
    "inspect_model",
]


def _clean(x: Any) -> Any:
    """JSON-safe copy: tensors to lists, NaN/inf to None, tuples to lists."""
    if isinstance(x, Tensor):
        x = x.tolist()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


@dataclass
class InspectResult:
    """Everything :func:`inspect_model` found. ``(L, H)`` tables are float64 tensors,
    indexed ``[layer, head]``; :meth:`to_dict` gives the same as plain JSON.

    Attributes:
        model: ``{"class", "layer_names", "n_layers", "n_heads", "causal"}``.
        data: ``{"source", "n_sentences", "n_skipped", "n_tokens", "n_words"}``
            (``n_skipped``: sentences longer than ``max_len`` pieces, left out).
        measures: token-level :class:`HeadMeasures` (entropy, specials, punctuation,
            offsets, received attention / sinks).
        induction: ``(L, H)`` induction scores, or None.
        probe: :class:`SyntaxProbe` (word level), or None without CoNLL-U input.
        roles: one :class:`HeadRoles` per head, layer-major.
        importance: ``(L, H)`` Michel et al. importance, or None.
        pruning: ``[(fraction removed, metric)]``, or None.
        thresholds: the :class:`RoleThresholds` used.
        examples: the first ``keep_examples`` sentences: ``{"tokens", "words",
            "word_ids", "weights": (L, H, T, T) nested lists}``.
        timings: seconds spent per stage.
    """

    model: dict[str, Any]
    data: dict[str, Any]
    measures: HeadMeasures
    roles: list[HeadRoles]
    thresholds: RoleThresholds
    induction: Tensor | None = None
    probe: SyntaxProbe | None = None
    importance: Tensor | None = None
    pruning: list[tuple[float, float]] | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``json.dumps`` works; NaN becomes null). Schema::

            {"model": {...}, "data": {...},
             "measures": {"n_rows", "causal", "entropy", "normalized_entropy", "to_special",
                          "to_punct", "max_received", "offset_-2" ... "offset_+2": [[L x H]],
                          "sinks": [{"layer", "head", "position", "mean_attention"}]},
             "induction": [[L x H]] | null,
             "probe": {"directions", "relations", "counts", "baseline_offset",
                       "baseline_accuracy", "best": [{"relation", "count", "layer", "head",
                       "direction", "accuracy", "baseline_offset", "baseline_accuracy"}],
                       "accuracy": {direction: {relation: [[L x H]]}}} | null,
             "roles": [{"layer", "head", "roles", "primary", "evidence"}],
             "role_counts": {primary role: n heads},
             "importance": [[L x H]] | null, "pruning": [[fraction, metric]] | null,
             "thresholds": {...}, "examples": [...], "timings": {...}}
        """
        return _clean(
            {
                "model": self.model,
                "data": self.data,
                "measures": self.measures.to_dict(),
                "induction": self.induction,
                "probe": None if self.probe is None else self.probe.to_dict(),
                "roles": [r.to_dict() for r in self.roles],
                "role_counts": role_counts(self.roles),
                "importance": self.importance,
                "pruning": self.pruning,
                "thresholds": self.thresholds.to_dict(),
                "examples": self.examples,
                "timings": self.timings,
            }
        )


# ---------------------------------------------------------------- inspect_model
@dataclass
class _Item:
    index: int
    words: list[str]
    input_ids: list[int]
    word_ids: list[int | None]
    punct_words: list[bool]
    heads: list[int] | None = None
    relations: list[str] | None = None


def _load_data(data: Any) -> tuple[list[Any], str]:
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise ValueError(
                f"data given as a str must be the path of a .conllu file; {path!r} is not a file "
                "(pass raw sentences as a list of str)"
            )
        return read_conllu(path), path
    if not isinstance(data, Sequence) or len(data) == 0:
        raise ValueError(
            "data must be a CoNLL-U path, or a non-empty list of Sentence, of str (raw text) or of "
            f"word lists; got {type(data).__name__}"
        )
    return list(data), f"{len(data)} {type(data[0]).__name__} items"


def _prepare(items: list[Any], tokenizer: Any, bos_id: int | None) -> list[_Item]:
    out = []
    for i, x in enumerate(items):
        if isinstance(x, Sentence):
            ids, wids = align_words(x.words, tokenizer)
            it = _Item(i, x.words, ids, wids, [t.upos == "PUNCT" for t in x.tokens], x.heads, x.relations(True))
        elif isinstance(x, str):
            a = align_text(x, tokenizer)
            it = _Item(i, a.words, a.input_ids, a.word_ids, [is_punctuation(w) for w in a.words])
        elif isinstance(x, Sequence) and all(isinstance(w, str) for w in x):
            ids, wids = align_words(list(x), tokenizer)
            it = _Item(i, list(x), ids, wids, [is_punctuation(w) for w in x])
        else:
            raise TypeError(
                f"data[{i}] must be a Sentence, a str or a list of str, got {type(x).__name__}"
            )
        if bos_id is not None:
            it.input_ids = [bos_id, *it.input_ids]
            it.word_ids = [None, *it.word_ids]
        out.append(it)
    return out


def _batches(items: list[_Item], batch_size: int, budget: int) -> list[list[_Item]]:
    """Length-sorted batches (little padding) capped at ``batch_size`` sentences and
    ``budget`` = B * T^2 attention cells per head, so long sentences come fewer at a time."""
    order = sorted(items, key=lambda it: len(it.input_ids))
    batches: list[list[_Item]] = []
    cur: list[_Item] = []
    for it in order:
        t = len(it.input_ids)
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * t * t > budget):
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    return batches


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def _bos_for_induction(tokenizer: Any) -> int | None:
    for name in ("cls_id", "cls_token_id", "bos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return None


def _token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return list(tokenizer.convert_ids_to_tokens(ids))
    return [tokenizer.id_to_token(i) or f"<{i}>" for i in ids]


def _default_forward(model: nn.Module, input_ids: Tensor, key_padding_mask: Tensor | None) -> Any:
    return model(input_ids, key_padding_mask=key_padding_mask)


def _is_causal(model: nn.Module) -> bool:
    from ..models import Decoder

    return any(isinstance(m, Decoder) for m in model.modules())


def inspect_model(
    model: nn.Module,
    data: str | os.PathLike | Sequence[Sentence] | Sequence[str] | Sequence[Sequence[str]],
    tokenizer: Any,
    *,
    max_sentences: int | None = None,
    batch_size: int = 32,
    max_len: int | None = None,
    causal: bool | None = None,
    bos_id: int | None = None,
    forward: Callable[[nn.Module, Tensor, Tensor | None], Any] | None = None,
    exclude_self: bool = False,
    induction: bool = True,
    induction_len: int = 32,
    induction_batch: int = 8,
    vocab_range: tuple[int, int] | None = None,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
    loss_batches: Sequence[Any] | None = None,
    metric_fn: Callable[[nn.Module, Any], float] | None = None,
    ablation_mode: str = "zero",
    thresholds: RoleThresholds = DEFAULT_THRESHOLDS,
    keep_examples: int = 0,
) -> InspectResult:
    """Run the whole inspection of ``model`` over ``data`` and summarise it.

    Sentences are tokenised with ``tokenizer`` (:func:`align_words`; raw strings with
    :func:`align_text`), length-sorted into right-padded batches with a
    ``key_padding_mask``, run once with :func:`capture`; every batch's maps feed the
    token-level :class:`MeasureAccumulator` and, for CoNLL-U input, the word-level
    :class:`SyntaxAccumulator` (pieces pooled to words, specials dropped), so memory
    stays one batch deep. Then induction scores (random repeated tokens), roles, and
    optionally importance and a pruning curve.

    Args:
        model: a headwise model (Encoder, EncoderForMLM, Decoder, imported checkpoints).
        data: a ``.conllu`` path or list of :class:`Sentence` (enables the syntax
            probe), raw sentences (``str``) or pre-split word lists.
        tokenizer: a ``headwise.data.Tokenizer``, ``tokenizers.Tokenizer`` or Hugging
            Face fast tokenizer; its special tokens (``[CLS]``/``[SEP]``) are added.
        max_sentences: use the first ``max_sentences`` sentences.
        batch_size: sentences per forward (fewer for long ones).
        max_len: skip sentences with more pieces (default ``model.cfg.max_len``).
        causal: whether the model attends causally (default: it contains a Decoder).
        bos_id: prepend this token (a special) to every sentence, e.g. a decoder's BOS.
        forward: ``forward(model, input_ids (B, T), key_padding_mask (B, T) or None)``;
            default ``model(input_ids, key_padding_mask=...)``.
        exclude_self: the probe never predicts the word itself.
        induction, induction_len, induction_batch, vocab_range: the induction test
            (:func:`induction_scores`; ``[CLS]``/BOS of the tokenizer is prepended).
        loss_fn, loss_batches: with both, :func:`head_importance` over these batches.
        metric_fn: with importance, also a :func:`pruning_curve` (``ablation_mode``).
        thresholds: role thresholds.
        keep_examples: keep the token-level maps of this many sentences (for display).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n_layers, n_heads = n_layers_heads(model)
    names = [n for n, _ in attention_layers(model)]
    items, source = _load_data(data)
    if max_sentences is not None:
        if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
            raise ValueError(f"max_sentences must be a positive int or None, got {max_sentences!r}")
        items = items[:max_sentences]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if ablation_mode not in ABLATION_MODES:
        raise ValueError(f"ablation_mode must be one of {ABLATION_MODES}, got {ablation_mode!r}")
    if (loss_fn is None) != (loss_batches is None):
        raise ValueError("loss_fn and loss_batches go together: pass both to compute importance, or neither")
    if metric_fn is not None and loss_fn is None:
        raise ValueError("metric_fn (pruning curve) needs loss_fn and loss_batches (importance orders the heads)")
    conllu = all(isinstance(x, Sentence) for x in items)
    prepared = _prepare(items, tokenizer, bos_id)
    if max_len is None:
        cfg = getattr(model, "cfg", None)
        max_len = getattr(cfg, "max_len", None) if cfg is not None else None
    kept = [it for it in prepared if max_len is None or len(it.input_ids) <= max_len]
    kept = [it for it in kept if any(w is not None for w in it.word_ids)]
    if not kept:
        raise ValueError(f"no sentence to inspect: all {len(prepared)} are empty or longer than max_len={max_len}")
    causal = _is_causal(model) if causal is None else causal
    timings["tokenize"] = time.perf_counter() - t0

    device = next(model.parameters()).device
    fwd = forward or _default_forward
    pad = _pad_id(tokenizer)
    measures_acc = MeasureAccumulator(causal=causal)
    syn_acc = None
    if conllu:
        rels = scored_relations((it.relations for it in kept), (it.heads for it in kept))
        syn_acc = SyntaxAccumulator(rels, n_layers, n_heads, exclude_self=exclude_self)
    examples_wanted = {it.index for it in sorted(kept, key=lambda it: it.index)[: max(keep_examples, 0)]}
    examples: dict[int, dict[str, Any]] = {}
    n_tokens = n_words = 0

    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture(model, "weights") as cap:
            for batch in _batches(kept, batch_size, budget=batch_size * 64 * 64):
                b, t = len(batch), max(len(it.input_ids) for it in batch)
                ids = torch.full((b, t), pad, dtype=torch.long)
                lengths = torch.tensor([len(it.input_ids) for it in batch])
                for i, it in enumerate(batch):
                    ids[i, : len(it.input_ids)] = torch.tensor(it.input_ids)
                valid = torch.arange(t)[None, :] < lengths[:, None]
                kpm = None if bool(valid.all()) else (~valid).to(device)
                fwd(model, ids.to(device), kpm)
                w = cap.stack("weights").transpose(0, 1).float()  # (B, L, H, T, T)
                cap.clear()

                special = torch.zeros(b, t, dtype=torch.bool)
                punct = torch.zeros(b, t, dtype=torch.bool)
                for i, it in enumerate(batch):
                    for p, wid in enumerate(it.word_ids):
                        if wid is None:
                            special[i, p] = True
                        elif it.punct_words[wid]:
                            punct[i, p] = True
                dev_masks = [m.to(w.device) for m in (valid, special, punct)]
                measures_acc.update(w, *dev_masks)
                n_tokens += int(valid.sum())
                n_words += sum(len(it.words) for it in batch)

                if syn_acc is not None:
                    frm, to, word_valid = batch_pooling([it.word_ids for it in batch], t, dtype=w.dtype)
                    frm, to = frm.to(w.device), to.to(w.device)
                    word_maps = frm[:, None, None] @ w @ to[:, None, None]  # (B, L, H, W, W)
                    n_w = word_maps.shape[-1]
                    heads = torch.full((b, n_w), -1, dtype=torch.long)
                    rel_ids = torch.full((b, n_w), -1, dtype=torch.long)
                    for i, it in enumerate(batch):
                        k = len(it.words)
                        heads[i, :k] = torch.tensor(it.heads)
                        rel_ids[i, :k] = syn_acc.relation_ids(it.relations)
                    syn_acc.update(word_maps, word_valid, heads, rel_ids)

                for i, it in enumerate(batch):
                    if it.index in examples_wanted:
                        n = len(it.input_ids)
                        examples[it.index] = {
                            "tokens": _token_strings(tokenizer, it.input_ids),
                            "words": it.words,
                            "word_ids": it.word_ids,
                            "weights": w[i, :, :, :n, :n].cpu(),
                        }
    finally:
        model.train(was_training)
    timings["attention"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    measures = measures_acc.result()
    probe = syn_acc.result() if syn_acc is not None else None
    timings["summaries"] = time.perf_counter() - t0

    ind = None
    if induction:
        t0 = time.perf_counter()
        ind_bos = bos_id if bos_id is not None else _bos_for_induction(tokenizer)
        if max_len is not None:  # [bos] r r must fit the model's positions (a context of 64: r of 31)
            induction_len = min(induction_len, (max_len - (ind_bos is not None)) // 2)
        ind = induction_scores(
            model,
            n=induction_len,
            batch=induction_batch,
            vocab_range=vocab_range,
            bos_id=ind_bos,
            forward=lambda m, x: fwd(m, x, None),
        )
        timings["induction"] = time.perf_counter() - t0

    importance = curve = None
    if loss_fn is not None:
        t0 = time.perf_counter()
        importance = head_importance(model, loss_batches, loss_fn)
        timings["importance"] = time.perf_counter() - t0
        if metric_fn is not None:
            t0 = time.perf_counter()
            curve = pruning_curve(model, importance, loss_batches, metric_fn, mode=ablation_mode)
            timings["pruning"] = time.perf_counter() - t0

    roles = assign_roles(measures, probe, ind, thresholds)
    return InspectResult(
        model={
            "class": type(model).__name__,
            "layer_names": names,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "causal": causal,
        },
        data={
            "source": source,
            "n_sentences": len(kept),
            "n_skipped": len(prepared) - len(kept),
            "n_tokens": n_tokens,
            "n_words": n_words,
        },
        measures=measures,
        roles=roles,
        thresholds=thresholds,
        induction=ind,
        probe=probe,
        importance=importance,
        pruning=curve,
        examples=[examples[i] for i in sorted(examples)],
        timings=timings,
    )
