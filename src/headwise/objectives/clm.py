"""Causal language modelling (GPT): predict token ``t + 1`` from tokens ``<= t``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Decoder
from .base import ObjectiveOutput, check_batch, check_token_id, loss_precision
from .fused_loss import fusable, linear_cross_entropy
from .mlm import IGNORE_INDEX

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """The CLM objective: ``batch (B, T) long -> ObjectiveOutput``.

    The model reads ``batch[:, :-1]`` and is scored on ``batch[:, 1:]`` (so a block of
    ``max_len + 1`` tokens trains every position), ignoring targets equal to ``pad_id``.
    Padding is expected on the right: causal attention never lets a real token see
    the padding after it, so no attention mask is needed.

    Metrics: ``loss``, ``perplexity`` (``exp(loss)``), ``accuracy`` (argmax == target),
    ``n_tokens`` (scored targets); none with ``forward(..., metrics=False)``.

    Args:
        model: the :class:`~headwise.models.Decoder` to train.
        pad_id: padding id to leave out of the loss (None: every target counts).
        vocab_size: if given, checked against the model's.
    """

    def __init__(
        self, model: Decoder, *, pad_id: int | None = None, vocab_size: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(model, Decoder):
            raise TypeError(f"model must be a Decoder, got {type(model).__name__}")
        if vocab_size is not None and vocab_size != model.cfg.vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} does not match the model's "
                f"cfg.vocab_size={model.cfg.vocab_size}"
            )
        if pad_id is not None:
            check_token_id("pad_id", pad_id, model.cfg.vocab_size)
        self.model = model
        self.pad_id = pad_id

    @classmethod
    def from_tokenizer(cls, tok, model: Decoder, **kwargs) -> CausalLM:
        """Build with ``tok.pad_id`` and ``tok.vocab_size``."""
        return cls(model, pad_id=tok.pad_id, vocab_size=tok.vocab_size, **kwargs)

    def forward(
        self, batch: Tensor, generator: torch.Generator | None = None, *, metrics: bool = True
    ) -> ObjectiveOutput:
        """``generator`` is accepted for a uniform objective interface; CLM uses no
        randomness of its own. ``metrics=False`` skips everything only the metrics need
        (the argmax, every host sync): ``metrics`` is then empty and only ``loss`` is
        set, which is how the trainer runs its steps between two logs.

        The output projection and the cross-entropy run fused, a chunk of rows at a
        time (:func:`~headwise.objectives.fused_loss.linear_cross_entropy`): the full
        ``(B, T, V)`` logits never exist."""
        check_batch(batch, min_len=2)
        hidden = self.model(batch[:, :-1], head=False).flatten(0, 1)  # (B*(T-1), D)
        targets = batch[:, 1:].long().flatten()
        if self.pad_id is not None:
            targets = targets.masked_fill(targets == self.pad_id, IGNORE_INDEX)
            count = (targets != IGNORE_INDEX).sum()
        else:
            count = torch.tensor(targets.numel(), device=targets.device)
        head = self.model.lm_head
        if type(head) is nn.Linear and fusable(self.model, head):
            loss_sum, hits = linear_cross_entropy(
                hidden, head.weight, head.bias, targets, ignore_index=IGNORE_INDEX,
                return_hits=metrics,
            )
        else:  # a quantized or hooked head (headwise.formats): project, then score
            logits = head(hidden)
            loss_sum = F.cross_entropy(loss_precision(logits), targets, ignore_index=IGNORE_INDEX,
                                       reduction="sum")
            hits = ((logits.argmax(dim=-1) == targets).sum() if metrics else None)
        # no scored target: a zero still connected to the graph (backward() works)
        loss = loss_sum / count.clamp(min=1)
        if not metrics:
            return ObjectiveOutput(loss, {})
        n_tokens = int(count.item())
        value = loss.item()
        out = {
            "loss": value,
            # exp overflows a float near 709; report inf rather than raise.
            "perplexity": math.exp(value) if value < 700 else float("inf"),
            "accuracy": hits.item() / n_tokens if n_tokens else 0.0,
            "n_tokens": float(n_tokens),
        }
        return ObjectiveOutput(loss, out)
