"""Training objectives: a batch of token ids in, a loss and metrics out.

Each objective is an ``nn.Module`` holding its model(s); call it as
``objective(batch (B, T) long, generator) -> ObjectiveOutput(loss, metrics)``.
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
