"""A small CoNLL-U reader (Universal Dependencies treebanks), enough for the syntax probe.

Format (https://universaldependencies.org/format.html): sentences separated by blank
lines; ``#`` lines are comments (``# key = value`` ones are kept as metadata); every
other line has 10 tab-separated fields ``ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL
DEPS MISC``. Multiword-token lines (``ID`` a range such as ``1-2``, e.g. "don't"
spanning "do" + "n't") and empty nodes (``ID`` a decimal such as ``8.1``, enhanced
graphs only) are skipped: the probe works on the syntactic words, which are the ones
that carry ``HEAD``/``DEPREL``.

Relation subtypes (``nmod:poss``, ``obl:tmod``) are kept in ``deprel``; ``base_deprel``
is the universal relation before the colon (``nmod``), which the probe tabulates by
default.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..checks import is_int

__all__ = ["Token", "Sentence", "parse_conllu", "read_conllu", "base_relation"]


def base_relation(deprel: str) -> str:
    """The universal relation without its subtype: ``"nmod:poss" -> "nmod"``."""
    return deprel.split(":", 1)[0]


@dataclass(frozen=True)
class Token:
    """One syntactic word. ``id`` is 1-based; ``head`` is the 1-based id of its
    syntactic head, 0 for the root."""

    id: int
    form: str
    lemma: str
    upos: str
    xpos: str
    feats: str
    head: int
    deprel: str

    @property
    def base_deprel(self) -> str:
        return base_relation(self.deprel)


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words (``tokens``, ids ``1..n`` in order) and metadata from
    ``# key = value`` comments (``sent_id``, ``text``...)."""

    tokens: tuple[Token, ...]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return [t.form for t in self.tokens]

    @property
    def heads(self) -> list[int]:
        """0-based index of each word's head, ``-1`` for the root."""
        return [t.head - 1 for t in self.tokens]

    def relations(self, base: bool = True) -> list[str]:
        """Each word's relation to its head (base relations by default)."""
        return [t.base_deprel if base else t.deprel for t in self.tokens]

    def __len__(self) -> int:
        return len(self.tokens)


def _int_field(value: str, name: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}") from None


def parse_conllu(text: str, *, source: str = "<string>") -> list[Sentence]:
    """Parse CoNLL-U ``text`` into sentences (see the module docstring for what is
    skipped). Raises ValueError naming ``source`` and the line for malformed lines,
    non-consecutive word ids or heads pointing outside the sentence."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sentences: list[Sentence] = []
    tokens: list[Token] = []
    meta: dict[str, str] = {}
    start = 1

    def flush(line_no: int) -> None:
        nonlocal tokens, meta
        if tokens:
            for t in tokens:
                if not 0 <= t.head <= len(tokens):
                    raise ValueError(
                        f"{source}: sentence starting at line {start}: word {t.id} has HEAD {t.head}, "
                        f"outside 0..{len(tokens)}"
                    )
            sentences.append(Sentence(tuple(tokens), meta))
        tokens, meta = [], {}

    # lines end at "\n", "\r\n" or "\r" only: splitlines() also broke at U+2028, U+0085,
    # form feeds ..., which a word or a "# text" comment may hold
    for line_no, raw in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            flush(line_no)
            start = line_no + 1
            continue
        if line.startswith("#"):
            if "=" in line:
                key, _, value = line[1:].partition("=")
                meta[key.strip()] = value.strip()
            continue
        cols = line.split("\t")
        where = f"{source}, line {line_no}"
        if len(cols) != 10:
            raise ValueError(f"{where}: expected 10 tab-separated fields, got {len(cols)}: {line[:80]!r}")
        tid = cols[0]
        if "-" in tid or "." in tid:  # multiword token range / empty node
            continue
        idx = _int_field(tid, "ID", where)
        if idx != len(tokens) + 1:
            raise ValueError(f"{where}: expected word ID {len(tokens) + 1}, got {idx}")
        tokens.append(
            Token(
                id=idx,
                form=cols[1],
                lemma=cols[2],
                upos=cols[3],
                xpos=cols[4],
                feats=cols[5],
                head=_int_field(cols[6], "HEAD", where),
                deprel=cols[7],
            )
        )
    flush(-1)
    return sentences


def read_conllu(path: str | os.PathLike[str], limit: int | None = None) -> list[Sentence]:
    """Read a ``.conllu`` file (UTF-8); ``limit`` keeps the first ``limit`` sentences."""
    if limit is not None and (not is_int(limit) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"CoNLL-U file {path!r} is a folder; give a .conllu file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CoNLL-U file {path!r} does not exist")
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors) is no text
        try:
            text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"CoNLL-U file {path!r} is not UTF-8 text ({e})") from None
    sentences = parse_conllu(text, source=path)
    return sentences if limit is None else sentences[:limit]
