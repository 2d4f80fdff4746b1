"""The sentences an inspection runs over: read them (a CoNLL-U file, raw text or word
lists), turn each into pieces that remember their words, sort them into length-bucketed
batches, and pad a batch into tensors with its masks.

:func:`headwise.app.inspection.inspect_model` strings these together; each is usable
alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .conllu import Sentence, read_conllu
from .tokens import as_tokenizer
from .words import align_text, align_words, is_punctuation

__all__ = ["AlignedSentence", "PaddedBatch", "read_sentences", "align_sentences", "length_batches", "pad_batch"]


@dataclass
class AlignedSentence:
    """One sentence as the model sees it and as the measures need it.

    ``index`` is its place in the input; ``input_ids``/``word_ids`` its pieces and the
    word of each (``None``: a special token); ``punct_words`` which words are
    punctuation; ``heads``/``relations`` the gold tree of CoNLL-U input (else None).
    """

    index: int
    words: list[str]
    input_ids: list[int]
    word_ids: list[int | None]
    punct_words: list[bool]
    heads: list[int] | None = None
    relations: list[str] | None = None


@dataclass
class PaddedBatch:
    """A right-padded batch: ``ids (B, T)``, ``valid (B, T)`` (True on real pieces), and
    the ``special``/``punct`` piece masks ``(B, T)`` the measures take."""

    sentences: list[AlignedSentence]
    ids: Tensor
    valid: Tensor
    special: Tensor
    punct: Tensor

    def key_padding_mask(self) -> Tensor | None:
        """``(B, T)`` True on padding, or None when no sentence is padded."""
        return None if bool(self.valid.all()) else ~self.valid


def read_sentences(data: Any) -> tuple[list[Any], str]:
    """``(items, source)``: the sentences of a ``.conllu`` path (as :class:`Sentence`)
    or the items of a non-empty list, and a few words naming where they came from."""
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


def _align_one(i: int, x: Any, tokenizer: Any) -> AlignedSentence:
    if isinstance(x, Sentence):
        ids, wids = align_words(x.words, tokenizer)
        return AlignedSentence(i, x.words, ids, wids, [t.upos == "PUNCT" for t in x.tokens], x.heads,
                               x.relations(True))
    if isinstance(x, str):
        a = align_text(x, tokenizer)
        return AlignedSentence(i, a.words, a.input_ids, a.word_ids, [is_punctuation(w) for w in a.words])
    if isinstance(x, Sequence) and all(isinstance(w, str) for w in x):
        ids, wids = align_words(list(x), tokenizer)
        return AlignedSentence(i, list(x), ids, wids, [is_punctuation(w) for w in x])
    raise TypeError(f"data[{i}] must be a Sentence, a str or a list of str, got {type(x).__name__}")


def align_sentences(items: Sequence[Any], tokenizer: Any, bos_id: int | None = None) -> list[AlignedSentence]:
    """Each item (a :class:`Sentence`, a raw ``str`` or a word list) as pieces with the
    tokenizer's special tokens; ``bos_id`` is prepended to every sentence when given."""
    tokenizer = as_tokenizer(tokenizer)  # wrapped once, not once per sentence
    out = []
    for i, x in enumerate(items):
        s = _align_one(i, x, tokenizer)
        if bos_id is not None:
            s.input_ids = [bos_id, *s.input_ids]
            s.word_ids = [None, *s.word_ids]
        out.append(s)
    return out


def length_batches(sentences: Sequence[AlignedSentence], batch_size: int, budget: int) -> list[list[AlignedSentence]]:
    """Length-sorted batches (little padding) capped at ``batch_size`` sentences and
    ``budget`` = B * T^2 attention cells per head, so long sentences come fewer at a time."""
    order = sorted(sentences, key=lambda s: len(s.input_ids))
    batches: list[list[AlignedSentence]] = []
    cur: list[AlignedSentence] = []
    for s in order:
        t = len(s.input_ids)
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * t * t > budget):
            batches.append(cur)
            cur = []
        cur.append(s)
    if cur:
        batches.append(cur)
    return batches


def pad_batch(sentences: Sequence[AlignedSentence], pad_id: int) -> PaddedBatch:
    """The sentences right-padded with ``pad_id`` into one :class:`PaddedBatch` (on the CPU)."""
    b, t = len(sentences), max(len(s.input_ids) for s in sentences)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    lengths = torch.tensor([len(s.input_ids) for s in sentences])
    special = torch.zeros(b, t, dtype=torch.bool)
    punct = torch.zeros(b, t, dtype=torch.bool)
    for i, s in enumerate(sentences):
        ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        for p, wid in enumerate(s.word_ids):
            if wid is None:
                special[i, p] = True
            elif s.punct_words[wid]:
                punct[i, p] = True
    valid = torch.arange(t)[None, :] < lengths[:, None]
    return PaddedBatch(list(sentences), ids, valid, special, punct)
