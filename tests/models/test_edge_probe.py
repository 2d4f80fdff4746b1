"""Edge cases of the models and their objectives: batches with nothing to score,
sampling at extreme temperatures, configs the Hugging Face twins must agree on."""

import json
import math

import pytest
import torch

from headwise.models import EncoderForRTD, ModelConfig, build_electra
from headwise.objectives import ReplacedTokenDetection

V, PAD, CLS, SEP, MASK = 100, 0, 1, 2, 3


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32), **kw})


@pytest.mark.parametrize("mode", ["model", "uniform"])
def test_rtd_on_an_all_padding_batch_is_a_zero_loss_not_nan(mode):
    torch.manual_seed(0)
    if mode == "model":
        gen, disc = build_electra(tiny())
    else:
        gen, disc = "uniform", EncoderForRTD(tiny())
    objective = ReplacedTokenDetection(disc, gen, vocab_size=V, mask_id=MASK, pad_id=PAD, special_ids=[CLS, SEP])
    out = objective(torch.full((2, 16), PAD), torch.Generator().manual_seed(0))
    assert out.loss.item() == 0.0 and out.metrics["disc_loss"] == 0.0
    out.loss.backward()  # still connected to the graph, and no NaN reaches a gradient
    grads = [p.grad for p in objective.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(math.isfinite(v) for v in out.metrics.values())


def test_generator_sampling_at_a_tiny_temperature_is_the_argmax_not_the_last_token():
    from headwise.objectives.rtd import sample_rows

    # logits / 1e-40 overflow float32 to +-inf; inf - inf was nan, and the search then
    # returned the last id (here the least likely token but one)
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [-5.0, -3.0, -4.0, -6.0]]).repeat(4, 1)
    for temperature in (1e-30, 1e-40, 1e-45):
        picked = sample_rows(logits, temperature, torch.Generator().manual_seed(0))
        assert picked.tolist() == [1] * 8


def test_generator_sampling_at_a_subnormal_temperature_holds_where_denormals_are_flushed():
    from headwise.objectives.rtd import sample_rows

    # the trainer flushes denormals on the CPU; 1e-45 then divides as 0 and 0 / 0 was nan
    # for the best token, so the search drew the last id (CI ran this after a training test)
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0], [-5.0, -3.0, -4.0, -6.0]]).repeat(4, 1)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals, so the case cannot arise here")
    try:
        picked = sample_rows(logits, 1e-45, torch.Generator().manual_seed(0))
    finally:
        torch.set_flush_denormal(False)
    assert picked.tolist() == [1] * 8


def test_jsonl_corpus_text_holding_unicode_line_separators_is_one_document(tmp_path):
    from headwise.data import load_corpus

    texts = ["first\u2028second line", "next \x85 line", "para\u2029graph", "plain"]
    path = tmp_path / "docs.jsonl"
    # ensure_ascii=False writes U+2028, U+2029 and U+0085 raw, as JSON allows
    path.write_text("\r\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n",
                    encoding="utf-8")
    assert list(load_corpus(path)) == texts


def test_hf_byte_level_tokenizer_gives_pre_split_words_the_pieces_of_running_text():
    transformers = pytest.importorskip("transformers")
    from headwise.data import train_tokenizer
    from headwise.models.hf import HFTokenizer

    text = "The cat sat on the mat and the dog sat on the cat"
    raw = train_tokenizer([text] * 10, "bpe", vocab_size=300, min_frequency=1).backend
    tok = HFTokenizer(transformers.GPT2TokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>"))
    pieces = tok.encode_words(text.split(), add_special_tokens=False)
    # transformers 5 encodes pre-split words without their space ('cat', not 'Ġcat')
    assert pieces.ids == tok.encode(text)
    assert pieces.word_ids == list(range(len(text.split())))
