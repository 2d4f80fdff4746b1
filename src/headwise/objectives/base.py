"""What every objective returns, and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import check_int

__all__ = ["ObjectiveOutput", "check_batch", "padding_mask", "loss_precision"]


@dataclass
class ObjectiveOutput:
    """One training step's result.

    Attributes:
        loss: scalar tensor to call ``backward()`` on.
        metrics: plain floats for logging (including ``"loss"``); empty when the
            objective was called with ``metrics=False`` (the trainer's steps between two
            logs), which skips the argmaxes and host syncs only the metrics need.
        losses: the weighted loss's parts as tensors with their graphs (e.g. RTD's
            ``"gen"`` and ``"disc"``), for analysis and tests; empty when the loss has
            one part.
    """

    loss: Tensor
    metrics: dict[str, float]
    losses: dict[str, Tensor] = field(default_factory=dict)


def check_batch(batch: Tensor, min_len: int = 1) -> None:
    """Raise TypeError/ValueError unless ``batch`` is a ``(B, T)`` long tensor with
    ``T >= min_len``."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"batch must be a torch.Tensor of token ids, got {type(batch).__name__}")
    if batch.dtype not in (torch.long, torch.int32):
        raise TypeError(f"batch must hold token ids as torch.long, got dtype {batch.dtype}")
    if batch.dim() != 2 or batch.shape[1] < min_len:
        raise ValueError(
            f"batch must be 2-D (batch, seq) with seq >= {min_len}, got shape "
            f"{tuple(batch.shape)}"
        )


def padding_mask(batch: Tensor, pad_id: int | None) -> Tensor | None:
    """``(B, T)`` bool, True at padding, or None when there is none (so attention can
    take its unmasked fast path)."""
    if pad_id is None:
        return None
    pad = batch == pad_id
    return pad if bool(pad.any()) else None


def check_token_id(name: str, value, vocab_size: int) -> None:
    check_int(name, value, minimum=0, maximum=vocab_size - 1, what=f"a token id in [0, {vocab_size})")


def loss_precision(x: Tensor) -> Tensor:
    """``x`` in the dtype a loss is computed in: float32 for bf16/fp16 logits (autocast),
    the logits' own dtype when that is wider (a float64 model keeps float64 losses)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
