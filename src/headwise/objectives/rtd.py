"""Replaced-token detection (ELECTRA): a small generator fills masked positions with
plausible tokens, and the discriminator learns to tell, for every token, whether it is
the original or a replacement.

The generator is an :class:`~headwise.models.EncoderForMLM` trained by MLM; its samples
are drawn without gradient, so the discriminator's loss reaches the generator only
through what they share (the embeddings, see :func:`~headwise.models.build_electra`).
``generator="uniform"`` replaces the selected tokens by uniformly random ones instead
(no generator; for ablations).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import EncoderForMLM, EncoderForRTD
from .base import ObjectiveOutput, check_batch, loss_precision, padding_mask
from .mlm import TokenMasker, _tokenizer_facts

__all__ = ["ReplacedTokenDetection"]


class ReplacedTokenDetection(nn.Module):
    """The ELECTRA objective: ``batch (B, T) long -> ObjectiveOutput``.

    1. Select ``mask_prob`` of the maskable tokens; the generator's input has
       ``mask_token_prob`` of them replaced by ``[MASK]`` (ELECTRA: 0.85, the rest kept).
    2. The generator predicts the selected tokens (MLM loss); one token per selected
       position is sampled from its softmax (no gradient flows through the sample).
    3. The discriminator reads the batch with the selected tokens swapped for the
       samples and labels every non-pad token: 1 = replaced, 0 = original. A sample
       equal to the original token counts as original.
    4. ``loss = gen_loss + disc_weight * disc_loss`` (BCE averaged over non-pad tokens).

    Metrics: ``loss``, ``gen_loss``, ``disc_loss``, ``gen_accuracy`` (argmax on selected
    positions), ``disc_accuracy``, ``disc_precision`` / ``disc_recall`` / ``disc_f1``
    (replaced is the positive class), ``replaced_fraction`` (of non-pad tokens),
    ``n_selected``; none with ``forward(..., metrics=False)``. ``losses`` holds the
    ``"gen"`` and ``"disc"`` tensors.

    Args:
        discriminator: an :class:`~headwise.models.EncoderForRTD`.
        generator: an :class:`~headwise.models.EncoderForMLM`, or ``"uniform"``.
        vocab_size: ``V``, checked against both models' ``cfg.vocab_size``.
        mask_token_prob, random_token_prob: the generator input's corruption split
            (ELECTRA's defaults, not BERT's).
        disc_weight: weight of the discriminator loss (ELECTRA: 50).
        sampling_temperature: temperature of the generator's softmax when sampling.
        masking: ``mask_id``, ``pad_id``, ``special_ids``, ``is_continuation``,
            ``mask_prob``, ``whole_word``: passed to :class:`~headwise.objectives.TokenMasker`.
    """

    def __init__(
        self,
        discriminator: EncoderForRTD,
        generator: EncoderForMLM | str,
        *,
        vocab_size: int,
        mask_token_prob: float = 0.85,
        random_token_prob: float = 0.0,
        disc_weight: float = 50.0,
        sampling_temperature: float = 1.0,
        **masking: Any,
    ) -> None:
        super().__init__()
        if not isinstance(discriminator, EncoderForRTD):
            raise TypeError(
                f"discriminator must be an EncoderForRTD, got {type(discriminator).__name__}"
            )
        if isinstance(generator, str):
            if generator != "uniform":
                raise ValueError(
                    f"generator must be an EncoderForMLM or 'uniform', got {generator!r}"
                )
        elif not isinstance(generator, EncoderForMLM):
            raise TypeError(
                f"generator must be an EncoderForMLM or 'uniform', got {type(generator).__name__}"
            )
        models = [("discriminator", discriminator)]
        if isinstance(generator, EncoderForMLM):
            models.append(("generator", generator))
        for name, m in models:
            if m.cfg.vocab_size != vocab_size:
                raise ValueError(
                    f"vocab_size={vocab_size} does not match the {name}'s "
                    f"cfg.vocab_size={m.cfg.vocab_size}"
                )
        if not disc_weight >= 0:
            raise ValueError(f"disc_weight must be >= 0, got {disc_weight!r}")
        if not sampling_temperature > 0:
            raise ValueError(f"sampling_temperature must be > 0, got {sampling_temperature!r}")
        self.discriminator = discriminator
        # Kept out of the module tree in uniform mode so parameters() holds only models.
        self.generator = generator if isinstance(generator, EncoderForMLM) else None
        self.mode = "model" if self.generator is not None else "uniform"
        self.disc_weight = float(disc_weight)
        self.sampling_temperature = float(sampling_temperature)
        self.masker = TokenMasker(
            vocab_size=vocab_size, mask_token_prob=mask_token_prob,
            random_token_prob=random_token_prob, **masking,
        )

    @classmethod
    def from_tokenizer(
        cls, tok, discriminator: EncoderForRTD, generator: EncoderForMLM | str, **kwargs
    ) -> ReplacedTokenDetection:
        """Build with ``tok``'s ``vocab_size``, ``mask_id``, ``pad_id``, ``special_ids``
        and ``is_continuation``; ``kwargs`` as for the constructor."""
        return cls(discriminator, generator, **_tokenizer_facts(tok), **kwargs)

    def corrupt(
        self, batch: Tensor, generator: torch.Generator | None = None, *, metrics: bool = True,
        key_padding_mask: Tensor | None | str = "auto",
    ) -> tuple[Tensor, Tensor, Tensor, float | Tensor | None]:
        """Steps 1-2. Returns ``(corrupted (B, T), selected (B, T) bool, gen_loss,
        gen_accuracy)``; in uniform mode ``gen_loss`` is a constant 0 and the accuracy
        None, and with ``metrics=False`` the accuracy is None too (no argmax).
        ``key_padding_mask``: the batch's padding mask if the caller has it (None: no
        padding), ``"auto"`` to compute it."""
        check_batch(batch)
        masker = self.masker
        if self.generator is None:
            selected = masker.select(batch, generator)
            pick = torch.randint(
                len(masker.replacements), batch.shape, generator=generator, device=batch.device
            )
            corrupted = torch.where(selected, masker.replacements[pick].to(batch.dtype), batch)
            return corrupted, selected, batch.new_zeros((), dtype=torch.float32), None
        if isinstance(key_padding_mask, str):
            key_padding_mask = padding_mask(batch, masker.pad_id)
        gen_inputs, selected = masker(batch, generator)
        # the selected positions' hidden states only (the last block narrows to them)
        hidden = self.generator.encoder(gen_inputs, key_padding_mask, rows=selected)
        targets = batch[selected].long()
        logits = self.generator.head(hidden)  # (N, V): sampled from below
        if len(targets):
            gen_loss = F.cross_entropy(loss_precision(logits), targets)
        else:
            gen_loss = hidden.sum() * 0.0
        gen_accuracy = None
        with torch.no_grad():
            if metrics:
                gen_accuracy = (
                    (logits.argmax(dim=-1) == targets).float().mean().item() if len(targets) else 0.0
                )
            if len(targets):
                sampled = sample_rows(logits.detach(), self.sampling_temperature, generator)
            else:
                sampled = targets
        corrupted = batch.clone()
        corrupted[selected] = sampled.to(batch.dtype)
        return corrupted, selected, gen_loss, gen_accuracy

    def forward(
        self, batch: Tensor, generator: torch.Generator | None = None, *, metrics: bool = True
    ) -> ObjectiveOutput:
        """``metrics=False`` skips what only the metrics need (argmaxes, counts, host
        syncs): ``metrics`` is then empty; ``loss`` and ``losses`` are set."""
        pad = padding_mask(batch, self.masker.pad_id)
        corrupted, selected, gen_loss, gen_accuracy = self.corrupt(
            batch, generator, metrics=metrics, key_padding_mask=pad
        )
        disc_logits = self.discriminator(corrupted, pad)  # (B, T)
        replaced = corrupted != batch
        real = None if pad is None else ~pad
        if real is not None:
            replaced &= real
        z, y = (disc_logits, replaced) if real is None else (disc_logits[real], replaced[real])
        z = loss_precision(z)
        # an all-padding batch has no token to label: a zero still connected to the graph,
        # as MLM and CLM give (the mean over no token was NaN)
        disc_loss = F.binary_cross_entropy_with_logits(z, y.to(z.dtype)) if z.numel() else z.sum()
        loss = gen_loss + self.disc_weight * disc_loss
        losses = {"gen": gen_loss, "disc": disc_loss}
        if not metrics:
            return ObjectiveOutput(loss, {}, losses=losses)

        with torch.no_grad():
            predicted = disc_logits > 0
            if real is not None:
                predicted &= real
            n_real = batch.numel() if real is None else real.sum().item()
            tp = (predicted & replaced).sum().item()
            n_pred, n_true = predicted.sum().item(), replaced.sum().item()
            agree = predicted == replaced
            correct = (agree if real is None else agree & real).sum().item()
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out = {
            "loss": loss.item(),
            "gen_loss": gen_loss.item(),
            "disc_loss": disc_loss.item(),
            "disc_accuracy": correct / n_real if n_real else 0.0,
            "disc_precision": precision,
            "disc_recall": recall,
            "disc_f1": f1,
            "replaced_fraction": n_true / n_real if n_real else 0.0,
            "n_selected": float(selected.sum().item()),
        }
        if gen_accuracy is not None:
            out["gen_accuracy"] = gen_accuracy
        return ObjectiveOutput(loss, out, losses=losses)


def sample_rows(logits: Tensor, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits (N, V)`` drawn from ``softmax(logits / temperature)``
    -> ``(N,)`` long, by inverting each row's cumulative distribution with one uniform
    draw per row.

    ``torch.multinomial`` draws an exponential variate for every one of the ``N x V``
    entries; on the CPU that was 12% of an ELECTRA step (tiny preset, profiled). This
    costs one exponential pass and one cumulative sum. A token of probability zero is
    never drawn (the search is for the first cumulative mass strictly above the draw).
    """
    z = logits.float()
    # shifted to a maximum of 0 before the temperature divides: a tiny temperature then
    # gives -inf for all but the best tokens, never inf - inf = nan (which drew the last id)
    z = z - z.amax(dim=-1, keepdim=True)
    if temperature < torch.finfo(torch.float32).tiny:
        # a subnormal temperature is 0 where denormals are flushed (the trainer flushes
        # them on the CPU), and 0 / 0 = nan: take the limit, the best tokens alone
        z = torch.where(z < 0, float("-inf"), 0.0)
    elif temperature != 1.0:
        z = z.div_(temperature)
    cdf = z.exp_().cumsum_(dim=-1)  # unnormalised
    u = torch.rand(z.shape[0], 1, generator=generator, device=z.device, dtype=cdf.dtype)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return picked.clamp_(max=z.shape[-1] - 1)
