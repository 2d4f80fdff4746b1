"""ModelConfig: every number that decides a model's shape, validated once, saved as JSON.

One config describes both an :class:`~headwise.models.Encoder` (BERT, ELECTRA) and a
:class:`~headwise.models.Decoder` (GPT-2); fields that only one of them uses say so.
The config is frozen: derive variants with :func:`dataclasses.replace`, which runs the
same validation again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Any

from ..checks import check_choice, check_int, check_real

__all__ = ["ModelConfig", "ACTIVATIONS", "POSITIONS", "NORMS", "NORM_TYPES", "CONFIG_NAME"]

#: ``gelu`` is the exact (erf) GELU of BERT/ELECTRA; ``gelu_tanh`` is GPT-2's tanh
#: approximation (Hugging Face calls it ``gelu_new``); ``swiglu`` is Llama's gated MLP.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
POSITIONS = ("learned", "rope")
NORMS = ("pre", "post")
#: ``layernorm`` (BERT, GPT-2: centre, scale, shift) or ``rmsnorm`` (Llama: scale only,
#: no mean subtraction and no bias).
NORM_TYPES = ("layernorm", "rmsnorm")
#: file name used when ``to_json``/``from_json`` are given a directory.
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a transformer built from headwise attention.

    Args:
        vocab_size: number of token ids ``V``.
        d_model: residual stream width.
        n_layers: number of blocks.
        n_heads: query heads per attention layer.
        head_dim: per-head width (None = ``d_model // n_heads``).
        n_kv_heads: key/value heads (None = ``n_heads``; fewer = grouped-query).
        d_ff: hidden width of the MLP (for ``swiglu``, the width of each of its two
            input projections).
        max_len: longest sequence; a hard limit with learned positions, informational
            with RoPE.
        positions: ``"learned"`` (an embedding table, BERT/GPT-2) or ``"rope"``
            (rotary, applied inside every attention layer).
        norm: ``"pre"`` (LayerNorm before each sublayer, plus a final LayerNorm; GPT-2)
            or ``"post"`` (after each residual add; BERT/ELECTRA).
        dropout: dropout on embeddings and on each sublayer's output.
        attn_dropout: dropout on the attention probabilities.
        tied_embeddings: the output projection (LM/MLM decoder) reuses the token
            embedding matrix.
        activation: one of :data:`ACTIVATIONS`.
        layer_norm_eps: epsilon of every norm (BERT 1e-12, GPT-2 1e-5, Llama's
            RMSNorm 1e-6 or 1e-5).
        type_vocab_size: number of BERT token types (segments); 0 for none. Encoder only.
        embedding_size: width of the embedding tables when it differs from
            ``d_model`` (ELECTRA/ALBERT): embeddings are projected to ``d_model``.
            None = ``d_model``. Encoder only.
        bias: biases in the attention and MLP projections.
        rope_theta: RoPE base (``positions="rope"`` only).
        norm_type: one of :data:`NORM_TYPES`: ``"layernorm"`` or ``"rmsnorm"`` (Llama).
            Used for the blocks' and the final norm; BERT-style embedding and MLM-head
            norms stay LayerNorms.
        init_std: standard deviation of the normal initialisation.
        attn_backend: attention backend name passed to every
            :class:`~headwise.attention.MultiHeadAttention` (``"auto"`` picks per call).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int | None = None
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_len: int = 512
    positions: str = "learned"
    norm: str = "pre"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    tied_embeddings: bool = True
    activation: str = "gelu"
    layer_norm_eps: float = 1e-5
    type_vocab_size: int = 0
    embedding_size: int | None = None
    bias: bool = True
    rope_theta: float = 10000.0
    init_std: float = 0.02
    attn_backend: str = "auto"
    norm_type: str = "layernorm"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("head_dim", "n_kv_heads", "embedding_size"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        if self.d_ff is None:
            # 4x is the width BERT and GPT-2 use; stored resolved so config.json is explicit.
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        check_int("d_ff", self.d_ff, minimum=1)
        check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} when head_dim is "
                f"None; pass head_dim to use heads of another width"
            )
        if self.n_heads % self.kv_heads != 0:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}"
            )
        check_choice("positions", self.positions, POSITIONS)
        check_choice("norm", self.norm, NORMS)
        check_choice("norm_type", self.norm_type, NORM_TYPES)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.positions == "rope" and self.attn_head_dim % 2 != 0:
            raise ValueError(
                f"positions='rope' needs an even head_dim, got head_dim={self.attn_head_dim}"
            )
        for name in ("dropout", "attn_dropout"):
            check_real(name, getattr(self, name), minimum=0, maximum=1, max_open=True)
        for name in ("layer_norm_eps", "rope_theta", "init_std"):
            check_real(name, getattr(self, name), minimum=0, min_open=True)
        for name in ("tied_embeddings", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.attn_backend, str) or not self.attn_backend:
            raise ValueError(
                f"attn_backend must be 'auto' or a backend name, got {self.attn_backend!r}"
            )

    # --------------------------------------------------------------- derived sizes
    @property
    def attn_head_dim(self) -> int:
        """Per-head width actually used (``head_dim`` or ``d_model // n_heads``)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads actually used."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def embed_dim(self) -> int:
        """Width of the embedding tables (``embedding_size`` or ``d_model``)."""
        return self.embedding_size if self.embedding_size is not None else self.d_model

    # --------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict`'s output; unknown keys are an error, not ignored,
        so that a typo in a hand-edited config.json does not pass silently."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; accepted: {sorted(known)}")
        return cls(**d)

    def to_json(self, path: str | os.PathLike) -> str:
        """Write the config as JSON to ``path`` (a file, or a directory to hold
        ``config.json`` beside the weights). Returns the file written."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a config written by :meth:`to_json` (a file, or a directory holding
        ``config.json``)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

