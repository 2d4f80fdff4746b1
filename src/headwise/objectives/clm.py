"""Causal language modelling (GPT): predict token ``t + 1`` from tokens ``<= t``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Decoder
from .base import ObjectiveOutput, check_batch, check_token_id
from .mlm import IGNORE_INDEX

__all__ = ["CausalLM"]


class CausalLM(nn.Module):
    """The CLM objective: ``batch (B, T) long -> ObjectiveOutput``.

    The model reads ``batch[:, :-1]`` and is scored on ``batch[:, 1:]`` (so a block of
    ``max_len + 1`` tokens trains every position), ignoring targets equal to ``pad_id``.
    Padding is expected on the right: causal attention never lets a real token see
    the padding after it, so no attention mask is needed.

    Metrics: ``loss``, ``perplexity`` (``exp(loss)``), ``accuracy`` (argmax == target),
    ``n_tokens`` (scored targets).

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

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> ObjectiveOutput:
        """``generator`` is accepted for a uniform objective interface; CLM uses no
        randomness of its own."""
        check_batch(batch, min_len=2)
        logits = self.model(batch[:, :-1])  # (B, T-1, V)
        targets = batch[:, 1:].long()
        if self.pad_id is not None:
            targets = targets.masked_fill(targets == self.pad_id, IGNORE_INDEX)
        flat_logits, flat_targets = logits.flatten(0, 1), targets.flatten()
        scored = flat_targets != IGNORE_INDEX
        n_tokens = int(scored.sum().item())
        if n_tokens == 0:
            loss = logits.sum() * 0.0
            accuracy = 0.0
        else:
            loss = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE_INDEX)
            with torch.no_grad():
                hits = (flat_logits.argmax(dim=-1) == flat_targets) & scored
                accuracy = hits.sum().item() / n_tokens
        value = loss.item()
        metrics = {
            "loss": value,
            # exp overflows a float near 709; report inf rather than raise.
            "perplexity": math.exp(value) if value < 700 else float("inf"),
            "accuracy": accuracy,
            "n_tokens": float(n_tokens),
        }
        return ObjectiveOutput(loss, metrics)
