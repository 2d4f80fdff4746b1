"""Evaluation: mean metrics of an objective over token blocks."""

from __future__ import annotations

import contextlib
import math

import torch

from ..data import TokenBlocks

__all__ = ["evaluate_blocks"]


@torch.no_grad()
def evaluate_blocks(objective, blocks: TokenBlocks, *, batch_size: int, max_batches: int,
                    device: torch.device, seed: int = 1234, precision=None) -> dict[str, float]:
    """Mean loss and metrics of ``objective`` over the first ``max_batches`` batches
    of ``blocks``. Masking randomness is fixed by ``seed`` so that evaluations are
    comparable across steps; CLM also gets perplexity = exp(mean loss). ``precision``:
    a :class:`headwise.hardware.precision.Precision` whose autocast the forwards run
    under (None: as the objective is)."""
    was_training = objective.training
    objective.eval()
    gen = torch.Generator().manual_seed(seed)
    autocast = contextlib.nullcontext() if precision is None else precision.autocast(device)
    totals: dict[str, float] = {}
    n = 0
    try:
        for batch in blocks.iter_batches(batch_size):
            if n >= max_batches:
                break
            with autocast:
                out = objective(batch.to(device), generator=gen)
            for k, v in {"loss": out.loss.item(), **out.metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
    finally:
        objective.train(was_training)
    if n == 0:
        raise ValueError(f"no complete batch of {batch_size} blocks to evaluate on ({len(blocks)} blocks)")
    result = {k: v / n for k, v in totals.items()}
    if "perplexity" in result:
        result["perplexity"] = math.exp(min(result["loss"], 50.0))
    return result
