"""--eval-batches above what the validation split holds is said, not capped without a word."""

from __future__ import annotations

import pytest
from tests.helpers.tiny_runs import tiny_cli_args, write_corpus

from headwise.cli import main


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt", docs=60)


def _run(corpus, out, eval_batches: str, capsys) -> str:
    args = [a for a in tiny_cli_args(corpus, out, "--steps", "4", "--no-report", "--eval-batches", eval_batches)
            if a != "--quiet"]
    assert main(args) == 0
    return capsys.readouterr().out


def test_more_eval_batches_than_the_split_holds_is_said(corpus, tmp_path, capsys):
    from headwise.train import TrainConfig, Trainer

    out = _run(corpus, tmp_path / "big", "100000", capsys)
    cfg = TrainConfig.from_json(tmp_path / "big" / "run.json")
    n_blocks = len(Trainer(cfg, resume=True, progress=False).parts.val)
    n_batches = -(-n_blocks // cfg.batch_size)
    assert (f"evaluation: all {n_batches:,} batches of the validation split ({n_blocks:,} blocks; "
            "--eval-batches 100,000 is the most it scores)") in out


def test_eval_batches_the_split_holds_says_nothing(corpus, tmp_path, capsys):
    assert "evaluation: all" not in _run(corpus, tmp_path / "small", "1", capsys)
