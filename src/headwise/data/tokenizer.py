"""Tokenizers trained from scratch with Hugging Face ``tokenizers``.

Three kinds, each stored as a plain ``tokenizer.json`` that ``tokenizers`` (and
``transformers``' ``PreTrainedTokenizerFast``) can read back:

* ``"wordpiece"`` (MLM, RTD): BERT normalizer (optional lowercasing, NFD + accent
  stripping), ``BertPreTokenizer``, ``##`` continuation pieces. Specials, in id
  order: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``. ``eos_id`` is ``[SEP]``,
  the token that closes a document in the encoder packing.
* ``"bpe"`` (CLM): GPT-2 style byte-level BPE (``ByteLevel`` pre-tokenizer and
  decoder, every byte in the base alphabet, so there is no unknown token).
  Specials: ``[PAD]=0, <|endoftext|>=1``. Padding gets its own id rather than
  reusing ``<|endoftext|>``: a loss that ignores ``pad_id`` must still learn to
  predict the end of a document.
* ``"char"``: every character seen in training becomes a token (the most frequent
  ones when there are more than ``vocab_size`` allows), unseen characters map to
  ``[UNK]``. Specials: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4,
  <|endoftext|>=5``, so a character model serves any objective.

``pad_id`` is 0 for every kind trained here. Text is encoded *without* specials by
default, and special-token strings occurring in the text (``"[MASK]"`` in a
docstring) are encoded as plain text unless ``parse_special=True``: corpus text must
never be able to inject control tokens.

Training is reproducible for BPE and char. For WordPiece the ids are put in a
canonical order, but the ``tokenizers`` trainer breaks ties between equally
frequent merges in hash order, so a few marginal pieces can differ between fresh
trainings; :func:`~headwise.data.tokenizer_training.load_or_train_tokenizer` caches one result for reuse.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as _HFTokenizer

from ..checks import check_choice, check_int, naming_errors
from ..protocols import WordPieces

__all__ = ["Tokenizer", "TokenizerKind", "KINDS", "TOKENIZER_FILE", "word_ids"]

TokenizerKind = Literal["wordpiece", "bpe", "char"]
KINDS: tuple[str, ...] = ("wordpiece", "bpe", "char")

PAD, UNK, CLS, SEP, MASK, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>"
SPECIALS: dict[str, list[str]] = {
    "wordpiece": [PAD, UNK, CLS, SEP, MASK],
    "bpe": [PAD, EOS],
    "char": [PAD, UNK, CLS, SEP, MASK, EOS],
}
TOKENIZER_FILE = "tokenizer.json"


def _byte_level_whitespace() -> frozenset[str]:
    """The characters the GPT-2 byte-to-unicode table gives whitespace bytes.

    Printable latin-1 bytes map to themselves; the others are shifted to 256 + n in
    byte order (so space becomes 'Ġ', newline 'Ċ')."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return frozenset(table[b] for b in b" \t\n\r\x0b\x0c")


_BYTE_LEVEL_WS = _byte_level_whitespace()


class Tokenizer:
    """A trained tokenizer: ids in, ids out, plus what objectives need to know.

    Wraps a ``tokenizers.Tokenizer``. ``kind`` is ``"wordpiece"``, ``"bpe"`` or
    ``"char"``; special ids that a kind lacks are ``None``. ``is_continuation`` and
    ``is_special`` are boolean numpy arrays of shape ``(vocab_size,)`` indexed by
    token id (whole-word masking groups a word-start token with the continuation
    tokens that follow it).

    Build one with :func:`~headwise.data.tokenizer_training.train_tokenizer`, :meth:`load` or :meth:`from_hf`.
    """

    def __init__(self, hf: _HFTokenizer, kind: str) -> None:
        check_choice("kind", kind, KINDS)
        self._tok = hf
        self.kind: str = kind
        vocab = hf.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        special_strings = {
            t.content for t in hf.get_added_tokens_decoder().values() if t.special
        }
        self.special_ids: list[int] = sorted(vocab[s] for s in special_strings if s in vocab)
        self.pad_id: int | None = self._id(PAD) if self._id(PAD) is not None else self._id("<pad>")
        self.unk_id: int | None = self._id(UNK)
        self.cls_id: int | None = self._id(CLS)
        self.sep_id: int | None = self._id(SEP)
        self.mask_id: int | None = self._id(MASK)
        eos = self._id(EOS)
        # For WordPiece the document terminator in packed blocks is [SEP].
        self.eos_id: int | None = eos if eos is not None else (
            self.sep_id if kind == "wordpiece" else None
        )
        # No kind trained here opens a sequence with a BOS token ([CLS] does for WordPiece).
        self.bos_id: int | None = None
        self.is_special = np.zeros(self._vocab_size, dtype=bool)
        self.is_special[self.special_ids] = True
        self.is_continuation = self._continuation_marks(vocab)
        self._json: str | None = None

    # ------------------------------------------------------------------ basics
    def _id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids (``max id + 1``), specials included."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or ``None`` when it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        """Token string of id ``idx``, or ``None`` when out of range."""
        return self._tok.id_to_token(_token_id("idx", idx))

    @property
    def backend(self) -> _HFTokenizer:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def _continuation_marks(self, vocab: dict[str, int]) -> np.ndarray:
        marks = np.zeros(self._vocab_size, dtype=bool)
        if self.kind == "char":
            return marks
        if self.kind == "wordpiece":
            prefix = getattr(self._tok.model, "continuing_subword_prefix", None) or "##"
            for token, idx in vocab.items():
                marks[idx] = token.startswith(prefix)
        else:
            # A byte-level token begins a word when it starts with whitespace
            # ('Ġ' space, 'Ċ' newline, ...); anything else glues to the token before.
            for token, idx in vocab.items():
                marks[idx] = bool(token) and token[0] not in _BYTE_LEVEL_WS
        marks[self.special_ids] = False
        return marks

    # ---------------------------------------------------------------- encoding
    def _set_special_parsing(self, parse_special: bool) -> None:
        self._tok.encode_special_tokens = not parse_special

    def encode(
        self, text: str, *, add_special_tokens: bool = False, parse_special: bool = False
    ) -> list[int]:
        """Token ids of ``text``.

        ``add_special_tokens`` applies the post-processor (WordPiece:
        ``[CLS] ... [SEP]``); ``parse_special`` lets special-token strings in the
        text become special ids (off by default, see the module docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        self._set_special_parsing(parse_special)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def unknown_characters(self, text: str) -> list[str]:
        """The characters of ``text`` that encode to ``[UNK]`` (each once, in order of
        appearance); empty for a tokenizer without one (byte-level BPE)."""
        if self.unk_id is None or not text:
            return []
        self._set_special_parsing(False)
        enc = self._tok.encode(text, add_special_tokens=False)
        found: dict[str, None] = {}
        for idx, (start, end) in zip(enc.ids, enc.offsets, strict=True):
            if idx != self.unk_id:
                continue
            span = text[start:end]
            # a WordPiece [UNK] covers a whole word: name the characters it could not spell
            chars = [c for c in span if self.unk_id in self._tok.encode(c, add_special_tokens=False).ids]
            found.update(dict.fromkeys(chars or [span]))
        return list(found)

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        add_special_tokens: bool = False,
        parse_special: bool = False,
    ) -> list[list[int]]:
        """Token ids of each text (encoded in parallel by ``tokenizers``)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, got a single str; wrap it: [text]")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
        self._set_special_parsing(parse_special)
        encs = self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [e.ids for e in encs]

    def encode_words(self, words: Sequence[str], *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of pre-split ``words`` (``word_ids[t]`` indexes ``words``, ``None`` for
        ``[CLS]``/``[SEP]``); special-token strings among the words stay plain text.
        Byte-level BPE gets a space before every word but the first, as in running text
        (its pieces carry the space: ``Ġcat``, where a bare ``cat`` is a word's middle);
        so does a char tokenizer that knows the space (the space's piece then belongs to
        the word after it), which would otherwise read ``Thecatsat``."""
        self._set_special_parsing(False)
        words = list(words)
        if self.kind == "bpe" or (self.kind == "char" and self._id(" ") is not None):
            words = [w if i == 0 else " " + w for i, w in enumerate(words)]
        enc = self._tok.encode(words, is_pretokenized=True, add_special_tokens=add_special_tokens)
        return WordPieces(list(enc.ids), word_ids(enc))

    def encode_text(self, text: str, *, add_special_tokens: bool = True) -> WordPieces:
        """Pieces of raw ``text`` with their character offsets; ``word_ids`` number the
        pre-tokenizer's words (BERT splits off punctuation, byte-level BPE at spaces)."""
        self._set_special_parsing(False)
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        return WordPieces(list(enc.ids), word_ids(enc), [tuple(o) for o in enc.offsets])

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list, numpy array or 1-D tensor of token ids)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be token ids, got a {type(ids).__name__}")
        v = self.vocab_size
        ids = [_token_id(f"ids[{i}]", idx, v) for i, idx in enumerate(ids)]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def tokens(self, text: str) -> list[str]:
        """Token strings of ``text`` (for display)."""
        self._set_special_parsing(False)
        return self._tok.encode(text, add_special_tokens=False).tokens

    # ------------------------------------------------------------- persistence
    def to_json(self) -> str:
        """The ``tokenizer.json`` content."""
        if self._json is None:
            self._json = self._tok.to_str()
        return self._json

    @property
    def fingerprint(self) -> str:
        """Hex sha256 of the ``tokenizer.json`` content (keys caches of token ids)."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (created if needed), atomically;
        returns the file's path. A ``tokenizer.json`` already there with other content
        is a FileExistsError unless ``overwrite``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        if not overwrite and path.exists():
            try:
                same = path.read_text(encoding="utf-8") == self.to_json()
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                raise FileExistsError(
                    f"{path} already exists and holds another tokenizer (or other content); "
                    "pass overwrite=True to replace it, or save into another folder"
                )
        tmp = directory / f".{TOKENIZER_FILE}.{os.getpid()}.tmp"
        try:
            with naming_errors(path):  # (a full disk named no file)
                tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], kind: str | None = None) -> Tokenizer:
        """Load a ``tokenizer.json`` (or a directory holding one).

        ``kind`` is inferred from the model (WordPiece, BPE, or a per-character
        WordLevel) unless given."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer path {str(path)!r} does not exist; expected a tokenizer.json "
                "file or a directory containing one"
            )
        try:
            hf = _HFTokenizer.from_file(str(path))
        except Exception as err:
            raise ValueError(f"tokenizer file {str(path)!r} could not be read: {err}") from err
        return cls.from_hf(hf, kind=kind, source=str(path))

    @classmethod
    def load_from_json(cls, content: str, kind: str | None = None) -> Tokenizer:
        """A tokenizer from ``tokenizer.json`` content (a string)."""
        try:
            hf = _HFTokenizer.from_str(content)
        except Exception as err:
            raise ValueError(f"tokenizer JSON could not be parsed: {err}") from err
        return cls.from_hf(hf, kind=kind, source="tokenizer JSON")

    @classmethod
    def from_hf(
        cls, hf: _HFTokenizer, kind: str | None = None, *, source: str = "tokenizer"
    ) -> Tokenizer:
        """Wrap an existing ``tokenizers.Tokenizer``, inferring ``kind`` if not given."""
        if kind is None:
            model = type(hf.model).__name__
            kind = {"WordPiece": "wordpiece", "BPE": "bpe", "WordLevel": "char"}.get(model)
            if kind is None:
                raise ValueError(
                    f"{source}: model type {model!r} is not supported; accepted are "
                    "WordPiece, BPE and (character) WordLevel"
                )
        return cls(hf, kind)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _token_id(name: str, value: object, vocab_size: int | None = None) -> int:
    """``value`` as an int (numpy integers too) in ``[0, vocab_size)``, else ValueError."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    what = "a token id >= 0" if vocab_size is None else f"a token id in [0, {vocab_size})"
    return check_int(name, int(value) if ok else value, maximum=None if vocab_size is None else vocab_size - 1,
                     minimum=0, what=what)


def word_ids(enc: Encoding) -> list[int | None]:
    """Each piece's word index, ``None`` for a special token the post-processor added."""
    special = enc.special_tokens_mask or [0] * len(enc.ids)
    return [None if s else w for w, s in zip(enc.word_ids, special, strict=True)]


# ---------------------------------------------------------------------- training
