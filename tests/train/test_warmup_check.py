"""``headwise train`` and a warm-up the run's --steps leave no room for."""

from __future__ import annotations

import pytest
from tests.helpers.tiny_runs import refused_line, tiny_cli_args, write_corpus

from headwise.cli import main


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt", docs=60)


@pytest.mark.parametrize("warmup, steps, what", [
    ("10", "4", "the learning rate would still be rising at the end, at 40% of --lr, and --decay cosine "
                "would never start; give --warmup 3 or less"),
    ("4", "4", "the learning rate would reach --lr only at the last step, and --decay cosine would never "
               "start; give --warmup 3 or less"),
])
def test_a_warmup_given_that_does_not_fit_in_the_steps_is_refused(corpus, tmp_path, capsys, warmup, steps, what):
    out = tmp_path / "run"
    line = refused_line(tiny_cli_args(corpus, out, "--warmup", warmup, "--steps", steps), capsys)
    assert line == f"headwise train: error: --warmup {warmup} is not below --steps {steps}: {what}"
    assert not out.exists()  # refused before the run directory is written


def test_warmup_equal_to_steps_with_a_constant_rate_is_accepted(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out, "--warmup", "2", "--steps", "2", "--decay", "constant",
                              "--no-report", "--eval-every", "2", "--checkpoint-every", "2")) == 0
    assert "warmup" not in capsys.readouterr().err


def test_the_default_warmup_longer_than_the_run_is_said_not_silent(corpus, tmp_path, capsys):
    args = tiny_cli_args(corpus, tmp_path / "run", "--steps", "2", "--no-report", "--eval-every", "2",
                         "--checkpoint-every", "2")
    i = args.index("--warmup")
    del args[i:i + 2]  # the default, 100
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("warning: the default --warmup 100 is not below --steps 2: the learning rate would still be rising "
            "at the end, at 2% of --lr, and --decay cosine would never start; give --warmup below --steps to "
            "change it") in err
