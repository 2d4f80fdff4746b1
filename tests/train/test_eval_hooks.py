"""Trainer.eval_hooks: called right after each evaluation, on the writing process only."""

import random

import pytest

from headwise.train import TrainConfig, Trainer

WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(100)))
    return TrainConfig(objective="clm", corpus=str(corpus), out=str(tmp_path / "run"), steps=5, batch_size=4,
                       block_len=17, vocab_size=300, warmup=1, eval_every=2, eval_batches=1, log_every=1,
                       checkpoint_every=4, model={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32},
                       sanity_checks=False, device="cpu")


def test_hooks_run_after_each_evaluation(cfg):
    trainer = Trainer(cfg, progress=False)
    assert trainer.eval_hooks == []
    seen = []

    def hook(t, step):
        assert t is trainer and t.step == step
        val = [r for r in t.metrics.read() if r["split"] == "val"]
        assert val[-1]["step"] == step  # the evaluation is logged before the hooks run
        seen.append(step)

    trainer.eval_hooks.append(hook)
    trainer.run()
    assert seen == [2, 4, 5]  # every eval_every steps, and at the last step


def test_hooks_do_not_run_on_other_ranks(cfg):
    trainer = Trainer(cfg, progress=False)
    trainer.is_main = False
    trainer.eval_hooks.append(lambda t, s: pytest.fail("a hook ran on a process that does not write the run"))
    trainer.run(until_step=2)
