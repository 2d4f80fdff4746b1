"""Causal LM: the shift, padding left out of the loss, initial loss, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from headwise.models import Decoder, EncoderForMLM
from headwise.objectives import CausalLM


def test_targets_are_the_next_token(kit, tok):
    model = Decoder(kit.tiny_config())
    objective = CausalLM.from_tokenizer(tok, model)
    # An oracle that, reading token x, puts all its mass on x + 1: only a correct shift
    # (input t scored against target t + 1) gives loss 0 and accuracy 1. The objective
    # reads hidden states (head=False) and projects them with lm_head: one-hot hidden
    # states through an identity head are the oracle's logits.
    model.forward = lambda ids, kv_caches=None, head=True: 50.0 * F.one_hot(ids + 1, kit.V).float()
    model.lm_head = torch.nn.Linear(kit.V, kit.V, bias=False)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.eye(kit.V))
    batch = torch.arange(10, 26).repeat(3, 1)
    out = objective(batch)
    assert out.metrics["accuracy"] == 1.0 and out.loss.item() < 1e-6
    assert out.metrics["n_tokens"] == 3 * 15


def test_padding_targets_are_ignored(kit, tok):
    torch.manual_seed(0)
    objective = CausalLM.from_tokenizer(tok, Decoder(kit.tiny_config()))
    batch = kit.make_batch(2, 20)
    padded = torch.cat([batch, torch.full((2, 7), kit.PAD)], dim=1)
    a, b = objective(batch), objective(padded)
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-5)
    assert a.metrics["n_tokens"] == b.metrics["n_tokens"] == 2 * 19


def test_initial_loss_and_perplexity(kit, tok):
    torch.manual_seed(0)
    out = CausalLM.from_tokenizer(tok, Decoder(kit.tiny_config()))(kit.make_batch(8, 64))
    assert out.loss.item() == pytest.approx(math.log(kit.V), abs=0.1)
    assert out.metrics["perplexity"] == pytest.approx(math.exp(out.metrics["loss"]))


def test_errors(kit, tok):
    with pytest.raises(TypeError, match="Decoder"):
        CausalLM.from_tokenizer(tok, EncoderForMLM(kit.tiny_config()))
    objective = CausalLM.from_tokenizer(tok, Decoder(kit.tiny_config()))
    with pytest.raises(ValueError, match="seq >= 2"):
        objective(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.long"):
        objective(torch.zeros(2, 8))


def test_tiny_model_overfits_one_batch(kit, tok):
    torch.manual_seed(0)
    model = Decoder(kit.tiny_config(d_model=64, d_ff=128))
    objective = CausalLM.from_tokenizer(tok, model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = kit.make_batch(8, 32)
    first = None
    for _ in range(60):
        out = objective(batch)
        first = first or out.metrics["loss"]
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.metrics["loss"] < 0.3 * first
