"""From sub-word pieces to words: tokenise words with any tokenizer while remembering
which piece belongs to which word, and turn piece-level attention into word-level
attention as Clark et al. (2019, "What does BERT look at?") do:

* attention **to** a word is the **sum** over its pieces (the columns), so the mass
  a query spends on the word is kept whole;
* attention **from** a word is the **mean** over its pieces (the rows), so every
  word row is again a distribution.

Special tokens (``[CLS]``, ``[SEP]``, a BOS; their ``word_ids`` entry is ``None``) are
not merged into any word: with ``specials="keep"`` each becomes a unit of its own, so
rows still sum to 1; with ``specials="drop"`` their rows and columns are removed (the
mass sent to them is lost, rows then sum to ``1 - attention to specials``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .tokens import as_tokenizer

__all__ = [
    "AlignedText",
    "align_words",
    "align_text",
    "word_units",
    "pooling_matrices",
    "batch_pooling",
    "word_level",
    "is_punctuation",
]


@dataclass(frozen=True)
class AlignedText:
    """One sentence as pieces: ``input_ids`` (T,), ``word_ids`` (T,) giving each
    piece's word index (``None`` for a special token), and ``words`` (W,)."""

    words: list[str]
    input_ids: list[int]
    word_ids: list[int | None]


def is_punctuation(word: str) -> bool:
    """True when every character of ``word`` is Unicode punctuation (category P*) or
    a symbol (S*), e.g. ``","``, ``"..."``, ``"$"``; empty strings are not."""
    return bool(word) and all(unicodedata.category(c)[0] in "PS" for c in word)


def _check_words(words: Sequence[str]) -> list[str]:
    if isinstance(words, str) or not isinstance(words, Sequence):
        raise TypeError(f"words must be a sequence of str, got {type(words).__name__}")
    words = list(words)
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w:
            raise ValueError(f"words[{i}] must be a non-empty str, got {w!r}")
    return words


def align_words(
    words: Sequence[str], tokenizer: Any, *, add_special_tokens: bool = True
) -> tuple[list[int], list[int | None]]:
    """Tokenise pre-split ``words`` into pieces: ``(input_ids (T,), word_ids (T,))``.

    ``word_ids[t]`` is the index in ``words`` of the word piece ``t`` belongs to, or
    ``None`` for a special token the tokenizer added (``add_special_tokens``: BERT's
    ``[CLS] ... [SEP]``; none for GPT-2-style tokenizers).

    Accepted tokenizers: anything :func:`~headwise.inspect.tokens.as_tokenizer` puts
    behind the Tokenizer protocol (its ``encode_words``): a :class:`headwise.data.Tokenizer`,
    a :class:`headwise.models.hf.HFTokenizer` or a transformers tokenizer
    (``is_split_into_words``; word by word where that is refused), a raw
    ``tokenizers.Tokenizer`` (``is_pretokenized``).
    A word that yields no piece (rare: characters the vocabulary drops) simply has
    none; every piece still maps to exactly one word.
    """
    words = _check_words(words)
    pieces = as_tokenizer(tokenizer).encode_words(words, add_special_tokens=add_special_tokens)
    return list(pieces.ids), list(pieces.word_ids)


def align_text(text: str, tokenizer: Any, *, add_special_tokens: bool = True) -> AlignedText:
    """Tokenise raw ``text`` and recover its words from the tokenizer's own
    pre-tokenisation (BERT splits off punctuation, byte-level BPE splits at spaces):
    ``words[w]`` is the text span covered by the pieces with ``word_ids == w``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    pieces = as_tokenizer(tokenizer).encode_text(text, add_special_tokens=add_special_tokens)
    ids, offsets, wids = list(pieces.ids), list(pieces.offsets), list(pieces.word_ids)
    spans: dict[int, list[int]] = {}
    for w, (a, b) in zip(wids, offsets, strict=True):
        if w is not None:
            s = spans.setdefault(w, [a, b])
            s[0], s[1] = min(s[0], a), max(s[1], b)
    # renumber words 0..W-1 in order (tokenizers number pre-tokens, some may be empty)
    order = {w: k for k, w in enumerate(sorted(spans))}
    words = [text[spans[w][0] : spans[w][1]].strip() or text[spans[w][0] : spans[w][1]] for w in sorted(spans)]
    return AlignedText(words, ids, [None if w is None else order[w] for w in wids])


def word_units(word_ids: Sequence[int | None], specials: str = "keep") -> list[int | None]:
    """The units word-level maps are indexed by, in order of their first piece: a word
    index for each word, ``None`` for each kept special token. E.g. BERT's
    ``[None, 0, 0, 1, None]`` gives ``[None, 0, 1, None]`` (``specials="keep"``) or
    ``[0, 1]`` (``"drop"``)."""
    if specials not in ("keep", "drop"):
        raise ValueError(f"specials must be 'keep' or 'drop', got {specials!r}")
    units: list[int | None] = []
    seen: set[int] = set()
    for w in word_ids:
        if w is None:
            if specials == "keep":
                units.append(None)
        elif w not in seen:
            seen.add(w)
            units.append(w)
    return units


def pooling_matrices(
    word_ids: Sequence[int | None], specials: str = "keep", *, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, list[int | None]]:
    """``(from_words (U, T), to_words (T, U), units)`` such that
    ``from_words @ attn @ to_words`` is the word-level map of a ``(T, T)`` map:
    ``to_words[t, u] = 1`` when piece ``t`` belongs to unit ``u`` (sum over pieces),
    ``from_words[u, t] = 1 / n_u`` (mean over the unit's ``n_u`` pieces). ``units``
    is :func:`word_units`."""
    units = word_units(word_ids, specials)
    t = len(word_ids)
    to_words = torch.zeros(t, len(units), dtype=dtype)
    unit_of_word = {w: u for u, w in enumerate(units) if w is not None}
    special_units = iter(u for u, w in enumerate(units) if w is None)
    for pos, w in enumerate(word_ids):
        if w is None:
            if specials == "keep":
                to_words[pos, next(special_units)] = 1.0
        else:
            to_words[pos, unit_of_word[w]] = 1.0
    counts = to_words.sum(0)
    from_words = (to_words / counts.clamp(min=1)).T.contiguous()
    return from_words, to_words, units


def word_level(attn: Tensor, word_ids: Sequence[int | None], specials: str = "keep") -> Tensor:
    """Word-level attention ``(..., U, U)`` from piece-level ``attn (..., T, T)``,
    where ``T == len(word_ids)`` and the ``U`` units are :func:`word_units` (each
    word, plus each special token with ``specials="keep"``). Rows are means over a
    word's pieces, columns sums, so rows of a row-stochastic map still sum to 1 when
    specials are kept."""
    if not isinstance(attn, Tensor) or attn.dim() < 2 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"attn must be a tensor (..., T, T), got {type(attn).__name__} of shape "
            f"{tuple(getattr(attn, 'shape', ()))}"
        )
    if attn.shape[-1] != len(word_ids):
        raise ValueError(
            f"word_ids has {len(word_ids)} entries but attn covers T={attn.shape[-1]} tokens; "
            "slice attn to the sentence's tokens (drop padding) first"
        )
    f, t, _ = pooling_matrices(word_ids, specials, dtype=attn.dtype)
    f, t = f.to(attn.device), t.to(attn.device)
    return f @ attn @ t


def batch_pooling(
    word_ids: Sequence[Sequence[int | None]], n_tokens: int, *, dtype: torch.dtype = torch.float32,
    n_words: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pooling for a right-padded batch, keeping **words only** (specials dropped), for
    the syntax probe: ``(from_words (B, W, T), to_words (B, T, W), word_valid (B, W))``
    with ``W`` the most words in any sentence and ``T = n_tokens``; unit ``w`` is word
    ``w`` (so gold head indices apply directly). Padding pieces and missing words get
    zero rows/columns. ``n_words``: each sentence's word count, which the pieces alone
    understate when its last words got no piece (default: the last word with a piece)."""
    counted = [1 + max((w for w in wids if w is not None), default=-1) for wids in word_ids]
    if n_words is not None:
        if len(n_words) != len(word_ids) or any(n < c for n, c in zip(n_words, counted, strict=True)):
            raise ValueError(f"n_words {list(n_words)} must give each of the {len(word_ids)} sentences at least "
                             f"the words its pieces name ({counted})")
        counted = list(n_words)
    b, w_max = len(word_ids), max(counted, default=0)
    to_words = torch.zeros(b, n_tokens, w_max, dtype=dtype)
    for i, wids in enumerate(word_ids):
        if len(wids) > n_tokens:
            raise ValueError(f"word_ids[{i}] has {len(wids)} entries, more than n_tokens={n_tokens}")
        pos = [p for p, w in enumerate(wids) if w is not None]
        if pos:
            to_words[i, pos, [wids[p] for p in pos]] = 1.0
    counts = to_words.sum(1)  # (B, W)
    from_words = (to_words / counts.clamp(min=1)[:, None, :]).transpose(1, 2).contiguous()
    return from_words, to_words, counts > 0
