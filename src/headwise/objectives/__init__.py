"""Training objectives: a batch of token ids in, a loss and metrics out.

Each objective is an ``nn.Module`` holding its model(s); call it as
``objective(batch (B, T) long, generator, *, metrics=True) -> ObjectiveOutput(loss,
metrics)``; ``metrics=False`` computes the loss only (no argmax, no host sync for the
metrics). The vocabulary projections run fused with their cross-entropy
(:mod:`.fused_loss`).
"""

from .base import ObjectiveOutput
from .clm import CausalLM
from .mlm import IGNORE_INDEX, MaskedLM, TokenMasker
from .rtd import ReplacedTokenDetection

__all__ = [
    "ObjectiveOutput",
    "TokenMasker",
    "MaskedLM",
    "ReplacedTokenDetection",
    "CausalLM",
    "IGNORE_INDEX",
]
