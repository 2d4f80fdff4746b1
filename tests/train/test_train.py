"""The training run: exact resume, run-directory safety, non-finite stops, atomic
checkpoints, schedules, sanity checks and the CLI around runs."""

import json
import math

import pytest
import torch
from tiny_runs import tiny_cfg, write_corpus

from headwise.cli import main
from headwise.train import NonFiniteError, TrainConfig, Trainer
from headwise.train.checkpoint import latest_checkpoint
from headwise.train.schedule import lr_lambda


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A small synthetic corpus (deterministic) and an isolated cache."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt")


_cfg = tiny_cfg


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.objective.state_dict().items()}


@pytest.mark.parametrize("objective", ["mlm", "rtd", "clm"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(corpus, tmp_path, objective):
    whole = Trainer(_cfg(corpus, tmp_path / "whole", objective=objective), progress=False)
    whole.run()
    part = Trainer(_cfg(corpus, tmp_path / "part", objective=objective), progress=False)
    part.run(until_step=4)  # "killed" after the checkpoint at step 4
    del part
    resumed = Trainer(_cfg(corpus, tmp_path / "part", objective=objective), resume=True, progress=False)
    assert resumed.step == 4
    resumed.run()
    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics log holds one history, not two
    steps = [r["step"] for r in resumed.metrics.read() if r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_existing_run_directory_is_never_overwritten_silently(corpus, tmp_path):
    Trainer(_cfg(corpus, tmp_path / "run", steps=2, checkpoint_every=2), progress=False).run()
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        Trainer(_cfg(corpus, tmp_path / "run"), progress=False)
    Trainer(_cfg(corpus, tmp_path / "run"), overwrite=True, progress=False)  # asked: allowed
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a headwise run directory"):
        Trainer(_cfg(corpus, user_dir), overwrite=True, progress=False)
    assert (user_dir / "notes.txt").read_text() == "precious"


def test_non_finite_loss_stops_with_step_and_checkpoint(corpus, tmp_path):
    trainer = Trainer(_cfg(corpus, tmp_path / "run", checkpoint_every=100), progress=False)
    trainer.run(until_step=2)
    with torch.no_grad():
        next(trainer.objective.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="at step 2"):
        trainer.run()
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"


def test_non_finite_gradient_names_the_parameter(corpus, tmp_path):
    trainer = Trainer(_cfg(corpus, tmp_path / "run", checkpoint_every=100), progress=False)
    name, param = next(iter(trainer.objective.named_parameters()))
    param.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(NonFiniteError, match=f"gradient of parameter '{name}' is not finite at step 0"):
        trainer.run()


def test_a_crash_while_saving_leaves_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    trainer = Trainer(_cfg(corpus, tmp_path / "run"), progress=False)
    trainer.run(until_step=4)
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("headwise.train.checkpoint.torch.save", boom)
    with pytest.raises(OSError, match="disk full"):
        trainer.run()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"
    assert not any(name.startswith(".") for name in ckpts)  # the half-written one is gone


def test_schedule_warmup_then_cosine():
    assert lr_lambda(0, warmup=10, total=110) == pytest.approx(0.1)
    assert lr_lambda(9, warmup=10, total=110) == pytest.approx(1.0)
    assert lr_lambda(60, warmup=10, total=110, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_lambda(110, warmup=10, total=110, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_lambda(60, warmup=10, total=110, decay="linear", min_ratio=0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="decay must be"):
        lr_lambda(0, warmup=1, total=2, decay="exp")


def test_train_config_errors():
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="mass")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        TrainConfig(batch_size=0)


def test_corpus_smaller_than_a_batch_is_named(corpus, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("the cat sat on the mat. " * 12)
    with pytest.raises(ValueError, match="small.txt"):
        Trainer(_cfg(small, tmp_path / "run", vocab_size=60), progress=False)


# ---------------------------------------------------------------- sanity checks
@pytest.mark.parametrize("objective", ["mlm", "rtd", "clm"])
def test_start_checks_pass_at_initialisation(corpus, tmp_path, objective):
    from headwise.train.sanity import run_start_checks

    trainer = Trainer(_cfg(corpus, tmp_path / "run", objective=objective), progress=False)
    lines = run_start_checks(trainer)
    assert all(line.startswith("[ok]") for line in lines)
    if objective == "clm":
        assert any("causality" in line for line in lines)


def test_causality_check_catches_a_decoder_that_sees_the_future(corpus, tmp_path):
    from headwise.train.sanity import causality_check

    trainer = Trainer(_cfg(corpus, tmp_path / "run", objective="clm"), progress=False)
    decoder = trainer.objective.model
    batch = trainer.parts.train.batch([0, 1])
    assert causality_check(decoder, batch).passed
    attn = decoder.blocks[0].attn
    original = attn.forward
    attn.forward = lambda x, *a, causal=False, **k: original(x, *a, causal=False, **k)
    result = causality_check(decoder, batch)
    assert not result.passed and "later input" in result.detail


def test_overfit_check_and_initial_loss_check(corpus, tmp_path):
    from headwise.train.sanity import initial_loss_check, overfit_check

    trainer = Trainer(_cfg(corpus, tmp_path / "run", objective="clm", dropout=0.0), progress=False)
    batch = trainer.parts.train.batch([0, 1])
    assert overfit_check(trainer.objective, batch, steps=150).passed
    # a model whose logits are scaled up is far from chance at initialisation: caught
    head = trainer.objective.model
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(30)
    res = initial_loss_check(trainer.objective, batch, trainer.parts.tokenizer.vocab_size, "clm")
    assert not res.passed and f"ln {trainer.parts.tokenizer.vocab_size}" in res.detail


def test_overfit_check_tries_the_next_learning_rate_when_one_fails_to_memorise(corpus, tmp_path):
    # one learning rate does not suit every width: make run's 128-wide char decoder
    # diverged at 3e-3 (and `headwise check` called the healthy run [FAIL]), 32-wide
    # models need it
    from headwise.train.sanity import overfit_check

    trainer = Trainer(_cfg(corpus, tmp_path / "run", objective="clm", dropout=0.0), progress=False)
    batch = trainer.parts.train.batch([0, 1])
    res = overfit_check(trainer.objective, batch, steps=150, lrs=(30.0, 3e-3))
    assert res.passed and "at lr 0.003" in res.detail
    res = overfit_check(trainer.objective, batch, steps=20, lrs=(30.0, 1e-6))
    assert not res.passed and "at lr 30" in res.detail and "at lr 1e-06" in res.detail


# ---------------------------------------------------------------- CLI
def test_cli_train_generate_eval_check(corpus, tmp_path, capsys):
    run = tmp_path / "clm"
    args = ["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(run), "--steps", "6",
            "--batch-size", "8", "--block-len", "33", "--vocab-size", "300", "--eval-every", "3",
            "--eval-batches", "2", "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64", "--quiet"]
    assert main(args) == 0
    for name in ("run.json", "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {r["split"] for r in records}
    assert main(args) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip().startswith("the cat")
    assert main(["eval", str(run), "--batches", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert math.isclose(out["perplexity"], math.exp(out["loss"]), rel_tol=1e-3)
    assert main(["check", str(run)]) == 0
    assert "[ok] causality" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "nothing")]) == 2
