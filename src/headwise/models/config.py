"""ModelConfig: every number that decides a model's shape, validated once, saved as JSON.

One config describes both an :class:`~headwise.models.Encoder` (BERT, ELECTRA) and a
:class:`~headwise.models.Decoder` (GPT-2); fields that only one of them uses say so.
The config is frozen: derive variants with :meth:`ModelConfig.replace` (or
:func:`dataclasses.replace`), which runs the same validation again.

``head_dim``, ``n_kv_heads`` and ``embedding_size`` may be given as None (the default:
``d_model // n_heads``, ``n_heads``, ``d_model``); ``__post_init__`` resolves them, so
the fields always hold the sizes the model uses. What was left to default is
remembered: :meth:`ModelConfig.to_dict` writes it as None again (config.json is as it
always was), :meth:`ModelConfig.is_default` tells, and :meth:`ModelConfig.replace`
derives it afresh from the new sizes unless given. (:func:`dataclasses.replace` does
the same, but cannot tell a value given equal to the old default from one carried
over: it derives both again.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..checks import check_choice, check_int, check_real

__all__ = ["ModelConfig", "ACTIVATIONS", "POSITIONS", "NORMS", "NORM_TYPES", "CONFIG_NAME", "DERIVED"]

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
#: the fields that None resolves from the others (``head_dim = d_model // n_heads``,
#: ``n_kv_heads = n_heads``, ``embedding_size = d_model``).
DERIVED = ("head_dim", "n_kv_heads", "embedding_size")
#: the default RoPE base; another one is refused without positions="rope"
_ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a transformer built from headwise attention.

    Args:
        vocab_size: number of token ids ``V``.
        d_model: residual stream width.
        n_layers: number of blocks.
        n_heads: query heads per attention layer.
        head_dim: per-head width (None = ``d_model // n_heads``, resolved: the field
            holds the width used).
        n_kv_heads: key/value heads (None = ``n_heads``, resolved; fewer = grouped-query).
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
            None = ``d_model`` (resolved). Encoder only.
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
    rope_theta: float = 10000.0  # = _ROPE_THETA
    init_std: float = 0.02
    attn_backend: str = "auto"
    norm_type: str = "layernorm"
    # (name, value) of the DERIVED fields that were left to default, as resolved: set by
    # __post_init__, carried by dataclasses.replace (a value still equal to it is derived
    # again), never compared, shown or saved
    _defaults: tuple[tuple[str, int], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
            check_int(name, getattr(self, name), minimum=1)
        carried = dict(self._defaults)
        defaulted = []
        for name in DERIVED:
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=1)
            if value is None or carried.get(name, -1) == value:
                defaulted.append(name)
        if self.d_ff is None:
            # 4x is the width BERT and GPT-2 use; stored resolved so config.json is explicit.
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        check_int("d_ff", self.d_ff, minimum=1)
        check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        if "head_dim" in defaulted and self.d_model % self.n_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} when head_dim is "
                f"None; pass head_dim to use heads of another width"
            )
        resolved = {"head_dim": self.d_model // self.n_heads, "n_kv_heads": self.n_heads,
                    "embedding_size": self.d_model}
        for name in defaulted:
            object.__setattr__(self, name, resolved[name])
        object.__setattr__(self, "_defaults", tuple((name, resolved[name]) for name in defaulted))
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}"
            )
        check_choice("positions", self.positions, POSITIONS)
        check_choice("norm", self.norm, NORMS)
        check_choice("norm_type", self.norm_type, NORM_TYPES)
        check_choice("activation", self.activation, ACTIVATIONS)
        if self.positions == "rope" and self.head_dim % 2 != 0:
            raise ValueError(
                f"positions='rope' needs an even head_dim, got head_dim={self.head_dim}"
            )
        for name in ("dropout", "attn_dropout"):
            check_real(name, getattr(self, name), minimum=0, maximum=1, max_open=True)
        for name in ("layer_norm_eps", "rope_theta", "init_std"):
            check_real(name, getattr(self, name), minimum=0, min_open=True)
        if self.positions != "rope" and self.rope_theta != _ROPE_THETA:
            raise ValueError(
                f"rope_theta={self.rope_theta!r} is only used with positions='rope', got "
                f"positions={self.positions!r}; leave rope_theta at {_ROPE_THETA} or use rope"
            )
        for name in ("tied_embeddings", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.attn_backend, str) or not self.attn_backend:
            raise ValueError(
                f"attn_backend must be 'auto' or a backend name, got {self.attn_backend!r}"
            )

    # --------------------------------------------------------------- derived sizes
    def is_default(self, name: str) -> bool:
        """Whether the derived field ``name`` (one of :data:`DERIVED`) was left to its
        default (None) and resolved from the other sizes, rather than given."""
        check_choice("name", name, DERIVED)
        return any(n == name for n, _ in self._defaults)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` (validated as a new config): the derived fields given
        in ``changes`` are taken as given, those left to default are derived again
        from the new sizes (``replace(d_model=64)`` of a config with ``head_dim`` None
        gets ``64 // n_heads``)."""
        known = self.field_names()
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; the fields are: {', '.join(known)}")
        carried = tuple((name, value) for name, value in self._defaults if name not in changes)
        return dataclasses.replace(self, _defaults=carried, **changes)

    # --------------------------------------------------------------- serialisation
    @classmethod
    def field_names(cls) -> list[str]:
        """The fields a config is made of (what :meth:`to_dict` writes), in order."""
        return [f.name for f in fields(cls) if not f.name.startswith("_")]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable); a derived field left to
        default is written as None, as it was given (so the saved form does not pin it)."""
        d = {name: getattr(self, name) for name in self.field_names()}
        d.update({name: None for name, _ in self._defaults})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict`'s output; unknown keys are an error, not ignored,
        so that a typo in a hand-edited config.json does not pass silently."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        known = set(cls.field_names())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; accepted: {sorted(known)}")
        return cls(**d)

    def to_json(self, path: str | os.PathLike, *, overwrite: bool = False) -> str:
        """Write the config as JSON to ``path`` (a file, or a directory to hold
        ``config.json`` beside the weights). Returns the file written. A file already
        there with other content is a FileExistsError unless ``overwrite``."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if not overwrite and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    same = f.read() == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                raise FileExistsError(
                    f"{path} already exists with other content; pass overwrite=True to "
                    "replace it, or write the config elsewhere"
                )
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
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

