"""headwise.models.hf.HFTokenizer: a transformers tokenizer behind the Tokenizer protocol."""

import pytest

from headwise.models.hf import HFTokenizer, load_tokenizer
from headwise.protocols import Tokenizer as TokenizerProtocol

transformers = pytest.importorskip("transformers")

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "head", "##s", "attend", ",", "."]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert_vocab")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return load_tokenizer(folder)


def test_loaded_tokenizer_satisfies_the_protocol(tok):
    assert type(tok) is HFTokenizer and isinstance(tok, TokenizerProtocol)
    assert (tok.vocab_size, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (len(WORDS), 0, 2, 3, 4)
    assert tok.special_ids == [0, 1, 2, 3, 4]
    assert tok.token_to_id("attend") == 7 and tok.token_to_id("nowhere") is None
    assert tok.id_to_token(6) == "##s" and tok.id_to_token(len(WORDS)) is None


def test_encode_adds_specials_only_when_asked(tok):
    assert tok.encode("heads attend") == [5, 6, 7]
    assert tok.encode("heads attend", add_special_tokens=True) == [2, 5, 6, 7, 3]
    assert tok.encode_batch(["heads", "attend ."]) == [[5, 6], [7, 9]]
    assert tok.decode([2, 5, 6, 7, 3]) == "heads attend"
    assert tok("heads attend")["input_ids"] == [2, 5, 6, 7, 3]  # calling it calls transformers


def test_word_pieces(tok):
    words = tok.encode_words(["heads", "attend"])
    assert (words.ids, words.word_ids, words.offsets) == ([2, 5, 6, 7, 3], [None, 0, 0, 1, None], None)
    text = tok.encode_text("heads, attend")
    assert text.ids == [2, 5, 6, 8, 7, 3] and text.word_ids == [None, 0, 0, 1, 2, None]
    assert text.offsets[1:-1] == [(0, 4), (4, 5), (5, 6), (7, 13)]


def test_save_writes_a_folder_transformers_reads(tok, tmp_path):
    assert tok.save(tmp_path / "out") == tmp_path / "out"
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)
    assert again("heads attend")["input_ids"] == [2, 5, 6, 7, 3]
