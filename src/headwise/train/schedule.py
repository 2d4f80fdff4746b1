"""Learning-rate schedules: linear warm-up, then cosine or linear decay."""

from __future__ import annotations

import math

import torch

from ..checks import check_choice

__all__ = ["DECAYS", "lr_lambda", "make_scheduler"]

#: the learning-rate decays after warm-up
DECAYS = ("cosine", "linear", "constant")


def lr_lambda(step: int, *, warmup: int, total: int, decay: str = "cosine", min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Rises linearly over ``warmup`` steps, then falls to ``min_ratio`` at ``total``
    along a half cosine (``decay="cosine"``), a line (``"linear"``) or stays flat
    (``"constant"``)."""
    check_choice("decay", decay, DECAYS)
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int, decay: str = "cosine", min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_lambda` (its state_dict resumes exactly)."""
    lr_lambda(0, warmup=warmup, total=total, decay=decay)  # validates the arguments
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, warmup=warmup, total=total, decay=decay, min_ratio=min_ratio)
    )
