"""Sanity checks for a run: each is a real measurement with a stated tolerance.

* initial loss: at random initialisation the model knows nothing, so the MLM and
  CLM cross-entropy must be close to ln(vocab) and the discriminator's binary loss
  close to ln 2 (within ``INIT_TOL`` relative);
* overfit: a fresh copy of the model trained on one fixed batch must drive the
  loss below ``OVERFIT_RATIO`` of where it started;
* causality (decoders): the output at position t has exactly zero gradient with
  respect to the input embeddings of every later position.
A non-finite loss or gradient is caught by the training loop itself.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

__all__ = ["CheckResult", "initial_loss_check", "overfit_check", "causality_check", "run_start_checks",
           "SanityError"]

INIT_TOL = 0.15
OVERFIT_RATIO = 0.1


class SanityError(RuntimeError):
    """A sanity check failed."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"[{'ok' if self.passed else 'FAIL'}] {self.name}: {self.detail}"


def _within(value: float, target: float, tol: float) -> bool:
    return abs(value - target) <= tol * target


@torch.no_grad()
def initial_loss_check(objective, batch: torch.Tensor, vocab_size: int, kind: str) -> CheckResult:
    """Loss of an untrained objective on ``batch (B, T)`` against its chance level."""
    objective.eval()
    out = objective(batch, generator=torch.Generator().manual_seed(0))
    objective.train()
    ln_v = math.log(vocab_size)
    if kind == "rtd":
        disc = float(out.metrics["disc_loss"])
        gen = out.metrics.get("gen_loss")
        ok = _within(disc, math.log(2), INIT_TOL)
        detail = f"discriminator loss {disc:.4f} vs ln 2 = {math.log(2):.4f}"
        if gen is not None:
            ok = ok and _within(float(gen), ln_v, INIT_TOL)
            detail += f"; generator loss {float(gen):.4f} vs ln V = {ln_v:.4f}"
    else:
        loss = float(out.loss)
        ok = _within(loss, ln_v, INIT_TOL)
        detail = f"loss {loss:.4f} vs ln V = ln {vocab_size} = {ln_v:.4f}"
    return CheckResult("initial loss", ok, detail + f" (tolerance {INIT_TOL:.0%})")


#: Adam learning rates the overfit check tries, in order, until one memorises the batch:
#: the tests' 32-wide models need the first; the 128-wide tiny char decoder of ``make
#: run`` diverges at it (loss 5.28 -> 2.81 in 150 steps) and memorises at the second
#: (5.28 -> 0.03)
OVERFIT_LRS = (3e-3, 1e-3)


def overfit_check(objective, batch: torch.Tensor, steps: int = 150,
                  lrs: tuple[float, ...] = OVERFIT_LRS) -> CheckResult:
    """Train a copy of ``objective`` on one fixed batch (same masking every step), at
    each of ``lrs`` in turn until the loss falls below :data:`OVERFIT_RATIO` of its start."""
    tried = []
    for lr in lrs:
        first, last = _memorise(objective, batch, steps, lr)
        tried.append(f"loss {first:.4f} -> {last:.4f} in {steps} steps at lr {lr:g}")
        if last < OVERFIT_RATIO * first:
            return CheckResult("overfit one batch", True,
                               f"{tried[-1]} (must fall below {OVERFIT_RATIO:.0%} of the start)")
    return CheckResult("overfit one batch", False,
                       f"{'; '.join(tried)} (must fall below {OVERFIT_RATIO:.0%} of the start at one of them)")


def _memorise(objective, batch: torch.Tensor, steps: int, lr: float) -> tuple[float, float]:
    """The first and last loss of a fresh copy of ``objective`` trained ``steps`` Adam
    steps at ``lr`` on ``batch``."""
    model = copy.deepcopy(objective)
    model.train()
    for m in model.modules():  # memorising needs a deterministic model
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = float("nan")
    for i in range(steps):
        out = model(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if i == 0:
            first = out.loss.item()
        last = out.loss.item()
    return first, last


def causality_check(decoder, batch: torch.Tensor) -> CheckResult:
    """Zero gradient from output t to the input embeddings of positions after t."""
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["emb"] = output

    handle = decoder.embeddings.register_forward_hook(keep)
    was_training = decoder.training
    decoder.eval()
    try:
        # a CLM block holds one token more than the model reads (the last is only a target)
        x = batch[:1, :-1] if batch.shape[1] > 2 else batch[:1]
        x = x[:, : decoder.cfg.max_len]
        logits = decoder(x)
        t_len = x.shape[1]
        worst = 0.0
        for t in sorted({0, t_len // 3, t_len // 2, t_len - 2}):
            if t < 0 or t >= t_len - 1:
                continue
            captured["emb"].grad = None
            logits[0, t].sum().backward(retain_graph=True)
            g = captured["emb"].grad[0]
            worst = max(worst, g[t + 1 :].abs().max().item())
            if g[: t + 1].abs().max().item() == 0:
                return CheckResult("causality", False, f"output {t} has no gradient from its own past")
    finally:
        handle.remove()
        decoder.train(was_training)
    return CheckResult("causality", worst == 0.0,
                       f"largest gradient from an output to a later input: {worst:g} (must be exactly 0)")


def run_checks(objective, batch: torch.Tensor, vocab_size: int, kind: str, *, overfit: bool = True,
               overfit_batch: int = 4) -> list[CheckResult]:
    """Every check that applies to ``kind``; ``batch`` is a (B, T) training batch."""
    results = [initial_loss_check(objective, batch, vocab_size, kind)]
    if kind == "clm":
        results.append(causality_check(objective.model, batch))
    if overfit:
        results.append(overfit_check(objective, batch[:overfit_batch]))
    return results


def run_start_checks(trainer) -> list[str]:
    """The checks a run makes before its first step; raises SanityError on failure."""
    batch = trainer.parts.train.batch(trainer.parts.sampler.batch_indices(0)).to(trainer.device)
    results = run_checks(trainer.objective, batch, trainer.parts.tokenizer.vocab_size,
                         trainer.cfg.objective, overfit=False)
    failed = [r for r in results if not r.passed]
    if failed:
        raise SanityError("sanity check failed before training: " + "; ".join(r.line() for r in failed))
    return [r.line() for r in results]
