"""TrainConfig refuses every real setting that is NaN, infinite or out of range, naming
it: from the library as from a run.json edited by hand (the CLI's flag types refuse
them before a TrainConfig is made). Before, ``TrainConfig(grad_clip=-1.0)`` trained by
gradient ascent (clip_grad_norm_ scaled the gradients by -1/norm), ``grad_clip=0`` not
at all, and NaN learning rates or time limits passed ``<= 0``."""

import json
import math

import pytest
from tiny_runs import tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import TrainConfig


@pytest.mark.parametrize("field,value", [
    ("lr", math.nan), ("lr", math.inf),
    ("grad_clip", -1.0), ("grad_clip", 0.0), ("grad_clip", math.nan),
    ("weight_decay", -0.1), ("weight_decay", math.inf),
    ("max_time", math.nan), ("max_time", math.inf),
    ("rtd_disc_weight", math.nan), ("rtd_disc_weight", 0.0),
    ("dropout", 1.5), ("dropout", math.nan),
    ("betas", (2.0, 0.9)), ("betas", (0.9,)), ("betas", (0.9, math.nan)),
    ("warmup", 1.5),
])
def test_a_bad_real_setting_is_refused_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        TrainConfig(**{field: value})


def test_good_values_still_pass():
    cfg = TrainConfig(lr=1, grad_clip=0.5, weight_decay=0, dropout=0.0, betas=[0.9, 0.99], max_time=0.5, warmup=0)
    assert cfg.betas == (0.9, 0.99)


def test_a_hand_edited_run_json_is_refused_on_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    run.mkdir()
    tiny_cfg(write_corpus(tmp_path / "corpus.txt"), run).to_json(run / "run.json")
    saved = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**saved, "grad_clip": -1.0}))
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "run.json: grad_clip must be a finite float > 0, got -1.0" in err and "Traceback" not in err


@pytest.mark.parametrize("objective,block_len,shortest", [("mlm", 2, 3), ("rtd", 1, 3), ("clm", 1, 2)])
def test_a_block_too_short_is_refused_naming_the_flag_before_the_tokenizer_is_trained(
        tmp_path, capsys, monkeypatch, objective, block_len, shortest):
    """It was "block_len must be an int >= 3 for style='encoder'", raised only once the
    tokenizer had been trained on the whole corpus."""
    import headwise.train.build as build

    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "load_or_train_tokenizer", lambda *a, **k: pytest.fail("trained a tokenizer"))
    corpus = write_corpus(tmp_path / "corpus.txt")
    argv = tiny_cli_args(corpus, tmp_path / "run", "--objective", objective, "--block-len", str(block_len),
                         "--no-report", "--tokenizer-kind", "char")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--block-len {block_len} is too short for --objective {objective}" in err
    assert f"use --block-len {shortest} or more" in err
    assert not (tmp_path / "run").exists()
