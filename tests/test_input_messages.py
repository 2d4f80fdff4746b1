"""Messages for bad input that name what was wrong, and settings that are never
adjusted silently: JSONL records, a too-small vocabulary, unknown model fields, the
block length against max_len, prompt characters outside the vocabulary, devices."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from headwise.cli import main
from headwise.data import load_corpus, train_tokenizer
from headwise.devices import resolve_device
from headwise.models import get_preset
from headwise.train.build import model_config_for
from headwise.train.config import TrainConfig


@pytest.mark.parametrize("record,needles", [
    ({"text": 123}, ['key "text"', "JSON number", "123", "expected a string"]),
    ({"text": None}, ['key "text"', "JSON null"]),
    ({"text": ["a", "b"]}, ['key "text"', "JSON array"]),
    ({"body": "x"}, ['no "text" field', "['body']"]),
    ([1, 2], ["got a JSON array"]),
])
def test_jsonl_record_errors_name_file_line_key_and_type(tmp_path, record, needles):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError) as e:
        list(load_corpus(str(f)).documents())
    msg = str(e.value)
    assert "c.jsonl" in msg and "line 3" in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_wordpiece_never_returns_more_tokens_than_asked():
    texts = ["the quick brown fox jumps over the lazy dog"] * 5
    with pytest.raises(ValueError, match=r"vocab_size=10 is too small .* use vocab_size >= \d+"):
        train_tokenizer(texts, "wordpiece", 10)
    with pytest.raises(ValueError, match="at least 6"):
        train_tokenizer(texts, "wordpiece", 3)
    tok = train_tokenizer(texts, "wordpiece", 60, min_frequency=1)
    assert tok.vocab_size <= 60


def test_unknown_characters():
    char = train_tokenizer(["hello world"] * 3, "char", 100)
    assert char.unknown_characters("hello Zoë!") == ["Z", "ë", "!"]
    assert char.unknown_characters("hello") == [] and char.unknown_characters("") == []
    wp = train_tokenizer(["hello world"] * 3, "wordpiece", 100, min_frequency=1)
    assert wp.unknown_characters("hello wzrld") == ["z"]  # (accents are stripped: "ö" is "o")
    assert wp.unknown_characters("wörld") == []
    bpe = train_tokenizer(["hello world"] * 3, "bpe", 300)
    assert bpe.unknown_characters("日本") == []  # byte-level: nothing is unknown


def test_generate_warns_about_prompt_characters_outside_the_vocabulary(tmp_path, monkeypatch, capsys):
    import headwise.app.train_command as reader

    tok = train_tokenizer(["hello world"] * 3, "char", 100)

    class Model:
        def positions_left(self, prompt_len):
            return None  # rotary: no bound

        def generate(self, x, n, **kw):
            return x

    fake = SimpleNamespace(cfg=SimpleNamespace(objective="clm"), tokenizer=tok,
                           objective=SimpleNamespace(model=Model()))
    monkeypatch.setattr(reader, "load_run", lambda *a, **kw: fake)
    (tmp_path / "run.json").write_text("{}")
    assert main(["generate", str(tmp_path), "--prompt", "hello Zürich", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "[UNK]" in err
    for c in ("'Z'", "'ü'", "'c'"):
        assert c in err
    assert main(["generate", str(tmp_path), "--prompt", "hello", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_unknown_model_fields_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['nonsense'\]; the fields are: .*d_model"):
        get_preset("tiny", nonsense=1)
    cfg = TrainConfig(model={"nonsense": 1, "d_model": 64})
    with pytest.raises(ValueError, match=r"--model: unknown field\(s\) nonsense; the fields are: .*n_heads"):
        model_config_for(cfg, 100)


@pytest.mark.parametrize("model,objective,block_len,needles", [
    ({}, "mlm", 129, ["--block-len 129", "the max_len 128 of preset 'tiny'", "--block-len <= 128"]),
    ({"max_len": 32}, "mlm", 64, ["--block-len 64", "--model max_len=32", "--block-len <= 32"]),
    ({"max_len": 32}, "clm", 64, ["--model max_len=32", "feeds 63", "--block-len <= 33"]),
])
def test_block_len_message_says_where_max_len_came_from(model, objective, block_len, needles):
    cfg = TrainConfig(objective=objective, model=model, block_len=block_len)
    with pytest.raises(ValueError) as e:
        model_config_for(cfg, 300)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert "preset" not in str(e.value) or not model


def test_clm_block_of_max_len_plus_one_is_fine():
    cfg = TrainConfig(objective="clm", block_len=129)
    assert model_config_for(cfg, 300).max_len == 128


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, why in (("banana", "unknown device type"), ("cuda:x", "unknown device type"), ("", "unknown")):
        with pytest.raises(ValueError, match=why) as e:
            resolve_device(bad, what="--device")
        assert f"--device {bad!r}" in str(e.value) and "accepted: auto, cpu" in str(e.value)
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match="CUDA is not available" if n == 0 else "out of range"):
        resolve_device(f"cuda:{n}")
    with pytest.raises(ValueError, match="not supported here"):
        resolve_device("meta")
