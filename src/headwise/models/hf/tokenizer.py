"""The tokenizer stored with a Hugging Face model folder, behind headwise's
:class:`~headwise.protocols.Tokenizer` protocol (:class:`HFTokenizer`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as RawTokenizer

from ...protocols import WordPieces
from .files import resolve_model_folder

__all__ = ["HFTokenizer", "TOKENIZER_FILES", "load_tokenizer"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _hf_token_id(kind: str) -> property:
    """A read-only property: the wrapped tokenizer's ``<kind>_token_id`` (None if it has
    no such token)."""
    attribute = f"{kind}_token_id"

    def get(self: HFTokenizer) -> int | None:
        return getattr(self.hf, attribute)

    return property(get, doc=f"transformers' ``{attribute}``.")


class HFTokenizer:
    """A ``transformers`` tokenizer (``AutoTokenizer.from_pretrained``) that satisfies
    :class:`headwise.protocols.Tokenizer`.

    ``hf`` is the wrapped tokenizer. Calling an ``HFTokenizer`` calls it, so padding,
    truncation and special tokens behave as in transformers:
    ``tok(texts, padding=True, return_tensors="pt")``. The protocol's ``encode`` and
    ``encode_batch`` add no special tokens unless asked (transformers' ``encode`` does
    by default).
    """

    def __init__(self, hf: Any) -> None:
        self.hf = hf

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.hf(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.hf)

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"

    # ------------------------------------------------------------ the special ids
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (transformers' ``len(tok)``)."""
        return len(self.hf)

    pad_id = _hf_token_id("pad")
    cls_id = _hf_token_id("cls")
    sep_id = _hf_token_id("sep")
    mask_id = _hf_token_id("mask")
    bos_id = _hf_token_id("bos")
    eos_id = _hf_token_id("eos")

    @property
    def special_ids(self) -> list[int]:
        return sorted(set(self.hf.all_special_ids))

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return self.hf.get_vocab()

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def id_to_token(self, idx: int) -> str | None:
        idx = int(idx)
        return self.hf.convert_ids_to_tokens(idx) if 0 <= idx < len(self.hf) else None

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        """transformers' ``convert_ids_to_tokens`` (an id or a list of ids)."""
        return self.hf.convert_ids_to_tokens(ids)

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        return [list(ids) for ids in self.hf(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def encode_words(self, words: Sequence[str], *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of pre-split ``words`` (transformers' ``is_split_into_words``). A slow
        tokenizer (no ``word_ids()``) or a byte-level BPE that refuses pre-split words is
        encoded word by word instead, a space before every word but the first; so is one
        whose pieces carry the space before a word (byte-level BPE, GPT-2's ``Ġ``), which
        transformers 5 encodes pre-split without it (``cat`` where text has ``Ġcat``)."""
        words = list(words)
        if self._spaces_mark_words:
            return self._word_by_word(words, add_special_tokens)
        try:
            enc = self.hf(words, is_split_into_words=True, add_special_tokens=add_special_tokens)
            wids = enc.word_ids()
        except (ValueError, TypeError, AttributeError):
            return self._word_by_word(words, add_special_tokens)
        return WordPieces(list(enc["input_ids"]), list(wids))

    @cached_property
    def _spaces_mark_words(self) -> bool:
        """Whether a word's pieces depend on the space before it: ``"a b"`` is not
        ``"a"`` followed by ``"b"`` (byte-level BPE; not WordPiece, nor SentencePiece,
        which marks every word alike)."""
        return self.encode("a b") != self.encode("a") + self.encode("b")

    def _word_by_word(self, words: list[str], add_special_tokens: bool) -> WordPieces:
        ids: list[int] = []
        wids: list[int | None] = []
        for i, w in enumerate(words):
            piece_ids = self.encode(w if i == 0 else " " + w)
            ids.extend(piece_ids)
            wids.extend([i] * len(piece_ids))
        if add_special_tokens and hasattr(self.hf, "build_inputs_with_special_tokens"):
            full = self.hf.build_inputs_with_special_tokens(ids)
            # the specials wrap the sequence: find where ours sits inside
            for start in range(len(full) - len(ids) + 1):
                if full[start : start + len(ids)] == ids:
                    wids = [None] * start + wids + [None] * (len(full) - start - len(ids))
                    ids = full
                    break
        return WordPieces(ids, wids)

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of raw ``text`` with offsets (needs a fast tokenizer)."""
        enc = self.hf(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        return WordPieces(list(enc["input_ids"]), list(enc.word_ids()), offsets)

    # --------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """transformers' ``save_pretrained`` into ``directory``; returns the folder."""
        self.hf.save_pretrained(str(directory))
        return Path(directory)


def load_tokenizer(path: str | os.PathLike) -> HFTokenizer | RawTokenizer | None:
    """The tokenizer stored with a model folder, or None if it has no tokenizer files.

    Returns an :class:`HFTokenizer` around
    ``transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)`` (it
    reads tokenizer_config.json too, so padding, truncation and special tokens behave
    as in transformers). Without transformers installed, falls back to a raw
    ``tokenizers.Tokenizer.from_file`` on ``tokenizer.json`` (a lower-level object:
    ``tok.encode_batch(texts)``; it does not satisfy the Tokenizer protocol).
    For a sentence-transformers folder both the transformer's subfolder and the root
    are searched.
    """
    root = Path(path)
    candidates = [resolve_model_folder(root)]
    if candidates[0] != root:
        candidates.append(root)
    for folder in candidates:
        if not any((folder / n).is_file() for n in TOKENIZER_FILES):
            continue
        try:
            from transformers import AutoTokenizer  # optional dependency (the dev extra)
        except ImportError:
            if (folder / "tokenizer.json").is_file():
                return RawTokenizer.from_file(str(folder / "tokenizer.json"))
            return None
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
    return None
