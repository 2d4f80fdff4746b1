"""Masked language modelling (BERT): corrupt 15% of the tokens, predict the originals.

:class:`TokenMasker` does the corruption (shared with ELECTRA's RTD); :class:`MaskedLM`
runs an :class:`~headwise.models.EncoderForMLM` on it and scores the selected positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..kernels.cpu_linear import run_linear
from ..models import EncoderForMLM
from ..models.encoder import MLMHead
from .base import ObjectiveOutput, check_batch, check_token_id, loss_precision, padding_mask
from .fused_loss import fusable, linear_cross_entropy

__all__ = ["TokenMasker", "MaskedLM", "IGNORE_INDEX"]

#: label value of positions that carry no loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


class TokenMasker(nn.Module):
    """BERT's corruption: select ``mask_prob`` of the maskable tokens; of those, replace
    ``mask_token_prob`` by ``[MASK]``, ``random_token_prob`` by a random non-special
    token, and leave the rest unchanged.

    Maskable means: not padding, not ``[MASK]``, not in ``special_ids``. Selection is an
    independent coin per token (per word with ``whole_word``), so the count varies
    around ``mask_prob`` of the maskable tokens.

    Args:
        vocab_size: ``V``.
        mask_id: id of ``[MASK]``.
        pad_id: id of padding.
        special_ids: ids never selected nor drawn as random replacements ([CLS], [SEP]...).
        is_continuation: ``(V,)`` bool, True for tokens that continue the previous
            token's word (WordPiece ``##x``); needed by ``whole_word``.
        mask_prob: fraction of maskable tokens (or words) selected.
        mask_token_prob, random_token_prob: split of the selected tokens (the
            remainder stays unchanged).
        whole_word: select whole words: a non-continuation token together with the
            continuation tokens that follow it.

    The lookup tables are non-persistent buffers: ``.to(device)`` moves them.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        pad_id: int,
        special_ids: Sequence[int] = (),
        is_continuation: Tensor | None = None,
        mask_prob: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        whole_word: bool = False,
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, minimum=2)
        check_token_id("mask_id", mask_id, vocab_size)
        check_token_id("pad_id", pad_id, vocab_size)
        for i in special_ids:
            check_token_id("each of special_ids", i, vocab_size)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob!r}")
        if not (0.0 <= mask_token_prob and 0.0 <= random_token_prob) or (
            mask_token_prob + random_token_prob > 1.0 + 1e-9
        ):
            raise ValueError(
                f"mask_token_prob ({mask_token_prob!r}) and random_token_prob "
                f"({random_token_prob!r}) must be >= 0 and sum to at most 1"
            )
        if is_continuation is not None:
            if not isinstance(is_continuation, Tensor) or is_continuation.dtype != torch.bool:
                raise TypeError(
                    f"is_continuation must be a bool tensor of shape ({vocab_size},), got "
                    f"{getattr(is_continuation, 'dtype', type(is_continuation).__name__)}"
                )
            if tuple(is_continuation.shape) != (vocab_size,):
                raise ValueError(
                    f"is_continuation must have shape ({vocab_size},) (vocab_size), got "
                    f"{tuple(is_continuation.shape)}"
                )
        if whole_word and is_continuation is None:
            raise ValueError("whole_word=True needs is_continuation (which tokens continue a word)")

        self.vocab_size, self.mask_id, self.pad_id = vocab_size, mask_id, pad_id
        self.mask_prob = float(mask_prob)
        self.mask_token_prob = float(mask_token_prob)
        self.random_token_prob = float(random_token_prob)
        self.whole_word = bool(whole_word)
        is_special = torch.zeros(vocab_size, dtype=torch.bool)
        is_special[[mask_id, pad_id, *special_ids]] = True
        replacements = (~is_special).nonzero().squeeze(-1)
        if replacements.numel() == 0:
            raise ValueError("every token id is special: nothing can be masked or drawn")
        self.register_buffer("is_special", is_special, persistent=False)
        self.register_buffer("replacements", replacements, persistent=False)
        self.register_buffer(
            "is_continuation",
            is_continuation.clone() if is_continuation is not None else None,
            persistent=False,
        )

    def select(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``(B, T)`` bool: the positions of ``batch (B, T)`` chosen for prediction."""
        maskable = ~self.is_special[batch]
        coin = torch.rand(batch.shape, generator=generator, device=batch.device)
        if not self.whole_word:
            return maskable & (coin < self.mask_prob)
        # A word starts at every non-continuation token; specials and padding also start
        # one, so no word reaches across them. Every token of a word reads the same coin
        # (the one at its word's index), so a word is selected whole or not at all.
        starts = ~self.is_continuation[batch] | ~maskable
        starts[:, 0] = True
        word_index = starts.long().cumsum(dim=1) - 1
        return maskable & (coin.gather(1, word_index) < self.mask_prob)

    def forward(
        self, batch: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Corrupt ``batch (B, T)``. Returns ``(inputs (B, T), selected (B, T) bool)``:
        the corrupted ids and which positions were selected (the loss positions).
        ``generator`` must live on ``batch``'s device."""
        check_batch(batch)
        selected = self.select(batch, generator)
        split = torch.rand(batch.shape, generator=generator, device=batch.device)
        to_mask = selected & (split < self.mask_token_prob)
        to_random = (
            selected
            & (split >= self.mask_token_prob)
            & (split < self.mask_token_prob + self.random_token_prob)
        )
        pick = torch.randint(
            len(self.replacements), batch.shape, generator=generator, device=batch.device
        )
        inputs = batch.masked_fill(to_mask, self.mask_id)
        inputs = torch.where(to_random, self.replacements[pick].to(batch.dtype), inputs)
        return inputs, selected

    def extra_repr(self) -> str:
        return (
            f"vocab_size={self.vocab_size}, mask_prob={self.mask_prob}, "
            f"split=({self.mask_token_prob}, {self.random_token_prob}), "
            f"whole_word={self.whole_word}"
        )


class MaskedLM(nn.Module):
    """The MLM objective: ``batch (B, T) long -> ObjectiveOutput``.

    Corrupts ``batch`` with a :class:`TokenMasker`, encodes it (padding masked out of
    attention), and takes the cross-entropy of the original tokens at the selected
    positions only (the vocabulary projection runs on those rows only).

    Metrics: ``loss``, ``accuracy`` (argmax == original, on selected positions),
    ``n_selected``; none with ``forward(..., metrics=False)``.

    Args:
        model: the :class:`~headwise.models.EncoderForMLM` to train.
        vocab_size: ``V``, checked against ``model.cfg.vocab_size``.
        masking: ``mask_id``, ``pad_id``, ``special_ids``, ``is_continuation``,
            ``mask_prob``, ``mask_token_prob``, ``random_token_prob``, ``whole_word``:
            passed to :class:`TokenMasker` (its defaults, BERT's, apply).
    """

    def __init__(self, model: EncoderForMLM, *, vocab_size: int, **masking: Any) -> None:
        super().__init__()
        if not isinstance(model, EncoderForMLM):
            raise TypeError(f"model must be an EncoderForMLM, got {type(model).__name__}")
        if model.cfg.vocab_size != vocab_size:
            raise ValueError(
                f"vocab_size={vocab_size} does not match the model's "
                f"cfg.vocab_size={model.cfg.vocab_size}"
            )
        self.model = model
        self.masker = TokenMasker(vocab_size=vocab_size, **masking)

    @classmethod
    def from_tokenizer(cls, tok, model: EncoderForMLM, **kwargs) -> MaskedLM:
        """Build with ``tok``'s ``vocab_size``, ``mask_id``, ``pad_id``, ``special_ids``
        and ``is_continuation``; ``kwargs`` as for the constructor."""
        return cls(model, **_tokenizer_facts(tok), **kwargs)

    def forward(
        self, batch: Tensor, generator: torch.Generator | None = None, *, metrics: bool = True
    ) -> ObjectiveOutput:
        """``metrics=False`` skips what only the metrics need (the argmax and its host
        sync): ``metrics`` is then empty and only ``loss`` is set."""
        inputs, selected = self.masker(batch, generator)
        # hidden states of the selected positions only (the last block narrows to them)
        rows = self.model.encoder(inputs, padding_mask(batch, self.masker.pad_id), rows=selected)
        targets = batch[selected].long()
        loss, hits = mlm_head_loss(self.model.head, rows, targets, rows, want_hits=metrics)
        if not metrics:
            return ObjectiveOutput(loss, {})
        n = len(targets)
        out = {"loss": loss.item(), "accuracy": hits.item() / n if n else 0.0,
               "n_selected": float(n)}
        return ObjectiveOutput(loss, out)


def mlm_head_loss(
    head: nn.Module, rows: Tensor, targets: Tensor, anchor: Tensor, *, want_hits: bool
) -> tuple[Tensor, Tensor | None]:
    """Mean cross-entropy of ``head(rows (N, d_model))`` against ``targets (N,)`` (in
    float32 whatever the model's dtype) and, with ``want_hits``, the number of argmax
    hits (a tensor; None otherwise). An :class:`~headwise.models.MLMHead`'s decoder runs
    fused with the loss (:func:`~headwise.objectives.fused_loss.linear_cross_entropy`),
    so the ``(N, V)`` logits never exist. With ``N == 0`` the loss is a zero connected to
    ``anchor``'s graph (so ``backward()`` still works)."""
    n = targets.numel()
    if n == 0:
        return anchor.sum() * 0.0, (torch.zeros((), dtype=torch.long) if want_hits else None)
    if isinstance(head, MLMHead) and type(head.decoder) is nn.Linear and fusable(
        head, head.dense, head.ln, head.decoder
    ):
        z = head.ln(head.act(run_linear(head.dense, rows)))
        dec = head.decoder
        loss_sum, hits = linear_cross_entropy(z, dec.weight, dec.bias, targets,
                                              return_hits=want_hits)
        return loss_sum / n, hits
    logits = head(rows)
    loss = F.cross_entropy(loss_precision(logits), targets)
    hits = (logits.argmax(dim=-1) == targets).sum() if want_hits else None
    return loss, hits


def mlm_loss_and_accuracy(
    logits: Tensor, targets: Tensor, anchor: Tensor
) -> tuple[Tensor, float]:
    """Mean cross-entropy of ``logits (N, V)`` against ``targets (N,)`` (in float32
    whatever the model's dtype), and argmax accuracy. With ``N == 0`` the loss is a
    zero connected to ``anchor``'s graph (so ``backward()`` still works) and the
    accuracy 0."""
    if targets.numel() == 0:
        return anchor.sum() * 0.0, 0.0
    loss = F.cross_entropy(loss_precision(logits), targets)
    accuracy = (logits.argmax(dim=-1) == targets).float().mean().item()
    return loss, accuracy


def _tokenizer_facts(tok) -> dict:
    facts = {}
    for name in ("vocab_size", "mask_id", "pad_id", "special_ids"):
        if not hasattr(tok, name):
            raise TypeError(f"tokenizer {type(tok).__name__} has no attribute {name!r}")
        facts[name] = getattr(tok, name)
    facts["special_ids"] = list(facts["special_ids"])
    marks = getattr(tok, "is_continuation", None)
    # headwise.data's Tokenizer keeps the marks as a NumPy array
    facts["is_continuation"] = None if marks is None else torch.as_tensor(marks, dtype=torch.bool)
    return facts
