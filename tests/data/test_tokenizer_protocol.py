"""headwise.data.Tokenizer satisfies headwise.protocols.Tokenizer, and its word pieces
keep corpus text from turning into control tokens."""

import pytest

from headwise.data import Corpus, train_tokenizer
from headwise.protocols import Tokenizer as TokenizerProtocol

TEXTS = [
    "heads attend to the previous token. the model copies names it saw before.",
    "a head attends, another head copies; the previous word matters [MASK] here.",
] * 20


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "char"])
def tok(request):
    return train_tokenizer(Corpus.from_texts(TEXTS, name="toy"), request.param, 400, min_frequency=1)


def test_every_kind_satisfies_the_protocol(tok):
    assert isinstance(tok, TokenizerProtocol)
    assert tok.bos_id is None
    assert tok.pad_id == 0 and tok.special_ids[0] == 0


def test_encode_words_maps_each_piece_to_its_word(tok):
    words = ["heads", "attend", "[MASK]"]
    pieces = tok.encode_words(words, add_special_tokens=False)
    assert pieces.offsets is None
    assert len(pieces.ids) == len(pieces.word_ids) and set(pieces.word_ids) == {0, 1, 2}
    assert tok.mask_id is None or tok.mask_id not in pieces.ids  # "[MASK]" stays text
    for w, word in enumerate(words):
        mine = [i for i, x in zip(pieces.ids, pieces.word_ids, strict=True) if x == w]
        want = word.lower() if tok.kind == "wordpiece" else word  # BERT's normaliser lowercases
        assert tok.decode(mine).replace(" ", "").replace("##", "") == want


def test_encode_text_gives_offsets_and_marks_specials(tok):
    text = "heads attend."
    pieces = tok.encode_text(text)
    assert len(pieces.offsets) == len(pieces.ids) == len(pieces.word_ids)
    if tok.kind == "wordpiece":  # [CLS] ... [SEP]
        assert pieces.word_ids[0] is None and pieces.word_ids[-1] is None
        assert pieces.ids[0] == tok.cls_id and pieces.ids[-1] == tok.sep_id
    spans = [text[a:b] for (a, b), w in zip(pieces.offsets, pieces.word_ids, strict=True) if w is not None]
    assert "".join(spans).replace(" ", "") == text.replace(" ", "")
