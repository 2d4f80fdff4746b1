"""Pieces <-> words: alignment with both tokenizer kinds, and Clark et al.'s pooling."""

import pytest
import torch

from headwise.inspect import (
    RawTokenizerPieces,
    align_text,
    align_words,
    as_tokenizer,
    batch_pooling,
    induction_bos_id,
    is_punctuation,
    pad_id,
    pooling_matrices,
    token_strings,
    word_level,
    word_units,
)
from headwise.models.hf import HFTokenizer

# [CLS] un ##aff [SEP]-style: word 0 has two pieces, word 1 one.
WIDS = [None, 0, 0, 1, None]
A = torch.tensor(
    [
        [0.20, 0.20, 0.20, 0.20, 0.20],
        [0.10, 0.30, 0.20, 0.40, 0.00],
        [0.50, 0.10, 0.10, 0.10, 0.20],
        [0.00, 0.60, 0.00, 0.40, 0.00],
        [0.25, 0.25, 0.25, 0.25, 0.00],
    ],
    dtype=torch.float64,
)


def test_word_level_hand_example_keeps_specials_as_units():
    # to a word: sum over its pieces' columns; from a word: mean over its pieces' rows
    expected = torch.tensor(
        [
            [0.20, 0.40, 0.20, 0.20],  # [CLS]
            [0.30, 0.35, 0.25, 0.10],  # word 0 = mean of rows 1, 2 after summing cols 1+2
            [0.00, 0.60, 0.40, 0.00],  # word 1
            [0.25, 0.50, 0.25, 0.00],  # [SEP]
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(word_level(A, WIDS), expected)
    torch.testing.assert_close(word_level(A, WIDS).sum(-1), torch.ones(4, dtype=torch.float64))
    assert word_units(WIDS) == [None, 0, 1, None]


def test_word_level_drop_specials_loses_their_mass():
    got = word_level(A, WIDS, specials="drop")
    torch.testing.assert_close(got, torch.tensor([[0.35, 0.25], [0.60, 0.40]], dtype=torch.float64))
    assert word_units(WIDS, "drop") == [0, 1]


def test_rows_sum_to_one_for_random_maps_and_batched_dims():
    g = torch.Generator().manual_seed(0)
    wids = [None, 0, 1, 1, 1, 2, 3, 3, None]
    a = torch.rand(2, 3, 9, 9, generator=g).softmax(-1)
    w = word_level(a, wids)
    assert w.shape == (2, 3, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    # pooling matrices: from @ to = identity on units (each unit's mean of its own indicator)
    f, t, units = pooling_matrices(wids)
    torch.testing.assert_close(f @ t, torch.eye(len(units)))


def test_batch_pooling_matches_word_level_per_sentence():
    g = torch.Generator().manual_seed(1)
    batch = [[None, 0, 0, 1, None], [None, 0, 1, 2, 2, 2, None]]
    t = 7
    a = torch.rand(2, 3, t, t, generator=g).softmax(-1)
    frm, to, valid = batch_pooling(batch, t)
    pooled = frm[:, None] @ a @ to[:, None]
    assert valid.tolist() == [[True, True, False], [True, True, True]]
    for i, wids in enumerate(batch):
        n, k = len(wids), 1 + max(w for w in wids if w is not None)
        ref = word_level(a[i, :, :n, :n], wids, specials="drop")
        torch.testing.assert_close(pooled[i, :, :k, :k], ref)


def test_align_words_headwise_wordpiece(wordpiece):
    words = ["Unaffable", "dogs", "."]
    ids, wids = align_words(words, wordpiece)
    assert len(ids) == len(wids)
    assert wids[0] is None and wids[-1] is None  # [CLS] ... [SEP]
    assert ids[0] == wordpiece.cls_id and ids[-1] == wordpiece.sep_id
    assert [w for w in wids if w is not None] == sorted(w for w in wids if w is not None)
    for k, word in enumerate(words):
        pieces = [i for i, w in zip(ids, wids, strict=True) if w == k]
        assert len(pieces) >= 1
        assert wordpiece.decode(pieces).replace(" ", "") == word.lower()
    assert len([w for w in wids if w == 0]) > 1  # the rare word is split
    ids2, wids2 = align_words(words, wordpiece, add_special_tokens=False)
    assert None not in wids2 and ids2 == ids[1:-1]


def test_align_words_headwise_never_parses_special_strings(wordpiece):
    ids, wids = align_words(["[MASK]", "dog"], wordpiece)
    assert wordpiece.mask_id not in ids
    assert wids.count(None) == 2


def test_align_words_hugging_face_tokenizer(minilm_tokenizer):
    words = ["Unaffable", "people", "jump", "."]
    ids, wids = align_words(words, minilm_tokenizer)
    ref = minilm_tokenizer(words, is_split_into_words=True)
    assert ids == ref["input_ids"] and wids == ref.word_ids()
    assert wids[0] is None and wids[-1] is None
    assert wids.count(0) > 1
    toks = minilm_tokenizer.convert_ids_to_tokens([i for i, w in zip(ids, wids, strict=True) if w == 0])
    assert "".join(t.removeprefix("##") for t in toks) == "unaffable"


def test_align_text_recovers_words(wordpiece, minilm_tokenizer):
    for tok in (wordpiece, minilm_tokenizer):
        a = align_text("Unaffable dogs, never.", tok)
        assert a.words == ["Unaffable", "dogs", ",", "never", "."]
        assert len(a.input_ids) == len(a.word_ids)
        assert {w for w in a.word_ids if w is not None} == set(range(5))


def test_is_punctuation_and_errors():
    assert is_punctuation(",") and is_punctuation("...") and is_punctuation("$")
    assert not is_punctuation("dog") and not is_punctuation("U.S.") and not is_punctuation("")
    with pytest.raises(ValueError, match="word_ids has 3 entries"):
        word_level(A, [None, 0, None])
    with pytest.raises(ValueError, match="specials must be"):
        word_units(WIDS, "merge")
    with pytest.raises(TypeError, match="words must be a sequence"):
        align_words("a sentence", object())
    with pytest.raises(TypeError, match="tokenizer must be"):
        align_words(["a"], object())
    with pytest.raises(ValueError, match=r"words\[1\]"):
        align_words(["a", ""], object())


class _NoWordIds:
    """A Hugging Face-like tokenizer that refuses pre-split words (as GPT-2's does
    without add_prefix_space): align_words encodes word by word instead."""

    def __init__(self, wp):
        self.wp = wp

    def __call__(self, *a, **kw):
        raise ValueError("You need to instantiate with add_prefix_space=True to use it with pretokenized inputs")

    def convert_ids_to_tokens(self, ids):
        return [self.wp.id_to_token(i) for i in ids]

    def encode(self, text, add_special_tokens=False):
        return self.wp.encode(text.strip())

    def build_inputs_with_special_tokens(self, ids):
        return [self.wp.cls_id, *ids, self.wp.sep_id]


def test_align_words_falls_back_to_word_by_word(wordpiece):
    words = ["Unaffable", "dogs", "."]
    assert align_words(words, _NoWordIds(wordpiece)) == align_words(words, wordpiece)
    ids, wids = align_words(words, _NoWordIds(wordpiece), add_special_tokens=False)
    assert None not in wids and wids[-1] == 2


def test_every_accepted_tokenizer_goes_behind_the_protocol(wordpiece):
    """A headwise Tokenizer passes as it is; a raw tokenizers.Tokenizer reads the same
    pieces but has no special ids of its own (padding 0, no induction start token)."""
    assert as_tokenizer(wordpiece) is wordpiece
    raw = as_tokenizer(wordpiece.backend)
    assert isinstance(raw, RawTokenizerPieces) and as_tokenizer(raw) is raw
    words = ["Unaffable", "dogs", "."]
    assert align_words(words, wordpiece.backend) == align_words(words, wordpiece)
    assert align_text("Unaffable dogs.", wordpiece.backend) == align_text("Unaffable dogs.", wordpiece)
    assert (pad_id(wordpiece.backend), induction_bos_id(wordpiece.backend)) == (0, None)
    assert (pad_id(wordpiece), induction_bos_id(wordpiece)) == (wordpiece.pad_id, wordpiece.cls_id)
    ids, _ = align_words(words, wordpiece)
    assert token_strings(wordpiece.backend, ids) == token_strings(wordpiece, ids)
    assert token_strings(wordpiece, ids)[0] == "[CLS]"
    with pytest.raises(TypeError, match="tokenizer must be"):
        as_tokenizer(object())


def test_a_transformers_tokenizer_is_wrapped_as_hf_tokenizer(minilm_tokenizer):
    wrapped = as_tokenizer(minilm_tokenizer.hf)
    assert isinstance(wrapped, HFTokenizer) and as_tokenizer(minilm_tokenizer) is minilm_tokenizer
    words = ["Unaffable", "dogs", "."]
    assert align_words(words, minilm_tokenizer.hf) == align_words(words, minilm_tokenizer)
    assert induction_bos_id(minilm_tokenizer.hf) == minilm_tokenizer.cls_id
    assert pad_id(minilm_tokenizer.hf) == minilm_tokenizer.pad_id
