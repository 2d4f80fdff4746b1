"""Corpus sources: files, folders, jsonl, stdlib, hf (without network), bad corpora."""

import json
import os
import sys
import types

import pytest

from headwise.data import STDLIB_CODE, STDLIB_DOCS, Corpus, load_corpus
from headwise.data.corpus import _stdlib_files, stdlib_root


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_text_file_is_one_document(tmp_path):
    text = "First paragraph.\n\nSecond paragraph, naïve café.\n"
    c = load_corpus(_write(tmp_path / "a.txt", text))
    assert list(c) == [text]
    assert list(c) == [text]  # re-iterable
    assert c.n_chars == len(text) and c.n_documents == 1
    assert c.name == str(tmp_path / "a.txt")


def test_folder_recursive_sorted_and_filtered(tmp_path):
    _write(tmp_path / "b.md", "# Bee\ntext b")
    _write(tmp_path / "a.txt", "text a")
    _write(tmp_path / "sub" / "c.jsonl", '{"text": "line one"}\n\n{"text": "line two", "id": 3}\n')
    _write(tmp_path / "sub" / "skip.py", "print('not a corpus file')")
    _write(tmp_path / ".hidden" / "h.txt", "hidden")
    _write(tmp_path / "empty.txt", "   \n")  # empty files inside a folder are skipped
    c = load_corpus(str(tmp_path))
    assert list(c) == ["text a", "# Bee\ntext b", "line one", "line two"]
    assert c.n_documents == 4


def test_hash_stable_and_content_sensitive(tmp_path):
    f = _write(tmp_path / "a.txt", "hello world")
    h1 = load_corpus(f).content_hash
    assert load_corpus(f).content_hash == h1
    st = os.stat(f)
    _write(f, "hello World")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime
    assert load_corpus(f).content_hash != h1


def test_from_texts():
    c = Corpus.from_texts(["a b", "", "c"], name="mem")
    assert list(c) == ["a b", "c"] and c.name == "mem"
    assert c.content_hash != Corpus.from_texts(["a", "b c"]).content_hash
    with pytest.raises(ValueError, match="empty"):
        Corpus.from_texts(["", " "])


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(tmp_path / "nope.txt")


def test_empty_file(tmp_path):
    f = _write(tmp_path / "empty.txt", " \n\n")
    with pytest.raises(ValueError, match=r"empty\.txt.*empty"):
        load_corpus(f)


def test_folder_of_empty_files(tmp_path):
    _write(tmp_path / "e1.txt", "")
    _write(tmp_path / "e2.md", "\n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path)


def test_binary_file_names_file_and_offset(tmp_path):
    _write(tmp_path / "d" / "bin.txt", b"abc\x00\x01\x02")
    with pytest.raises(ValueError, match=r"bin\.txt.*byte offset 3"):
        load_corpus(tmp_path / "d")


def test_non_utf8_names_file_and_offset(tmp_path):
    f = _write(tmp_path / "latin.txt", "caf\u00e9 au lait", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin\.txt.*UTF-8.*byte offset 3"):
        load_corpus(f)


def test_folder_without_supported_files(tmp_path):
    _write(tmp_path / "x.py", "pass")
    _write(tmp_path / "y.csv", "a,b")
    with pytest.raises(ValueError, match=r"no supported files.*\.txt"):
        load_corpus(tmp_path)


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl.*line 2.*invalid JSON"):
        load_corpus(f)
    g = _write(tmp_path / "notext.jsonl", json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"notext\.jsonl.*line 1.*\"text\""):
        load_corpus(g)


def test_bad_spec_type():
    with pytest.raises(TypeError, match="corpus spec"):
        load_corpus(42)


def test_stdlib_files_exclude_test_suites():
    root = stdlib_root()
    rel = [f.relative_to(root).parts for f in _stdlib_files(root)]
    assert len(rel) > 300
    for parts in rel:
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts[:-1])
    assert ("argparse.py",) in rel


def test_stdlib_docs_size_and_determinism():
    c1, c2 = load_corpus(STDLIB_DOCS), load_corpus(STDLIB_DOCS)
    assert c1.content_hash == c2.content_hash
    assert c1.content_hash != load_corpus(STDLIB_CODE).content_hash
    docs = list(c1)
    assert docs == list(c2)
    assert 1_000_000 < c1.n_chars < 4_000_000  # ~1.8 MB on CPython 3.11
    assert len(docs) > 300
    assert sum("Return" in d for d in docs) > 100  # English prose, not code
    assert not any(d.lstrip().startswith(("def ", "import ")) for d in docs)


def test_stdlib_code_size():
    c = load_corpus(STDLIB_CODE)
    assert 6_000_000 < c.n_chars < 30_000_000  # ~12 MB on CPython 3.11
    first = next(iter(c))
    assert isinstance(first, str) and first.strip()


def test_hf_without_datasets_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"'wikitext'.*datasets.*not installed"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


def _fake_datasets(load_dataset):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    return mod


def test_hf_offline_is_clear(monkeypatch):
    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load_dataset))
    with pytest.raises(RuntimeError, match=r"'train' split.*'wikitext'.*wikitext-2.*reach"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


def test_hf_loads_train_text_column(monkeypatch):
    calls = []

    class FakeDataset:
        column_names = ["text"]
        _fingerprint = "abc123"

        def iter(self, batch_size):
            yield {"text": ["one", "", "two"]}
            yield {"text": ["three"]}

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset()

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load_dataset))
    c = load_corpus("hf:tiny")
    assert list(c) == ["one", "two", "three"]
    assert calls[0] == ("tiny", None, "train")
    FakeDataset.column_names = ["content"]
    with pytest.raises(ValueError, match=r"no 'text' column.*content"):
        load_corpus("hf:tiny")
    with pytest.raises(ValueError, match="malformed"):
        load_corpus("hf:")


def test_tinyshakespeare(shared_data):
    c = load_corpus(os.path.join(shared_data, "tinyshakespeare.txt"))
    assert c.n_documents == 1 and c.n_chars > 1_000_000
    assert next(iter(c)).startswith("First Citizen")


def test_a_byte_order_mark_is_not_text_of_the_corpus(tmp_path):
    """was: a .txt file's BOM (U+FEFF) became the first character of its document (a
    token of its own to a char tokenizer), and a .jsonl file's made line 1 'invalid JSON'."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.txt").write_bytes(bom + b"first line\nsecond")
    (tmp_path / "b.jsonl").write_bytes(bom + b'{"text": "one"}\n{"text": "two"}\n')
    assert list(load_corpus(tmp_path / "a.txt")) == ["first line\nsecond"]
    assert list(load_corpus(tmp_path / "b.jsonl")) == ["one", "two"]
