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

# Each module's ``__all__`` is the one list of its public names; the package re-exports them all.
from . import capture as _capture
from . import conllu, corpus, importance, measures, roles, syntax, tokens, words
from .capture import *  # noqa: F403
from .conllu import *  # noqa: F403
from .corpus import *  # noqa: F403
from .importance import *  # noqa: F403
from .measures import *  # noqa: F403
from .roles import *  # noqa: F403
from .syntax import *  # noqa: F403
from .tokens import *  # noqa: F403
from .words import *  # noqa: F403

__all__ = [
    *_capture.__all__,
    *tokens.__all__,
    *words.__all__,
    *corpus.__all__,
    *measures.__all__,
    *conllu.__all__,
    *syntax.__all__,
    *roles.__all__,
    *importance.__all__,
]
