"""headwise.app: the baselines against hand counts, the summary's lines, and
``headwise train`` telling the whole story on a tiny run."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_runs import tiny_cli_args, write_corpus

from headwise.app import (
    Baselines,
    binary_entropy,
    heldout_passages,
    role_leaders,
    scored_targets,
    summary_text,
    unigram_baseline,
)
from headwise.cli import main
from headwise.data import TokenBlocks


def _blocks(tmp_path, stream, block_len, style, **kw):
    path = tmp_path / f"{style}.bin"
    np.asarray(stream, dtype=np.uint16).tofile(path)
    return TokenBlocks(path, dtype=np.uint16, n_tokens=len(stream), block_len=block_len, style=style, **kw)


def test_unigram_baseline_is_the_hand_computed_entropy():
    # tokens 5, 5, 6, 7: frequencies 1/2, 1/4, 1/4
    tokens = np.array([5, 5, 6, 7])
    ce, top, acc = unigram_baseline(tokens, tokens, vocab_size=10, smoothing=0.0)
    assert ce == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
    assert top == 5 and acc == pytest.approx(0.5)


def test_unigram_baseline_smoothing_gives_unseen_tokens_a_finite_cost():
    # train 1, 1, 2 over V = 4 with add-one: p(3) = (0 + 1) / (3 + 4)
    ce, top, acc = unigram_baseline(np.array([1, 1, 2]), np.array([3]), vocab_size=4, smoothing=1.0)
    assert ce == pytest.approx(math.log(7))
    assert top == 1 and acc == 0.0


def test_mlm_targets_of_a_tiny_corpus_leave_out_the_specials(tmp_path):
    # specials 0..4 ([PAD] [UNK] [CLS] [SEP] [MASK]); stream "7 8 [SEP] 9 7 8", blocks of 5
    blocks = _blocks(tmp_path, [7, 8, 3, 9, 7, 8], 5, "encoder", cls_id=2, sep_id=3)
    assert blocks.batch([0, 1]).tolist() == [[2, 7, 8, 3, 3], [2, 9, 7, 8, 3]]
    special = np.zeros(10, dtype=bool)
    special[:5] = True
    targets = scored_targets(blocks, "mlm", is_special=special)
    assert sorted(targets.tolist()) == [7, 7, 8, 8, 9]
    ce, top, acc = unigram_baseline(targets, targets, vocab_size=10, smoothing=0.0)
    # counts 7: 2, 8: 2, 9: 1 of 5
    assert ce == pytest.approx(-(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2)))
    assert top == 7 and acc == pytest.approx(2 / 5)  # the hand count: two of the five targets are 7


def test_clm_targets_are_the_next_tokens_without_padding(tmp_path):
    blocks = _blocks(tmp_path, [10, 11, 12, 13, 14, 15, 0, 0], 4, "decoder")
    assert scored_targets(blocks, "clm", pad_id=0).tolist() == [11, 12, 13, 15]
    assert scored_targets(blocks, "clm", pad_id=0, indices=[1]).tolist() == [15]
    with pytest.raises(ValueError, match="is_special"):
        scored_targets(blocks, "mlm")


def test_binary_entropy():
    assert binary_entropy(0.5) == pytest.approx(math.log(2))
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(0.15) == pytest.approx(-(0.15 * math.log(0.15) + 0.85 * math.log(0.85)))


def _result(roles):
    return {"roles": [{"layer": l, "head": h, "primary": p, "roles": [p], "evidence": ev}
                      for l, h, p, ev in roles], "thresholds": {"positional": 0.5, "broad": 0.8}}


def test_role_leaders_count_primary_roles_and_name_the_strongest_head():
    res = _result([
        (0, 0, "previous-token", {"previous-token": 0.7}),
        (0, 1, "previous-token", {"previous-token": 0.9}),
        (1, 0, "induction", {"induction": 0.4}),
        (1, 1, "syntactic:det", {"syntactic": {"det": {"accuracy": 0.8, "margin": 0.2}}}),
        (1, 2, "other", {"previous-token": 0.2, "broad": 0.5}),
        (1, 3, "other", {"previous-token": 0.3, "broad": 0.4}),
    ])
    got = {x["role"]: x for x in role_leaders(res)}
    assert [x["role"] for x in role_leaders(res)] == ["induction", "syntactic", "previous-token", "other"]
    assert got["previous-token"]["count"] == 2 and got["previous-token"]["head"] == "L0H1"
    assert "90%" in got["previous-token"]["says"]
    assert got["syntactic"]["head"] == "L1H1" and "det" in got["syntactic"]["says"]
    # the "other" head nearest a role (broad, the absence of a pattern, does not count)
    assert got["other"]["count"] == 2 and got["other"]["head"] == "L1H3"
    assert got["other"]["says"] == "closest to a role: 30% of its attention on the previous token " \
        "(previous-token needs 50%)"


def _cfg(objective):
    return SimpleNamespace(objective=objective, preset="tiny", corpus="stdlib-code", steps=750)


def _base(objective, **kw):
    return Baselines(objective, 8192, math.log(8192), 6.5, 17, " ", 0.12, 1000, 100, **kw)


def test_summary_has_the_losses_beside_the_baselines_the_heads_and_the_next_commands(tmp_path):
    leaders = [{"role": "induction", "count": 2, "head": "L1H3", "strength": 0.5, "says": "induction score 0.50"},
               {"role": "other", "count": 14, "head": None, "strength": None, "says": ""}]
    text = summary_text(run_dir="runs/default", cfg=_cfg("clm"), step=750,
                        val={"loss": 3.2, "accuracy": 0.41}, base=_base("clm"), leaders=leaders,
                        n_heads=(4, 4), report=tmp_path / "report.html",
                        checks=["[ok] initial loss: ...", "[ok] causality: ..."])
    lines = text.splitlines()

    def line(*words):
        hits = [x for x in lines if all(w in x for w in words)]
        assert hits, f"no line with {words} in:\n{text}"
        return hits[0]

    line("loss", "3.200", "uniform ln 8192 = 9.01", "unigram 6.50")
    line("perplexity", "24.5")
    line("next-token accuracy", "41.0%", "' '", "12.0%")
    line("[ok] initial loss")
    line("16 heads", "4 layers x 4 heads")
    line("induction", "2", "strongest L1H3", "induction score 0.50")
    line("other", "14")
    line("open the report", "webbrowser", "report.html")
    line("generate", "headwise generate runs/default")
    line("evaluate", "headwise eval runs/default")
    line("inspect further", "headwise inspect runs/default", "--conllu")
    assert "{" not in text  # words, not raw JSON

    mlm = summary_text(run_dir="r", cfg=_cfg("mlm"), step=1, val={"loss": 5.0, "accuracy": 0.2},
                       base=_base("mlm"))
    assert "masked-token accuracy  20.0%" in mlm and "generate" not in mlm and "what the" not in mlm


def test_rtd_summary_compares_the_discriminator_with_the_replacement_rate():
    base = _base("rtd", replaced_fraction=0.1, disc_entropy=binary_entropy(0.1), always_original_accuracy=0.9)
    text = summary_text(run_dir="r", cfg=_cfg("rtd"), step=1, base=base,
                        val={"disc_loss": 0.2, "disc_accuracy": 0.95, "gen_loss": 6.0, "gen_accuracy": 0.1})
    assert f"discriminator loss   0.200   vs {binary_entropy(0.1):.3f}" in text
    assert "10.0% replaced" in text
    assert 'discriminator acc.   95.0%   vs 90.0% for always guessing "original"' in text
    assert "generator MLM loss   6.000   vs uniform ln 8192 = 9.01; unigram 6.50" in text
    assert "generator accuracy   10.0%" in text


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt")


def test_headwise_train_tells_the_story_and_a_finished_run_resumed_reprints_it(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out)) == 0
    first = capsys.readouterr().out
    for f in ("report.html", "summary.txt", "measures.json", "heads.jsonl"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert "validation split" in html and '"timeline":{' in html
    assert "masked-token accuracy" in first and "what the 4 heads became" in first
    assert "unigram" in first and "open the report" in first
    assert main(tiny_cli_args(corpus, out, "--resume")) == 0
    again = capsys.readouterr().out
    assert (out / "summary.txt").read_text().strip() in again
    assert "inspected" not in again  # re-printed, not recomputed


def test_no_report_trains_and_summarises_without_inspecting(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out, "--no-report", "--objective", "clm")) == 0
    text = capsys.readouterr().out
    assert not (out / "report.html").exists()
    assert "next-token accuracy" in text and "what the" not in text and "headwise generate" in text


def test_the_generate_command_suggested_prompts_with_text_of_the_runs_own_corpus(corpus, tmp_path, capsys):
    """was: always --prompt 'def ' (the standard library's code), whose characters a
    model trained on a user's prose may not know (generate then warned of [UNK])."""
    import re
    import shlex

    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out, "--no-report", "--objective", "clm", "--tokenizer-kind", "char")) == 0
    m = re.search(r"headwise generate \S+ --prompt (.+)$", capsys.readouterr().out, re.M)
    assert m, "the summary suggests no generate command"
    (prompt,) = shlex.split(m.group(1))
    assert prompt.strip() and prompt.strip() in corpus.read_text() and prompt != "def "


def test_heldout_passages_are_bounded_pieces_of_the_validation_split(corpus, tmp_path):
    from tiny_runs import tiny_cfg

    from headwise.train import Trainer

    trainer = Trainer(tiny_cfg(corpus, tmp_path / "run", steps=1), progress=False)
    tok, val = trainer.parts.tokenizer, trainer.parts.val
    passages = heldout_passages(val, tok, max_tokens=12)
    assert passages and all(len(tok.encode(p)) <= 14 for p in passages)
    assert len(heldout_passages(val, tok, max_passages=3)) == 3
    val_text = " ".join(tok.decode(val[i]) for i in range(len(val)))
    assert all(p.split()[1] in val_text for p in passages if len(p.split()) > 1)


def test_a_failed_inspection_still_prints_the_summary_and_is_retried(corpus, tmp_path, capsys, monkeypatch):
    import headwise.app.main_job as app

    def broken(*a, **k):
        raise RuntimeError("no heads today")

    monkeypatch.setattr(app, "inspect_run", broken)
    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out)) == 1
    captured = capsys.readouterr()
    assert "masked-token accuracy" in captured.out and "no heads today" in captured.out + captured.err
    assert (out / "summary.txt").is_file() and not (out / "story.json").exists()
