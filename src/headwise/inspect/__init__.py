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
* :func:`read_sentences`, :func:`align_sentences`, :func:`length_batches`,
  :func:`pad_batch` — a corpus as aligned, length-sorted, padded batches.

:func:`headwise.app.inspect_model` runs all of it over a corpus (orchestration lives in
:mod:`headwise.app`, above this package).
"""

from __future__ import annotations

from .capture import (
    CAPTURABLE,
    Capture,
    attention_layers,
    capture,
    context_length,
    is_causal,
    n_layers_heads,
    weights_capable,
)
from .conllu import Sentence, Token, base_relation, parse_conllu, read_conllu
from .corpus import AlignedSentence, PaddedBatch, align_sentences, length_batches, pad_batch, read_sentences
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
from .tokens import RawTokenizerPieces, as_tokenizer, induction_bos_id, pad_id, token_strings
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
    "is_causal",
    "context_length",
    "weights_capable",
    # tokenizers
    "as_tokenizer",
    "RawTokenizerPieces",
    "pad_id",
    "induction_bos_id",
    "token_strings",
    # words
    "AlignedText",
    "align_words",
    "align_text",
    "word_units",
    "pooling_matrices",
    "batch_pooling",
    "word_level",
    "is_punctuation",
    # corpus
    "AlignedSentence",
    "PaddedBatch",
    "read_sentences",
    "align_sentences",
    "length_batches",
    "pad_batch",
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
    "scored_relations",
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
]
