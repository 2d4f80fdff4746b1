"""A CLM run whose blocks hold max_len + 1 tokens (a context of max_len: the last token
is only a target) trains with its sanity checks on, passes `headwise check` and can be
inspected (issue 11, item 6)."""

import pytest
from tiny_runs import tiny_cfg, write_corpus

from headwise.cli import main
from headwise.train import Trainer


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, objective="clm", block_len=33, steps=4, sanity_checks=True,
                   model={"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_len": 32})
    t = Trainer(cfg, progress=False)
    t.run()  # the causality check fed all 33 tokens to a 32-position model before the fix
    return out


def test_check_of_a_max_len_plus_one_run(run, capsys):
    assert main(["check", str(run)]) == 0
    assert "[ok] causality" in capsys.readouterr().out


def test_inspect_of_a_max_len_plus_one_run(run, tmp_path, capsys):
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(["the cat sat on the mat .", "a dog ran under the big tree ."] * 4))
    assert main(["inspect", str(run), "--text", str(text), "--out", str(tmp_path / "insp"), "--importance"]) == 0
    assert (tmp_path / "insp" / "report.html").is_file()
