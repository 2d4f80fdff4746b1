"""Tokenizers: the three kinds trained, saved, loaded; special ids; continuation marks."""

import json

import numpy as np
import pytest
import torch
from tokenizers import models

from headwise.data import Corpus, Tokenizer, load_or_train_tokenizer, train_tokenizer
from headwise.data import tokenizer_training as tokmod

_WORDS = (
    "the attention layer computes every head at once and returns the concatenated outputs "
    "tokenizers split words into pieces while training learns which pieces are frequent "
    "masked language modelling fills in the blank replaced token detection finds corruption"
).split()


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    docs = []
    for d in range(60):
        sents = [" ".join(rng.choice(_WORDS, size=12)) + "." for _ in range(4)]
        docs.append(f"Document {d}: " + "\n".join(sents))
    return Corpus.from_texts(docs, name="toy")


@pytest.fixture(scope="module")
def trained(corpus):
    return {
        "wordpiece": train_tokenizer(corpus, "wordpiece", 300),
        "bpe": train_tokenizer(corpus, "bpe", 400),
        "char": train_tokenizer(corpus, "char", 1000),
    }


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "char"])
def test_save_load_round_trip(trained, tmp_path, kind):
    tok = trained[kind]
    path = tok.save(tmp_path / kind)
    assert path.name == "tokenizer.json" and json.loads(path.read_text())
    for source in (tmp_path / kind, path):  # a directory or the file itself
        again = Tokenizer.load(source)
        assert again.kind == kind
        assert again.vocab_size == tok.vocab_size
        assert again.to_json() == tok.to_json()
        text = "the attention heads split pieces."
        assert again.encode(text) == tok.encode(text)
        assert again.special_ids == tok.special_ids
        assert np.array_equal(again.is_continuation, tok.is_continuation)


def test_wordpiece_specials_and_text(trained):
    tok = trained["wordpiece"]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.eos_id == tok.sep_id and tok.special_ids == [0, 1, 2, 3, 4]
    assert tok.vocab_size <= 300 and tok.is_special.sum() == 5
    ids = tok.encode("The Attention layer")
    assert tok.decode(ids) == "the attention layer"  # BERT normalizer lowercases
    assert tok.encode("The layer", add_special_tokens=True) == [2, *tok.encode("the layer"), 3]
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids))
    # Special strings in text stay text unless asked for.
    assert tok.mask_id not in tok.encode("a [MASK] b")
    assert tok.mask_id in tok.encode("a [MASK] b", parse_special=True)
    assert tok.encode("Ünïcödé") == tok.encode("unicode")  # accents stripped with lowercase


def test_wordpiece_continuation_marks(trained):
    tok = trained["wordpiece"]
    vocab = tok.backend.get_vocab()
    assert tok.is_continuation.shape == (tok.vocab_size,) and tok.is_continuation.dtype == bool
    for token, idx in vocab.items():
        assert tok.is_continuation[idx] == token.startswith("##"), token
    assert tok.is_continuation.any()
    ids = tok.encode("tokenizerslayer")  # an unseen word splits into pieces
    assert len(ids) > 1
    assert not tok.is_continuation[ids[0]] and tok.is_continuation[ids[1:]].all()


def test_bpe_specials_lossless_and_continuation(trained):
    tok = trained["bpe"]
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert tok.mask_id is None and tok.cls_id is None and tok.sep_id is None
    assert tok.special_ids == [0, 1]
    text = "Heads  split\n\tthe ☃ naïve  layer <|endoftext|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # byte-level: exact, even for unseen characters
    assert tok.eos_id not in ids
    assert tok.encode("<|endoftext|>", parse_special=True) == [tok.eos_id]
    vocab = tok.backend.get_vocab()
    assert not tok.is_continuation[vocab["Ġthe"]]
    assert not tok.is_continuation[vocab["Ċ"]]
    assert tok.is_continuation[vocab["e"]]
    assert not tok.is_continuation[tok.special_ids].any()


def test_char_vocabulary(corpus, trained):
    tok = trained["char"]
    chars = set("".join(corpus))
    assert tok.vocab_size == 6 + len(chars)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.eos_id) == (
        0, 1, 2, 3, 4, 5,
    )
    text = "the layer\nheads."
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.encode("☃") == [tok.unk_id]
    assert not tok.is_continuation.any()
    capped = train_tokenizer(["aaaab bc"], "char", vocab_size=6 + 2)
    # counts a:4 b:2 c:1 ' ':1 -> room for two characters: 'a' and 'b'
    assert capped.vocab_size == 8 and capped.encode("abc") == [6, 7, 1]
    assert capped.decode(capped.encode("ab")) == "ab"


def test_encode_batch_matches_encode(trained):
    tok = trained["bpe"]
    texts = ["one head", "two heads\n", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_bpe_training_is_deterministic(corpus, trained):
    assert train_tokenizer(list(corpus), "bpe", 400).to_json() == trained["bpe"].to_json()


def test_wordpiece_ids_are_canonical(trained):
    # The trainer numbers pieces in hash-map order; the ids are renumbered so that
    # the same set of pieces always gets the same ids.
    tok = trained["wordpiece"]
    vocab = tok.backend.get_vocab(with_added_tokens=False)
    shuffled = list(vocab)
    np.random.default_rng(1).shuffle(shuffled)
    hf = Tokenizer.load_from_json(tok.to_json()).backend  # an independent copy
    hf.model = models.WordPiece(
        {t: i for i, t in enumerate(shuffled)}, unk_token="[UNK]", continuing_subword_prefix="##"
    )
    tokmod._canonical_wordpiece_ids(hf)
    assert hf.get_vocab(with_added_tokens=False) == vocab
    words = sorted((t for t in vocab if vocab[t] >= 5), key=vocab.get)
    lengths = [len(t.removeprefix("##")) for t in words]
    assert lengths == sorted(lengths)


def test_bad_arguments(corpus, tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        train_tokenizer(corpus, "unigram")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(corpus, "wordpiece", 0)
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(corpus, "bpe", 100)
    with pytest.raises(ValueError, match="no room"):
        train_tokenizer(corpus, "char", 6)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not be read"):
        Tokenizer.load(tmp_path / "bad")
    with pytest.raises(TypeError, match="text must be str"):
        train_tokenizer(["ab ab"], "char", 50).encode(b"ab")


def test_load_or_train_caches(corpus, tmp_path, monkeypatch):
    first = load_or_train_tokenizer(corpus, "wordpiece", 300, cache_dir=tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(tokmod, "train_tokenizer", boom)
    second = load_or_train_tokenizer(corpus, "wordpiece", 300, cache_dir=tmp_path)
    assert second.to_json() == first.to_json()
    with pytest.raises(AssertionError, match="trained again"):
        load_or_train_tokenizer(corpus, "wordpiece", 301, cache_dir=tmp_path)


def test_char_tokenizer_keeps_only_characters_seen_min_frequency_times():
    """was: train_tokenizer(texts, "char", min_frequency=3) kept characters seen once,
    without a word (min_frequency only ever reached the wordpiece and bpe trainers)."""
    texts = ["abc abd"] * 3 + ["xyz"]
    vocab = train_tokenizer(texts, "char", vocab_size=64, min_frequency=3).backend.get_vocab()
    assert {"a", "b", " "} <= set(vocab) and not {"x", "y", "z"} & set(vocab)
    assert "x" in train_tokenizer(texts, "char", vocab_size=64).backend.get_vocab()  # default: all kept
    with pytest.raises(ValueError, match=r"min_frequency=9: no character of the corpus occurs that often"):
        train_tokenizer(texts, "char", vocab_size=64, min_frequency=9)


def test_a_tokenizer_that_cannot_be_saved_for_want_of_room_names_its_file(tmp_path, monkeypatch):
    """was: '[Errno 28] No space left on device', naming no file (headwise train printed
    just that when its tokenizer cache's disk was full), and the partial temporary file stayed."""
    import errno
    from pathlib import Path

    tok = train_tokenizer(["abc abd"] * 3, "char", vocab_size=64)

    def full(self, *a, **k):
        self.open("w").close()  # the partial file a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*tokenizer\.json'"):
        tok.save(tmp_path / "t")
    assert list((tmp_path / "t").iterdir()) == []
