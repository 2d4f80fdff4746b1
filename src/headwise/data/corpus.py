"""Corpus sources: where training text comes from.

A corpus is named by one spec string, turned into a :class:`Corpus` by
:func:`load_corpus`:

* a path to a text file, or to a folder searched recursively for ``.txt``, ``.md``
  and ``.jsonl`` files (hidden files and folders are skipped; files are read in
  sorted path order so the document order is reproducible).

  - ``.txt`` / ``.md`` (and an explicitly named file with any other extension):
    **one document per file**. Paragraph breaks stay inside the document as
    ``"\\n\\n"``; the packer (:mod:`headwise.data.blocks`) packs across document
    boundaries anyway, so splitting a file into paragraphs would only add
    separator tokens in the middle of running text.
  - ``.jsonl``: one document per line, taken from the line's ``"text"`` field
    (blank lines and empty texts are skipped).

* ``stdlib-docs``: the docstrings of the running Python's standard library
  (modules, classes, functions), read with :mod:`ast` without importing anything.
  One document per module: its docstrings joined by blank lines. About 1.8 MB of
  English; the default corpus for MLM and RTD.
* ``stdlib-code``: the standard library's ``.py`` sources, one document per file
  (about 12 MB); the default for CLM.
  Both stdlib sources leave out test suites (every folder named ``test``,
  ``tests`` or ``idle_test``: ``test/``, ``idlelib/idle_test``, ``lib2to3/tests``,
  ``unittest/test``, ...) and ``site-packages``.
* ``hf:NAME`` or ``hf:NAME:CONFIG``: the ``"text"`` column of the ``"train"``
  split of a Hugging Face dataset, through the optional ``datasets`` library.

Bad corpora fail early, in :func:`load_corpus`, with an error that names the file:
a missing path (``FileNotFoundError``), an empty file or corpus, a binary or
non-UTF-8 file (with the byte offset), a folder without supported files
(``ValueError``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = [
    "Corpus",
    "load_corpus",
    "is_builtin_corpus",
    "STDLIB_DOCS",
    "STDLIB_CODE",
    "SUPPORTED_EXTENSIONS",
    "stdlib_root",
    "DatasetsMissingError",
    "DatasetLoadError",
]

STDLIB_DOCS = "stdlib-docs"
STDLIB_CODE = "stdlib-code"
SUPPORTED_EXTENSIONS = (".txt", ".md", ".jsonl")

# Bumped whenever the way documents are extracted changes, so that cached token
# blocks keyed on a corpus hash are not reused across extraction rules.
_EXTRACTION_VERSION = 1
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
)


class DatasetsMissingError(ImportError, ValueError):
    """An ``hf:`` corpus without the ``datasets`` library. A ``ValueError`` too: the
    command refuses it as unusable input (exit status 2), not as a bug."""


class DatasetLoadError(RuntimeError, ValueError):
    """An ``hf:`` corpus whose dataset could not be loaded (offline, no such dataset or
    config). A ``ValueError`` too: the command refuses it (exit status 2)."""


class Corpus:
    """A named, re-iterable collection of text documents.

    Iterating yields the documents (``str``) in a fixed order, every time anew.
    ``content_hash`` is a hex sha256 that changes whenever the documents change;
    it keys caches built from the corpus (tokenizers, token blocks).

    Args:
        name: short human-readable name (the spec string for loaded corpora).
        documents: zero-argument callable returning a fresh iterable of documents.
        content_hash: hex digest identifying the content.
        n_chars: total characters over all documents, when known up front;
            otherwise computed on first access by iterating once.
        n_documents: number of documents, when known up front.
    """

    def __init__(
        self,
        name: str,
        documents: Callable[[], Iterable[str]],
        content_hash: str,
        *,
        n_chars: int | None = None,
        n_documents: int | None = None,
    ) -> None:
        self.name = name
        self._documents = documents
        self._content_hash = content_hash
        self._n_chars = n_chars
        self._n_documents = n_documents

    @classmethod
    def from_texts(cls, texts: Iterable[str], name: str = "texts") -> Corpus:
        """An in-memory corpus, one document per string (empty strings dropped).

        Raises ``ValueError`` when no non-empty text is given, ``TypeError`` when an
        item is not a ``str``."""
        if isinstance(texts, (str, bytes)):
            raise TypeError(
                f"texts must be an iterable of str, got a single {type(texts).__name__} (its "
                "characters would be the documents); wrap it: Corpus.from_texts([text])"
            )
        docs = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
            if text.strip():
                docs.append(text)
        if not docs:
            raise ValueError(f"corpus {name!r} is empty: no non-blank text was given")
        h = hashlib.sha256()
        for doc in docs:
            _hash_document(h, doc)
        return cls(
            name,
            lambda: iter(docs),
            h.hexdigest(),
            n_chars=sum(len(d) for d in docs),
            n_documents=len(docs),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._documents())

    def documents(self) -> Iterator[str]:
        """A fresh iterator over the documents."""
        return iter(self)

    @property
    def content_hash(self) -> str:
        """Hex sha256 identifying the content (changes when any document changes)."""
        return self._content_hash

    @property
    def n_chars(self) -> int:
        """Total number of characters over all documents."""
        return self._known("_n_chars")

    @property
    def n_documents(self) -> int:
        """Number of documents."""
        return self._known("_n_documents")

    def _known(self, attribute: str) -> int:
        """The count stored in ``attribute``, counted first (one pass over the documents)
        if it was not given up front."""
        if getattr(self, attribute) is None:
            self._count()
        return getattr(self, attribute)

    def _count(self) -> None:
        chars = docs = 0
        for doc in self:
            chars += len(doc)
            docs += 1
        self._n_chars, self._n_documents = chars, docs

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, hash={self.content_hash[:12]})"


def load_corpus(spec: str | os.PathLike[str] | Corpus) -> Corpus:
    """Build the :class:`Corpus` named by ``spec`` (see the module docstring).

    ``spec`` is ``"stdlib-docs"``, ``"stdlib-code"``, ``"hf:NAME[:CONFIG]"``, a path
    to a file or folder, or an existing :class:`Corpus` (returned as is). Files are
    validated here, so that a bad corpus fails before any training starts.
    """
    if isinstance(spec, Corpus):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"corpus spec must be a str, a path or a Corpus, got {type(spec).__name__}"
        )
    text = os.fspath(spec)
    if not text.strip():  # Path("") is the working folder: never read it by accident
        raise ValueError(f"corpus spec {text!r} is empty; expected a text file, a folder, "
                         f"{STDLIB_DOCS!r}, {STDLIB_CODE!r} or 'hf:NAME[:CONFIG]'")
    if text == STDLIB_DOCS:
        return _stdlib_docs_corpus()
    if text == STDLIB_CODE:
        return _stdlib_code_corpus()
    if text.startswith("hf:"):
        return _hf_corpus(text)
    return _path_corpus(Path(text))


def is_builtin_corpus(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` names a built-in (standard library) or Hugging Face corpus
    rather than a path: its text follows the Python or the dataset version."""
    text = os.fspath(spec)
    return text in (STDLIB_DOCS, STDLIB_CODE) or text.startswith("hf:")


# --------------------------------------------------------------------------- files


def _hash_document(h: hashlib._Hash, doc: str) -> None:
    # Length-prefixed so that ["ab", "c"] and ["a", "bc"] hash differently.
    data = doc.encode("utf-8")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _decode_file(path: Path, data: bytes) -> str:
    """UTF-8 text of ``data`` (read from ``path``); ``ValueError`` naming the file
    and the byte offset for binary or non-UTF-8 content."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(
            f"corpus file {str(path)!r} looks binary: NUL byte at byte offset {nul}; "
            f"accepted are UTF-8 text files ({', '.join(SUPPORTED_EXTENSIONS)})"
        )
    try:
        # -sig: a byte-order mark (what Windows editors put first) is no text: it was
        # a character of the first document, and made a .jsonl file's line 1 invalid JSON
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus file {str(path)!r} is not valid UTF-8: byte 0x{data[err.start]:02x} "
            f"at byte offset {err.start} ({err.reason}); accepted is UTF-8 text"
        ) from None


def _jsonl_documents(path: Path, text: str) -> Iterator[str]:
    # lines end at "\n", "\r\n" or "\r" only: splitlines() also broke at U+2028, U+0085
    # ..., which JSON strings may hold unescaped (json.dumps(ensure_ascii=False) writes them)
    for lineno, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"corpus file {str(path)!r}, line {lineno}: invalid JSON ({err.msg}); "
                'expected one JSON object per line with a "text" field'
            ) from None
        where = f"corpus file {str(path)!r}, line {lineno}"
        if not isinstance(record, dict):
            raise ValueError(
                f'{where}: expected a JSON object with a string "text" field, got a JSON '
                f"{_json_type(record)}"
            )
        if "text" not in record:
            raise ValueError(
                f'{where}: the object has no "text" field (its keys: {sorted(record)}); expected a '
                f'string "text" field'
            )
        if not isinstance(record["text"], str):
            raise ValueError(
                f'{where}: key "text" holds a JSON {_json_type(record["text"])} '
                f"({json.dumps(record['text'])[:40]}); expected a string"
            )
        if record["text"].strip():
            yield record["text"]


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type (number, not int)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "array", str: "string"}.get(type(value), type(value).__name__)


def _file_documents(path: Path) -> Iterator[str]:
    text = _decode_file(path, path.read_bytes())
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_documents(path, text)
    elif text.strip():
        yield text


def _find_files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # Sorted in place so the walk order, and hence document order, is stable.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and fname.lower().endswith(SUPPORTED_EXTENSIONS):
                found.append(Path(dirpath) / fname)
    return found


def _path_corpus(path: Path) -> Corpus:
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {str(path)!r} does not exist; expected a text file, a folder, "
            f"{STDLIB_DOCS!r}, {STDLIB_CODE!r} or 'hf:NAME[:CONFIG]'"
        )
    if path.is_dir():
        files = _find_files(path)
        if not files:
            raise ValueError(
                f"corpus folder {str(path)!r} contains no supported files; accepted "
                f"extensions: {', '.join(SUPPORTED_EXTENSIONS)} (searched recursively)"
            )
    else:
        files = [path]

    # One validating pass: decodes every file (so bad bytes fail now, naming the
    # file), hashes the content and counts. The hash covers the bytes themselves,
    # not mtimes, so it changes exactly when the text does.
    h = hashlib.sha256()
    h.update(f"files-v{_EXTRACTION_VERSION}".encode())
    n_chars = n_docs = 0
    for f in files:
        docs = list(_file_documents(f))
        if not docs and len(files) == 1:
            raise ValueError(f"corpus file {str(f)!r} is empty (no non-blank text)")
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        for doc in docs:
            _hash_document(h, doc)
            n_chars += len(doc)
            n_docs += 1
    if n_docs == 0:
        raise ValueError(
            f"corpus folder {str(path)!r} is empty: its {len(files)} supported files "
            "hold no non-blank text"
        )

    def documents() -> Iterator[str]:
        for f in files:
            yield from _file_documents(f)

    return Corpus(str(path), documents, h.hexdigest(), n_chars=n_chars, n_documents=n_docs)


# -------------------------------------------------------------------------- stdlib


def stdlib_root() -> Path:
    """Folder of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith(".")
        )
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    if not files:
        raise FileNotFoundError(f"no standard-library sources (.py) found under {str(root)!r}")
    return files


def _stdlib_fingerprint(kind: str, root: Path, files: list[Path]) -> str:
    # Paths + sizes + mtimes: reading 12 MB only to hash it would cost more than
    # the stdlib ever changes; an upgraded interpreter changes sizes/mtimes.
    h = hashlib.sha256()
    h.update(f"{kind}-v{_EXTRACTION_VERSION}-{sys.version}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_source(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        # The stdlib is not user data: an unreadable file is skipped, not fatal.
        return None


def _module_docstrings(source: str) -> str:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                docs.append(doc.strip())
    return "\n\n".join(docs)


@functools.lru_cache(maxsize=2)
def _extract_stdlib_docs(fingerprint: str, files: tuple[Path, ...]) -> tuple[str, ...]:
    # Parsing every module takes ~2 s; the result (~1.8 MB) is kept per process,
    # keyed by the fingerprint, since a tokenizer run and a blocks run both iterate.
    out = []
    for f in files:
        source = _read_source(f)
        if source is None:
            continue
        doc = _module_docstrings(source)
        if doc:
            out.append(doc)
    return tuple(out)


def _stdlib_docs_corpus() -> Corpus:
    root = stdlib_root()
    files = _stdlib_files(root)
    fingerprint = _stdlib_fingerprint(STDLIB_DOCS, root, files)
    return Corpus(STDLIB_DOCS, lambda: iter(_extract_stdlib_docs(fingerprint, tuple(files))),
                  fingerprint)


def _stdlib_code_corpus() -> Corpus:
    root = stdlib_root()
    files = _stdlib_files(root)
    fingerprint = _stdlib_fingerprint(STDLIB_CODE, root, files)

    def documents() -> Iterator[str]:
        for f in files:
            source = _read_source(f)
            if source and source.strip():
                yield source

    return Corpus(STDLIB_CODE, documents, fingerprint)


# ---------------------------------------------------------------------- HF datasets


def _hf_corpus(spec: str) -> Corpus:
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and not parts[1]):
        raise ValueError(f"corpus spec {spec!r} is malformed; expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    name = parts[0]
    config = parts[1] if len(parts) == 2 else None
    what = f"Hugging Face dataset {name!r}" + (f" (config {config!r})" if config else "")
    try:
        import datasets  # optional dependency, imported only when asked for
    except ImportError as err:
        raise DatasetsMissingError(
            f"corpus {spec!r}: cannot load {what}: the `datasets` library is not "
            f"installed ({err}); install it with `pip install datasets`, or use a "
            f"local file/folder, {STDLIB_DOCS!r} or {STDLIB_CODE!r}"
        ) from err
    try:
        ds = datasets.load_dataset(name, config, split="train")
    except Exception as err:  # network, missing dataset, bad config: all user-facing
        raise DatasetLoadError(
            f"corpus {spec!r}: could not load the 'train' split of {what}: "
            f"{type(err).__name__}: {err} (offline? set HF_DATASETS_OFFLINE=1 only when "
            "the dataset is already in the local Hugging Face cache)"
        ) from err
    columns = list(getattr(ds, "column_names", []) or [])
    if "text" not in columns:
        raise ValueError(
            f"corpus {spec!r}: {what} has no 'text' column; its columns are {columns}"
        )

    def documents() -> Iterator[str]:
        for batch in ds.iter(batch_size=1000):
            for text in batch["text"]:
                if isinstance(text, str) and text.strip():
                    yield text

    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint:
        content_hash = hashlib.sha256(f"hf-v{_EXTRACTION_VERSION}:{spec}:{fingerprint}".encode())
        content_hash = content_hash.hexdigest()
    else:
        h = hashlib.sha256(f"hf-v{_EXTRACTION_VERSION}:{spec}".encode())
        for doc in documents():
            _hash_document(h, doc)
        content_hash = h.hexdigest()
    corpus = Corpus(spec, documents, content_hash)
    if not any(True for _ in documents()):
        raise ValueError(f"corpus {spec!r}: the 'train' split of {what} has no non-blank text")
    return corpus
