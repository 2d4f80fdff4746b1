"""What inspect asks of a tokenizer: which of the accepted kinds it is, its padding id,
the special token an induction test starts with, and the strings of ids.

Three kinds are accepted: a :class:`headwise.data.Tokenizer`, a raw
``tokenizers.Tokenizer`` and a Hugging Face ``transformers`` (fast) tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer as RawTokenizer

from ..checks import is_int
from ..data import Tokenizer

__all__ = ["tokenizer_kind", "pad_id", "induction_bos_id", "token_strings"]


def tokenizer_kind(tokenizer: Any) -> str:
    """Which tokenizer API ``tokenizer`` offers: "headwise", "hf" (transformers), or
    "tokenizers" (a raw ``tokenizers.Tokenizer``); TypeError for anything else."""
    if isinstance(tokenizer, Tokenizer):
        return "headwise"
    if isinstance(tokenizer, RawTokenizer):
        return "tokenizers"
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):
        return "hf"
    raise TypeError(
        f"tokenizer must be a headwise.data.Tokenizer, a tokenizers.Tokenizer or a Hugging Face "
        f"(fast) tokenizer, got {type(tokenizer).__name__}"
    )


def _first_id(tokenizer: Any, names: Sequence[str]) -> int | None:
    for name in names:
        v = getattr(tokenizer, name, None)
        if is_int(v):
            return v
    return None


def pad_id(tokenizer: Any) -> int:
    """The id right-padded batches are filled with (0 when the tokenizer has none)."""
    found = _first_id(tokenizer, ("pad_id", "pad_token_id"))
    return 0 if found is None else found


def induction_bos_id(tokenizer: Any) -> int | None:
    """The special token the repeated random tokens of an induction test start with:
    ``[CLS]``, else a BOS, else None."""
    return _first_id(tokenizer, ("cls_id", "cls_token_id", "bos_id", "bos_token_id"))


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """The token string of each id (``<ID>`` for an id the vocabulary lacks)."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return list(tokenizer.convert_ids_to_tokens(ids))
    return [tokenizer.id_to_token(i) or f"<{i}>" for i in ids]
