"""Interfaces shared by several layers, written once so that no layer has to probe an
object's type with ``getattr`` chains. This module imports nothing from headwise: it
sits below every package (docs/architecture.md).

:class:`Tokenizer` is what ``data`` (token blocks), ``objectives`` (MLM's special
ids), ``models.hf`` (exporting a tokenizer beside the weights) and ``inspect`` (word
alignment, padding, token strings) need from a tokenizer. Two classes satisfy it:

* :class:`headwise.data.Tokenizer`, the tokenizers headwise trains;
* :class:`headwise.models.hf.HFTokenizer`, a Hugging Face ``transformers`` tokenizer
  loaded with a model folder (:func:`headwise.models.hf.load_tokenizer`).

It is ``runtime_checkable``: ``isinstance(tok, Tokenizer)`` says whether ``tok`` has
every member named here (not whether their signatures match).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["Tokenizer", "WordPieces"]


@dataclass(frozen=True)
class WordPieces:
    """Text or pre-split words as pieces, remembering which word each piece belongs to.

    ``ids`` (T,) are the token ids; ``word_ids`` (T,) the index of each piece's word
    (``None`` for a special token the tokenizer added, e.g. ``[CLS]``); ``offsets``
    (T,) each piece's ``(start, end)`` character span in the encoded text, or ``None``
    when pre-split words were encoded (:meth:`Tokenizer.encode_words`).
    """

    ids: list[int]
    word_ids: list[int | None]
    offsets: list[tuple[int, int]] | None = None


@runtime_checkable
class Tokenizer(Protocol):
    """Ids in, ids out, word boundaries, the special ids, and saving.

    A special id the tokenizer lacks is ``None``: ``cls_id`` is BERT's ``[CLS]``,
    ``bos_id`` a decoder's begin-of-sequence token, ``eos_id`` the token that closes a
    document, ``sep_id`` BERT's ``[SEP]``.
    """

    @property
    def vocab_size(self) -> int:
        """Number of ids (``max id + 1``), special tokens included."""
        ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def cls_id(self) -> int | None: ...

    @property
    def sep_id(self) -> int | None: ...

    @property
    def mask_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def special_ids(self) -> Sequence[int]:
        """Ids of every special token, sorted."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or ``None`` when it is not in the vocabulary."""
        ...

    def id_to_token(self, idx: int) -> str | None:
        """Token string of id ``idx``, or ``None`` when out of range."""
        ...

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; specials (``[CLS] ... [SEP]``) only when asked for."""
        ...

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text."""
        ...

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``."""
        ...

    def encode_words(self, words: Sequence[str], *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of pre-split ``words``; ``word_ids[t]`` indexes ``words``. Special-token
        strings among the words stay plain text."""
        ...

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of raw ``text`` with their character ``offsets``; ``word_ids`` number
        the tokenizer's own pre-tokens (words as it splits them), in order."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the tokenizer's files into ``directory`` (created if needed), in a
        form Hugging Face ``transformers`` reads back; returns the main file's path
        (or the folder's, when there are several files)."""
        ...
