"""Look inside every head of a model over a corpus: :func:`inspect_model` strings the
inspect package's pieces together and returns an :class:`InspectResult`.

The stages, each timed in :attr:`InspectResult.timings`:

1. ``tokenize``: read the sentences and align them to pieces
   (:mod:`headwise.inspect.corpus`), leaving out those longer than the model's context;
2. ``attention``: one forward per length-sorted, right-padded batch under
   :func:`~headwise.inspect.capture`; every batch's maps feed the token-level
   :class:`~headwise.inspect.MeasureAccumulator` and, for CoNLL-U input, the word-level
   :class:`~headwise.inspect.SyntaxAccumulator` (pieces pooled to words, specials
   dropped), so memory stays one batch deep;
3. ``summaries``: the measures and the syntax probe;
4. ``induction``: scores on repeated random tokens (:func:`~headwise.inspect.induction_scores`);
5. ``importance`` and ``pruning``: Michel et al.'s head importance and a pruning curve,
   when a loss (and a metric) are given.

Then the roles (:func:`~headwise.inspect.assign_roles`). The options are an
:class:`InspectOptions`; ``inspect_model`` also takes them as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_choice, check_int
from ..inspect import (
    ABLATION_MODES,
    DEFAULT_THRESHOLDS,
    HeadMeasures,
    HeadRoles,
    MeasureAccumulator,
    RoleThresholds,
    Sentence,
    SyntaxAccumulator,
    SyntaxProbe,
    assign_roles,
    attention_layers,
    batch_pooling,
    capture,
    context_length,
    eval_mode,
    head_importance,
    induction_scores,
    is_causal,
    n_layers_heads,
    pruning_curve,
    role_counts,
    scored_relations,
)
from ..inspect.corpus import AlignedSentence, PaddedBatch, align_sentences, length_batches, pad_batch, read_sentences
from ..inspect.tokens import as_tokenizer, induction_bos_id, pad_id, token_strings

__all__ = ["InspectOptions", "InspectResult", "inspect_model"]

#: ``forward(model, input_ids (B, T), key_padding_mask (B, T) or None)``
Forward = Callable[[nn.Module, Tensor, "Tensor | None"], Any]

# a batch holds at most batch_size sentences of 64 pieces' worth of attention cells
_CELLS_PER_SENTENCE = 64 * 64


@dataclass(frozen=True)
class InspectOptions:
    """How :func:`inspect_model` runs. Every field has a default.

    Attributes:
        max_sentences: use the first ``max_sentences`` sentences (None: all).
        batch_size: sentences per forward (fewer for long ones).
        max_len: skip sentences with more pieces (default ``model.cfg.max_len``).
        causal: whether the model attends causally (default: it contains a Decoder).
        bos_id: prepend this token (a special) to every sentence, e.g. a decoder's BOS.
        forward: ``forward(model, input_ids (B, T), key_padding_mask (B, T) or None)``;
            default ``model(input_ids, key_padding_mask=...)``.
        exclude_self: the probe never predicts the word itself.
        induction, induction_len, induction_batch, vocab_range: the induction test
            (:func:`~headwise.inspect.induction_scores`; ``[CLS]``/BOS of the tokenizer is
            prepended).
        loss_fn, loss_batches: with both, :func:`~headwise.inspect.head_importance` over
            these batches.
        metric_fn: with importance, also a :func:`~headwise.inspect.pruning_curve`
            (``ablation_mode``).
        thresholds: role thresholds.
        keep_examples: keep the token-level maps of this many sentences (for display).
    """

    max_sentences: int | None = None
    batch_size: int = 32
    max_len: int | None = None
    causal: bool | None = None
    bos_id: int | None = None
    forward: Forward | None = None
    exclude_self: bool = False
    induction: bool = True
    induction_len: int = 32
    induction_batch: int = 8
    vocab_range: tuple[int, int] | None = None
    loss_fn: Callable[[nn.Module, Any], Tensor] | None = None
    loss_batches: Sequence[Any] | None = None
    metric_fn: Callable[[nn.Module, Any], float] | None = None
    ablation_mode: str = "zero"
    thresholds: RoleThresholds = DEFAULT_THRESHOLDS
    keep_examples: int = 0

    def __post_init__(self) -> None:
        check_int("max_sentences", self.max_sentences, none_ok=True)
        check_int("batch_size", self.batch_size)
        check_choice("ablation_mode", self.ablation_mode, ABLATION_MODES)
        check_int("keep_examples", self.keep_examples, minimum=0)
        check_int("induction_len", self.induction_len)
        check_int("induction_batch", self.induction_batch)
        if (self.loss_fn is None) != (self.loss_batches is None):
            raise ValueError("loss_fn and loss_batches go together: pass both to compute importance, or neither")
        if self.metric_fn is not None and self.loss_fn is None:
            raise ValueError("metric_fn (pruning curve) needs loss_fn and loss_batches (importance orders the heads)")
        # a setting that would do nothing is refused (one left at its default cannot be told from none)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        unused = [(name, why) for name, why, ignored in (
            ("ablation_mode", "without metric_fn (it ablates heads for the pruning curve)", self.metric_fn is None),
            ("induction_len", "with induction=False", not self.induction),
            ("induction_batch", "with induction=False", not self.induction),
            ("vocab_range", "with induction=False", not self.induction),
        ) if ignored and getattr(self, name) != defaults[name]]
        if unused:
            name, why = unused[0]
            raise ValueError(f"{name}={getattr(self, name)!r} has no effect {why}; drop it")

    @classmethod
    def merged(cls, options: InspectOptions | None, overrides: dict[str, Any]) -> InspectOptions:
        """``options`` (default: all defaults) with the fields in ``overrides`` replaced;
        TypeError names a keyword that is no option."""
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise TypeError(f"options must be an InspectOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **overrides) if overrides else options


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
        measures: token-level :class:`~headwise.inspect.HeadMeasures` (entropy, specials,
            punctuation, offsets, received attention / sinks).
        induction: ``(L, H)`` induction scores, or None.
        probe: :class:`~headwise.inspect.SyntaxProbe` (word level), or None without
            CoNLL-U input.
        roles: one :class:`~headwise.inspect.HeadRoles` per head, layer-major.
        importance: ``(L, H)`` Michel et al. importance, or None.
        pruning: ``[(fraction removed, metric)]``, or None.
        thresholds: the :class:`~headwise.inspect.RoleThresholds` used.
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


# ---------------------------------------------------------------- the stages
@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[stage] = time.perf_counter() - t0


def _default_forward(model: nn.Module, input_ids: Tensor, key_padding_mask: Tensor | None) -> Any:
    return model(input_ids, key_padding_mask=key_padding_mask)


@dataclass
class _Corpus:
    """The sentences kept for inspection, and what the result says about the data."""

    sentences: list[AlignedSentence]
    n_aligned: int
    source: str
    conllu: bool
    max_len: int | None


def _read_corpus(model: nn.Module, data: Any, tokenizer: Any, opts: InspectOptions) -> _Corpus:
    items, source = read_sentences(data)
    if opts.max_sentences is not None:
        items = items[: opts.max_sentences]
    conllu = all(isinstance(x, Sentence) for x in items)
    aligned = align_sentences(items, tokenizer, opts.bos_id)
    max_len = context_length(model) if opts.max_len is None else opts.max_len
    kept = [s for s in aligned if max_len is None or len(s.input_ids) <= max_len]
    kept = [s for s in kept if any(w is not None for w in s.word_ids)]
    if not kept:
        raise ValueError(f"no sentence to inspect: all {len(aligned)} are empty or longer than max_len={max_len}")
    return _Corpus(kept, len(aligned), source, conllu, max_len)


class _AttentionSummary:
    """What the attention stage gathers, one batch of captured maps at a time: the
    token-level measures, the word-level probe (CoNLL-U input), kept examples, counts."""

    def __init__(self, corpus: _Corpus, n_layers: int, n_heads: int, causal: bool, tokenizer: Any,
                 opts: InspectOptions) -> None:
        self.measures = MeasureAccumulator(causal=causal)
        self.syntax = None
        if corpus.conllu:
            rels = scored_relations((s.relations for s in corpus.sentences), (s.heads for s in corpus.sentences))
            self.syntax = SyntaxAccumulator(rels, n_layers, n_heads, exclude_self=opts.exclude_self)
        first = sorted(corpus.sentences, key=lambda s: s.index)[: opts.keep_examples]
        self.wanted = {s.index for s in first}
        self.examples: dict[int, dict[str, Any]] = {}
        self.tokenizer = tokenizer
        self.n_tokens = self.n_words = 0

    def add(self, batch: PaddedBatch, w: Tensor) -> None:
        """Take one batch's maps ``w (B, L, H, T, T)``."""
        self.measures.update(w, *(m.to(w.device) for m in (batch.valid, batch.special, batch.punct)))
        self.n_tokens += int(batch.valid.sum())
        self.n_words += sum(len(s.words) for s in batch.sentences)
        if self.syntax is not None:
            self._add_syntax(batch, w)
        for i, s in enumerate(batch.sentences):
            if s.index in self.wanted:
                n = len(s.input_ids)
                self.examples[s.index] = {
                    "tokens": token_strings(self.tokenizer, s.input_ids),
                    "words": s.words,
                    "word_ids": s.word_ids,
                    "weights": w[i, :, :, :n, :n].cpu(),
                }

    def _add_syntax(self, batch: PaddedBatch, w: Tensor) -> None:
        """Pool the pieces' maps to words and score them against the gold trees."""
        b, t = batch.ids.shape
        frm, to, word_valid = batch_pooling([s.word_ids for s in batch.sentences], t, dtype=w.dtype,
                                            n_words=[len(s.words) for s in batch.sentences])
        frm, to = frm.to(w.device), to.to(w.device)
        word_maps = frm[:, None, None] @ w @ to[:, None, None]  # (B, L, H, W, W)
        n_w = word_maps.shape[-1]
        heads = torch.full((b, n_w), -1, dtype=torch.long)
        rel_ids = torch.full((b, n_w), -1, dtype=torch.long)
        for i, s in enumerate(batch.sentences):
            k = len(s.words)
            heads[i, :k] = torch.tensor(s.heads)
            rel_ids[i, :k] = self.syntax.relation_ids(s.relations)
        self.syntax.update(word_maps, word_valid, heads, rel_ids)

    def kept_examples(self) -> list[dict[str, Any]]:
        return [self.examples[i] for i in sorted(self.examples)]


def _attention_stage(model: nn.Module, corpus: _Corpus, summary: _AttentionSummary, pad: int,
                     batch_size: int, fwd: Forward) -> None:
    """One forward per batch with every head's weights captured, fed to ``summary``."""
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad(), capture(model, "weights") as cap:
        for sentences in length_batches(corpus.sentences, batch_size, budget=batch_size * _CELLS_PER_SENTENCE):
            batch = pad_batch(sentences, pad)
            kpm = batch.key_padding_mask()
            fwd(model, batch.ids.to(device), None if kpm is None else kpm.to(device))
            w = cap.stack("weights").transpose(0, 1).float()  # (B, L, H, T, T)
            cap.clear()
            summary.add(batch, w)


def _induction_stage(model: nn.Module, tokenizer: Any, opts: InspectOptions, max_len: int | None,
                     fwd: Forward) -> Tensor:
    bos = opts.bos_id if opts.bos_id is not None else induction_bos_id(tokenizer)
    n = opts.induction_len
    if max_len is not None:  # [bos] r r must fit the model's positions (a context of 64: r of 31)
        n = min(n, (max_len - (bos is not None)) // 2)
    return induction_scores(model, n=n, batch=opts.induction_batch, vocab_range=opts.vocab_range, bos_id=bos,
                            forward=lambda m, x: fwd(m, x, None))


def inspect_model(
    model: nn.Module,
    data: str | os.PathLike | Sequence[Sentence] | Sequence[str] | Sequence[Sequence[str]],
    tokenizer: Any,
    options: InspectOptions | None = None,
    **overrides: Any,
) -> InspectResult:
    """Run the whole inspection of ``model`` over ``data`` and summarise it (the stages
    are in this module's docstring).

    Args:
        model: a headwise model (Encoder, EncoderForMLM, Decoder, imported checkpoints).
        data: a ``.conllu`` path or list of :class:`~headwise.inspect.Sentence` (enables
            the syntax probe), raw sentences (``str``) or pre-split word lists. Sentences
            are tokenised with :func:`~headwise.inspect.align_words` (raw strings with
            :func:`~headwise.inspect.align_text`).
        tokenizer: anything :func:`~headwise.inspect.as_tokenizer` puts behind the
            Tokenizer protocol (a ``headwise.data.Tokenizer``, an ``HFTokenizer`` or a
            transformers tokenizer, a raw ``tokenizers.Tokenizer``); its special tokens
            (``[CLS]``/``[SEP]``) are added.
        options: an :class:`InspectOptions` (default: every default).
        **overrides: fields of :class:`InspectOptions` as keywords
            (``inspect_model(m, data, tok, batch_size=8, induction=False)``); they
            replace those of ``options``.
    """
    opts = InspectOptions.merged(options, overrides)
    tokenizer = as_tokenizer(tokenizer)
    timings: dict[str, float] = {}
    with _timed(timings, "tokenize"):
        n_layers, n_heads = n_layers_heads(model)
        names = [n for n, _ in attention_layers(model)]
        corpus = _read_corpus(model, data, tokenizer, opts)
        causal = is_causal(model) if opts.causal is None else opts.causal

    fwd = opts.forward or _default_forward
    summary = _AttentionSummary(corpus, n_layers, n_heads, causal, tokenizer, opts)
    with _timed(timings, "attention"):
        _attention_stage(model, corpus, summary, pad_id(tokenizer), opts.batch_size, fwd)
    with _timed(timings, "summaries"):
        measures = summary.measures.result()
        probe = summary.syntax.result() if summary.syntax is not None else None

    ind = None
    if opts.induction:
        with _timed(timings, "induction"):
            ind = _induction_stage(model, tokenizer, opts, corpus.max_len, fwd)
    importance = curve = None
    if opts.loss_fn is not None:
        with _timed(timings, "importance"):
            importance = head_importance(model, opts.loss_batches, opts.loss_fn)
        if opts.metric_fn is not None:
            with _timed(timings, "pruning"):
                curve = pruning_curve(model, importance, opts.loss_batches, opts.metric_fn, mode=opts.ablation_mode)

    return InspectResult(
        model={"class": type(model).__name__, "layer_names": names, "n_layers": n_layers, "n_heads": n_heads,
               "causal": causal},
        data={"source": corpus.source, "n_sentences": len(corpus.sentences),
              "n_skipped": corpus.n_aligned - len(corpus.sentences), "n_tokens": summary.n_tokens,
              "n_words": summary.n_words},
        measures=measures,
        roles=assign_roles(measures, probe, ind, opts.thresholds),
        thresholds=opts.thresholds,
        induction=ind,
        probe=probe,
        importance=importance,
        pruning=curve,
        examples=summary.kept_examples(),
        timings=timings,
    )
