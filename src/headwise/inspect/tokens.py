"""What inspect asks of a tokenizer, through the :class:`headwise.protocols.Tokenizer`
protocol: pieces that remember their words (``encode_words``, ``encode_text``), the
padding id, the special token an induction test starts with, and the strings of ids.

:func:`as_tokenizer` puts every accepted tokenizer behind the protocol:

* an object that satisfies it (:class:`headwise.data.Tokenizer`,
  :class:`headwise.models.hf.HFTokenizer`) as it is;
* a Hugging Face ``transformers`` tokenizer wrapped in an ``HFTokenizer``;
* a raw ``tokenizers.Tokenizer`` (what a model folder's tokenizer loads as without
  transformers) in :class:`RawTokenizerPieces`, which has no special ids of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer as RawTokenizer

from ..data import Tokenizer as HeadwiseTokenizer
from ..data.tokenizer import word_ids
from ..models.hf import HFTokenizer
from ..protocols import Tokenizer, WordPieces

__all__ = ["RawTokenizerPieces", "as_tokenizer", "pad_id", "induction_bos_id", "token_strings"]


class RawTokenizerPieces:
    """A raw ``tokenizers.Tokenizer`` seen through the part of the Tokenizer protocol
    inspect reads: pieces with their words, token strings, and no special ids (a raw
    tokenizer does not say which of its tokens are ``[CLS]`` or padding)."""

    pad_id: int | None = None
    cls_id: int | None = None
    bos_id: int | None = None

    def __init__(self, raw: RawTokenizer) -> None:
        self.raw = raw
        self._spaces: bool | None = None

    def id_to_token(self, idx: int) -> str | None:
        return self.raw.id_to_token(int(idx))

    def encode_words(self, words: Sequence[str], *, add_special_tokens: bool = True) -> WordPieces:
        words = list(words)
        if self._spaces_mark_words():  # byte-level BPE: 'Ġcat' in running text, not 'cat'
            words = [w if i == 0 else " " + w for i, w in enumerate(words)]
        enc = self.raw.encode(words, is_pretokenized=True, add_special_tokens=add_special_tokens)
        return WordPieces(list(enc.ids), word_ids(enc))

    def _spaces_mark_words(self) -> bool:
        """Whether a word's pieces depend on the space before it (``"a b"`` is not
        ``"a"`` then ``"b"``), as in byte-level BPE."""
        if self._spaces is None:
            ids = [self.raw.encode(t, add_special_tokens=False).ids for t in ("a b", "a", "b")]
            self._spaces = ids[0] != ids[1] + ids[2]
        return self._spaces

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> WordPieces:
        enc = self.raw.encode(text, add_special_tokens=add_special_tokens)
        return WordPieces(list(enc.ids), word_ids(enc), [tuple(o) for o in enc.offsets])


def as_tokenizer(tokenizer: Any) -> Tokenizer | RawTokenizerPieces:
    """``tokenizer`` behind the Tokenizer protocol (see the module's docstring);
    TypeError for anything else."""
    if isinstance(tokenizer, (HeadwiseTokenizer, HFTokenizer, RawTokenizerPieces, Tokenizer)):
        return tokenizer
    if isinstance(tokenizer, RawTokenizer):
        return RawTokenizerPieces(tokenizer)
    # a transformers tokenizer (transformers is optional: it is recognised by its API)
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):
        return HFTokenizer(tokenizer)
    raise TypeError(
        f"tokenizer must be a headwise.data.Tokenizer, a tokenizers.Tokenizer or a Hugging Face "
        f"(fast) tokenizer (anything with headwise.protocols.Tokenizer's members), got {type(tokenizer).__name__}"
    )


def pad_id(tokenizer: Any) -> int:
    """The id right-padded batches are filled with (0 when the tokenizer has none)."""
    found = as_tokenizer(tokenizer).pad_id
    return 0 if found is None else found


def induction_bos_id(tokenizer: Any) -> int | None:
    """The special token the repeated random tokens of an induction test start with:
    ``[CLS]``, else a BOS, else None."""
    tok = as_tokenizer(tokenizer)
    return tok.cls_id if tok.cls_id is not None else tok.bos_id


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """The token string of each id (``<ID>`` for an id the vocabulary lacks)."""
    tok = as_tokenizer(tokenizer)
    return [tok.id_to_token(i) or f"<{i}>" for i in ids]
