"""Training headwise's tokenizers from a corpus (WordPiece, byte-level BPE, characters),
and the cache that trains each one once per corpus and settings. The trained
:class:`~headwise.data.tokenizer.Tokenizer` itself is in :mod:`headwise.data.tokenizer`."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _HFTokenizer

from ..checks import check_choice, check_int
from .cache import default_cache_dir
from .corpus import Corpus
from .tokenizer import CLS, KINDS, SEP, SPECIALS, TOKENIZER_FILE, UNK, Tokenizer

__all__ = ["train_tokenizer", "load_or_train_tokenizer", "min_vocab_size"]


# The largest vocab_size trained: far above any real tokenizer (about 256k), and the
# trainers reserve memory for all of it up front (1e9 aborted the process, out of memory).
MAX_VOCAB_SIZE = 1 << 22


def _texts(corpus: Corpus | Iterable[str]) -> Iterable[str]:
    if isinstance(corpus, (str, bytes)):
        raise TypeError(
            f"corpus must be a Corpus or an iterable of str, got a single {type(corpus).__name__} "
            "(its characters would be the documents); wrap it: [text] or Corpus.from_texts([text])"
        )
    return corpus.documents() if isinstance(corpus, Corpus) else corpus


def _build_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int,
    lowercase: bool,
    strip_accents: bool | None,
    show_progress: bool,
) -> _HFTokenizer:
    tok = _HFTokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS["wordpiece"],
        continuing_subword_prefix="##", show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _canonical_wordpiece_ids(tok)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tok


def _canonical_wordpiece_ids(tok: _HFTokenizer) -> None:
    """Renumber a trained WordPiece vocabulary in a fixed order.

    The trainer hands out ids in hash-map order, so two runs on the same corpus give
    the same pieces under different ids. WordPiece's greedy longest-match depends
    only on the set of pieces, so renumbering changes no segmentation and makes the
    ids (and everything keyed on ``tokenizer.json``) a function of that set. (The set
    itself can still differ by a few pieces between fresh trainings: the trainer
    breaks ties between equally frequent merges in hash order, e.g. 14 of 8192
    pieces on stdlib-docs. :func:`load_or_train_tokenizer` caches the result so
    repeated runs share one tokenizer.) Specials keep
    their ids; other pieces follow by length, then word-initial before ``##``, then
    by string."""
    vocab = tok.get_vocab(with_added_tokens=False)
    specials = SPECIALS["wordpiece"]
    rest = sorted(
        (t for t in vocab if t not in specials),
        key=lambda t: (len(t[2:]) if t.startswith("##") else len(t), t.startswith("##"), t),
    )
    canonical = {t: i for i, t in enumerate(specials)}
    canonical.update((t, i) for i, t in enumerate(rest, start=len(specials)))
    old = tok.model
    tok.model = models.WordPiece(
        canonical,
        unk_token=UNK,
        continuing_subword_prefix="##",
        max_input_chars_per_word=old.max_input_chars_per_word,
    )


def _build_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int, show_progress: bool
) -> _HFTokenizer:
    tok = _HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS["bpe"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _build_char(texts: Iterable[str], vocab_size: int, min_frequency: int = 1) -> _HFTokenizer:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    most = max(counts.values(), default=0)
    counts = Counter({c: n for c, n in counts.items() if n >= min_frequency})  # the rest read as [UNK]
    if most and not counts:
        raise ValueError(f"min_frequency={min_frequency}: no character of the corpus occurs that often "
                         f"(the most frequent, {most} times)")
    specials = SPECIALS["char"]
    room = vocab_size - len(specials)
    if room <= 0:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for characters next to the "
            f"{len(specials)} special tokens; use vocab_size > {len(specials)}"
        )
    # Most frequent first when capped; the kept ones are then ordered by code point
    # so the vocabulary reads naturally.
    kept = sorted(c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:room])
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in kept:
        vocab[ch] = len(vocab)
    tok = _HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
    # [\s\S]: one piece per character, newlines included ('.' would skip them).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return tok


def min_vocab_size(kind: str) -> int:
    """The smallest ``vocab_size`` a ``kind`` tokenizer can have on any corpus: its
    special tokens plus one character (char, wordpiece) or the 256 bytes (bpe). A
    wordpiece tokenizer needs more: every character of its corpus."""
    check_choice("kind", kind, KINDS)
    return len(SPECIALS[kind]) + (256 if kind == "bpe" else 1)


def _min_vocab_reason(kind: str) -> str:
    n = len(SPECIALS[kind])
    return (f"256 bytes + {n} special tokens" if kind == "bpe"
            else f"{n} special tokens + 1 character: fewer leaves no room for characters")


def train_tokenizer(
    corpus: Corpus | Iterable[str],
    kind: str = "wordpiece",
    vocab_size: int = 8192,
    *,
    min_frequency: int | None = None,
    lowercase: bool | None = None,
    strip_accents: bool | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` from scratch on ``corpus`` (a :class:`Corpus`
    or any iterable of strings).

    Args:
        kind: ``"wordpiece"`` (MLM/RTD), ``"bpe"`` (CLM) or ``"char"``.
        vocab_size: the largest vocabulary allowed, specials included (a small
            corpus may yield fewer tokens; for ``"char"`` it caps the characters kept).
        min_frequency: a merge/piece (wordpiece, bpe; None = 2) or a character (char;
            None = 1, every character) must occur this often to be kept.
        lowercase, strip_accents: WordPiece normalisation (``lowercase`` None = True);
            ``strip_accents=None`` strips accents exactly when lowercasing (BERT's
            rule). Refused for the other kinds, which do not normalise.
    """
    check_choice("kind", kind, KINDS)
    if min_frequency is None:
        min_frequency = 1 if kind == "char" else 2
    check_int("min_frequency", min_frequency, minimum=0)
    if kind != "wordpiece":
        given = {k: v for k, v in (("lowercase", lowercase), ("strip_accents", strip_accents))
                 if v is not None}
        if given:
            raise ValueError(
                f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: only the wordpiece "
                f"tokenizer normalises text; the {kind} tokenizer keeps it as it is"
            )
    lowercase = True if lowercase is None else lowercase
    check_int("vocab_size", vocab_size, maximum=MAX_VOCAB_SIZE)
    if vocab_size < min_vocab_size(kind):
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer: it needs at least "
            f"{min_vocab_size(kind)} ({_min_vocab_reason(kind)})"
        )
    texts = _texts(corpus)
    if kind == "wordpiece":
        hf = _build_wordpiece(texts, vocab_size, min_frequency, lowercase, strip_accents,
                              show_progress)
        # the trainer keeps every character of the corpus whatever the limit: refuse
        # rather than hand back a larger vocabulary than was asked for
        if hf.get_vocab_size() > vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for a wordpiece tokenizer of this corpus: its "
                f"special tokens and single characters alone take {hf.get_vocab_size()}; use "
                f"vocab_size >= {hf.get_vocab_size()} (or the char tokenizer, which keeps the most "
                f"frequent characters)"
            )
    elif kind == "bpe":
        hf = _build_bpe(texts, vocab_size, min_frequency, show_progress)
    else:
        hf = _build_char(texts, vocab_size, min_frequency)
    return Tokenizer(hf, kind)


def load_or_train_tokenizer(
    corpus: Corpus,
    kind: str = "wordpiece",
    vocab_size: int = 8192,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    **train_kwargs: object,
) -> Tokenizer:
    """Train once per (corpus content, kind, vocab size, options) and reuse.

    The tokenizer is kept as ``<cache_dir>/tokenizers/<key>/tokenizer.json``;
    ``cache_dir`` defaults to :func:`headwise.data.cache.default_cache_dir`."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key_src = repr((corpus.content_hash, kind, vocab_size, sorted(train_kwargs.items())))
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    folder = root / "tokenizers" / f"{kind}-{vocab_size}-{key}"
    if (folder / TOKENIZER_FILE).is_file():
        try:
            return Tokenizer.load(folder, kind=kind)
        except ValueError:
            pass  # a damaged cache entry (headwise's own file) is trained and written again
    tok = train_tokenizer(corpus, kind, vocab_size, **train_kwargs)  # type: ignore[arg-type]
    tok.save(folder, overwrite=True)  # (a file in the cache's own folder for this key)
    return tok
