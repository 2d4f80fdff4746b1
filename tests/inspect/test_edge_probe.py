"""Edge cases of the inspect tools: odd text in the report page, awkward arguments."""

import json
import re

import pytest
import torch

from headwise.app.inspection import inspect_model
from headwise.data import train_tokenizer
from headwise.inspect.report import write_report
from headwise.models import Decoder, ModelConfig


def _blob(page: str) -> str:
    m = re.search(r'<script type="application/json" id="headwise-data">(.*?)</script>', page, re.S)
    assert m, "the data blob is missing"
    return m.group(1)


def test_report_data_with_html_comment_and_script_tokens_is_valid_json(tmp_path):
    # byte-level BPE keeps "<!--" and "</" as words: the page's JSON.parse must still read them
    text = "<!-- a comment --> and </script> <script> \"q\" & 'x' café"
    tok = train_tokenizer([text] * 5, "bpe", vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=64)).eval()
    result = inspect_model(model, [text], tok, induction=False, keep_examples=1)
    assert "<!--" in result.examples[0]["words"]
    page = write_report(result, tmp_path / "rep", figures=False, command="headwise inspect <!-- x")[
        "report.html"].read_text(encoding="utf-8")
    blob = _blob(page)
    assert "<!--" not in blob and "</" not in blob and "<script" not in blob
    view = json.loads(blob)  # as strict about escapes as the browser's JSON.parse
    assert view["examples"][0]["words"] == result.examples[0]["words"]
    assert view["command"] == "headwise inspect <!-- x"


def test_pruning_curve_with_a_step_that_does_not_divide_one_ends_at_every_head_removed(mlm):
    from headwise.inspect import capture, pruning_curve

    def zeroed_heads(model, batch):
        with capture(model, "z") as cap:
            model(batch)
        return float((cap.stack("z").abs().amax((1, 3, 4)) == 0).sum())

    data = [torch.randint(5, 120, (2, 8), generator=torch.Generator().manual_seed(0))]
    importance = torch.rand(2, 4, generator=torch.Generator().manual_seed(1))
    for step, fractions in ((0.35, [0.0, 0.35, 0.7, 1.0]), (0.3, [0.0, 0.3, 0.6, 0.9, 1.0]),
                            (0.6, [0.0, 0.6, 1.0])):
        curve = pruning_curve(mlm, importance, data, zeroed_heads, step=step, include_all=True)
        assert [f for f, _ in curve] == pytest.approx(fractions), step  # was 1.05 / no 1.0 / 1.2
        assert curve[-1][1] == 8.0  # the last point has all 8 heads ablated


def test_pre_split_words_get_the_byte_level_pieces_of_running_text():
    from headwise.inspect import align_words

    text = "The cat sat on the mat and the dog sat on the cat"
    tok = train_tokenizer([text] * 10, "bpe", vocab_size=300, min_frequency=1)
    words = text.split()
    ids, wids = align_words(words, tok)
    # the pieces a CLM model was trained on ('Ġcat'), not a word's middle ('cat')
    assert ids == tok.encode(text)
    assert [tok.decode([i]).strip() for i in ids] == words and wids == list(range(len(words)))


def test_conllu_with_a_unicode_line_separator_in_a_comment_and_a_word_parses():
    from headwise.inspect import parse_conllu

    rows = [["1", "a\u2028b", "a", "X", "_", "_", "2", "dep", "_", "_"],
            ["2", "c\x85d", "c", "X", "_", "_", "0", "root", "_", "_"]]
    text = "# text = a\u2028b c\x85d\n" + "\n".join("\t".join(r) for r in rows) + "\n\n"
    (sentence,) = parse_conllu(text)
    assert sentence.words == ["a\u2028b", "c\x85d"] and sentence.heads == [1, -1]
    assert sentence.meta["text"] == "a\u2028b c\x85d"
    assert len(parse_conllu(text.replace("\n", "\r\n"))) == len(parse_conllu(text.replace("\n", "\r"))) == 1


def test_pre_split_words_of_a_char_model_keep_the_spaces_of_running_text():
    from headwise.inspect import align_words

    text = "the cat sat on the mat"
    tok = train_tokenizer([text] * 3, "char", vocab_size=100)
    words = text.split()
    ids, wids = align_words(words, tok)
    assert ids == tok.encode(text)  # was 'thecatsat...': no space between the words
    # each space belongs to the word after it
    assert wids == [w for w, word in enumerate(words) for _ in range(len(word) + (w > 0))]


def test_raw_byte_level_tokenizer_gives_pre_split_words_the_pieces_of_running_text():
    from headwise.inspect import align_words

    text = "The cat sat on the mat and the dog sat on the cat"
    raw = train_tokenizer([text] * 10, "bpe", vocab_size=300, min_frequency=1).backend  # a tokenizers.Tokenizer
    ids, wids = align_words(text.split(), raw)
    assert ids == raw.encode(text).ids  # not 'cat' for 'Ġcat'
    assert wids == list(range(len(text.split())))


def test_syntax_probe_of_a_sentence_whose_last_word_gets_no_piece(tmp_path):
    """was: 'shape mismatch' setting the gold heads: the pooling counted the words up to
    the last one with a piece, while the gold tree has them all (a zero-width space as the
    last word: WordPiece's normaliser leaves nothing of it)."""
    from headwise.models import EncoderForMLM

    rows = [["1", "the", "_", "DET", "_", "_", "2", "det", "_", "_"],
            ["2", "cat", "_", "NOUN", "_", "_", "3", "nsubj", "_", "_"],
            ["3", "sat", "_", "VERB", "_", "_", "0", "root", "_", "_"],
            ["4", "\u200b", "_", "PUNCT", "_", "_", "3", "punct", "_", "_"]]
    path = tmp_path / "t.conllu"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n\n", encoding="utf-8")
    tok = train_tokenizer(["the cat sat on the mat"] * 20, "wordpiece", vocab_size=200, min_frequency=1)
    assert tok.encode_words(["sat", "\u200b"], add_special_tokens=False).word_ids == [0]
    torch.manual_seed(0)
    model = EncoderForMLM(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2,
                                      max_len=32)).eval()
    result = inspect_model(model, path, tok, induction=False)
    counts = dict(zip(result.probe.relations, result.probe.counts.tolist(), strict=True))
    # the words with pieces are scored; the one without (and the arc to it) is not
    assert counts["det"] == counts["nsubj"] == 1 and counts.get("punct", 0) == 0


def test_a_report_that_cannot_be_written_for_want_of_room_names_its_file(tmp_path, monkeypatch):
    """was: '[Errno 27] File too large', naming neither measures.json nor report.html."""
    import errno
    from pathlib import Path

    tok = train_tokenizer(["the cat sat on the mat"] * 5, "char", vocab_size=64)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=64)).eval()
    result = inspect_model(model, ["the cat sat on the mat"], tok, induction=False)

    def too_large(self, *a, **k):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(Path, "write_text", too_large)
    with pytest.raises(OSError, match=r"File too large: '.*measures\.json'"):
        write_report(result, tmp_path / "rep", figures=False)
