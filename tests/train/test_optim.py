"""The run's optimizer (TrainConfig.optimizer): Muon on the blocks' matrices with AdamW
on the rest, saved in run.json, resumed exactly."""

import json
import random

import pytest
import torch

from headwise.models import Decoder, get_preset
from headwise.train import TrainConfig, Trainer
from headwise.train.optim import MuonAdamW, build_optimizer, split_muon_params

WORDS = "to be or not that is the question whether tis nobler in mind suffer".split()


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(1)
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(60)))
    return path


def _cfg(corpus, out, **kw):
    base = dict(objective="clm", corpus=str(corpus), out=str(out), steps=8, batch_size=8, block_len=33,
                tokenizer_kind="char", warmup=2, eval_every=4, eval_batches=2, log_every=2,
                checkpoint_every=4, model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64},
                optimizer="muon", muon_lr=0.02, sanity_checks=False)
    base.update(kw)
    return TrainConfig(**base)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = Decoder(get_preset("tiny", vocab_size=50, n_layers=2, bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    matrices, rest = split_muon_params(model)
    assert sorted(names[id(p)] for p in matrices) == sorted(
        f"blocks.{i}.{w}" for i in range(2)
        for w in ("attn.qkv_weight", "attn.out_proj.weight", "mlp.fc_in.weight", "mlp.fc_out.weight"))
    # the tied embedding / output head, norms and biases stay with AdamW; nothing twice or lost
    assert "embeddings.tok.weight" in {names[id(p)] for p in rest}
    assert len(matrices) + len(rest) == len(list(model.parameters()))
    opt = build_optimizer(model, optimizer="muon", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, muon_lr=0.02)
    assert isinstance(opt, MuonAdamW)
    # a scheduler scales both optimizers' groups (the live ones, also after a reload)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    opt.load_state_dict(opt.state_dict())
    opt.step()  # no gradients yet: a no-op, but the scheduler expects it first
    sched.step()
    assert [g["lr"] for g in opt.adamw.param_groups] == [5e-4, 5e-4]
    assert [g["lr"] for g in opt.muon.param_groups] == [0.01]


def test_optimizer_settings_are_validated():
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="muon_lr must be positive"):
        TrainConfig(optimizer="muon", muon_lr=0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_optimizer(torch.nn.Linear(2, 2), optimizer="sgd", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)


def test_muon_run_saves_its_settings_and_resumes_exactly(corpus, tmp_path):
    whole = Trainer(_cfg(corpus, tmp_path / "whole"), progress=False)
    assert isinstance(whole.optimizer, MuonAdamW)
    whole.run()
    saved = json.loads((tmp_path / "whole" / "run.json").read_text())
    assert saved["optimizer"] == "muon" and saved["muon_lr"] == 0.02
    part = Trainer(_cfg(corpus, tmp_path / "part"), progress=False)
    part.run(until_step=4)
    del part
    resumed = Trainer(_cfg(corpus, tmp_path / "part"), resume=True, progress=False)
    assert resumed.step == 4 and isinstance(resumed.optimizer, MuonAdamW)
    resumed.run()
    a, b = whole.objective.state_dict(), resumed.objective.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Muon moved the block matrices: they are not at their initial values
    fresh = Trainer(_cfg(corpus, tmp_path / "fresh", steps=1), progress=False).objective.state_dict()
    assert not torch.equal(fresh["model.blocks.0.mlp.fc_in.weight"], a["model.blocks.0.mlp.fc_in.weight"])
