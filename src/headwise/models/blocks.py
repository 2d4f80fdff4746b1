"""The small parts every model is built from: embeddings, MLP, transformer block, and
the initialisation they share.

Module names are plain and stable so that others can attach hooks by name:
``blocks[i].attn`` is the block's :class:`~headwise.attention.MultiHeadAttention`,
``blocks[i].mlp`` its MLP, ``blocks[i].ln_1`` / ``blocks[i].ln_2`` its norms (LayerNorm,
or :class:`RMSNorm` with ``norm_type="rmsnorm"``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..attention import KVCache, MultiHeadAttention
from ..kernels.cpu_linear import hooked, run_linear
from ..kernels.mlp import mlp
from .config import ModelConfig

__all__ = [
    "Embeddings",
    "MLP",
    "Block",
    "RMSNorm",
    "norm_module",
    "activation_module",
    "init_weights",
    "check_input_ids",
    "count_parameters",
]


def activation_module(name: str) -> nn.Module:
    """The elementwise activation called ``name`` (for ``swiglu``, its gate: SiLU)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "relu":
        return nn.ReLU()
    if name == "swiglu":
        return nn.SiLU()
    raise ValueError(f"activation must be one of gelu, gelu_tanh, relu, swiglu; got {name!r}")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): ``x / sqrt(mean(x^2) + eps) * weight`` over the
    last dimension, ``(..., dim) -> (..., dim)``; no mean subtraction, no bias.

    The statistics are computed in float32 whatever the input dtype, and the result is
    cast back before the weight is applied, as Hugging Face's LlamaRMSNorm does, so a
    bf16 model imported from a Llama checkpoint rounds the same way.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def norm_module(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    """The block/final norm ``cfg.norm_type`` asks for, ``dim`` wide (default d_model)."""
    dim = cfg.d_model if dim is None else dim
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(dim, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)


def check_input_ids(input_ids: Tensor, name: str = "input_ids") -> None:
    """Raise TypeError/ValueError unless ``input_ids`` is an integer ``(B, T)`` tensor."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"{name} must hold token ids as torch.long (or torch.int32), got dtype "
            f"{input_ids.dtype}"
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (batch, seq), got {input_ids.dim()}-D with shape "
            f"{tuple(input_ids.shape)}"
        )


class Embeddings(nn.Module):
    """Token (+ learned position) (+ token type) embeddings, summed, then optionally a
    LayerNorm, then dropout. Output width is ``cfg.embedding_size``.

    This is the unit ELECTRA shares between its generator and discriminator.

    Args:
        cfg: the model config (``positions``, ``type_vocab_size``, ``embedding_size``...).
        layer_norm: apply a LayerNorm to the sum (BERT/ELECTRA do; GPT-2 does not).
    """

    def __init__(self, cfg: ModelConfig, *, layer_norm: bool) -> None:
        super().__init__()
        self.max_len = cfg.max_len
        self.tok = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        self.pos = nn.Embedding(cfg.max_len, cfg.embedding_size) if cfg.positions == "learned" else None
        self.tok_type = (
            nn.Embedding(cfg.type_vocab_size, cfg.embedding_size) if cfg.type_vocab_size > 0 else None
        )
        self.ln = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps) if layer_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, offset: int = 0
    ) -> Tensor:
        """``input_ids (B, T)`` -> ``(B, T, embedding_size)``; tokens sit at positions
        ``offset .. offset + T - 1`` (``offset`` > 0 when decoding with a KV cache)."""
        t = input_ids.shape[1]
        try:
            x = self.tok(input_ids)
        except IndexError:  # (on the CPU; torch's own message names no tensor)
            v = self.tok.num_embeddings
            bad = input_ids[(input_ids < 0) | (input_ids >= v)]
            if bad.numel() == 0:
                raise
            raise ValueError(
                f"input_ids must be token ids in [0, {v}) (vocab_size={v}), got "
                f"{bad.flatten()[0].item()}"
            ) from None
        if self.pos is not None:
            if offset + t > self.max_len:
                raise ValueError(
                    f"sequence length {offset + t} exceeds max_len={self.max_len} of the "
                    f"learned position embeddings"
                    + (f" ({offset} cached + {t} new tokens)" if offset else "")
                )
            x = x + self.pos(torch.arange(offset, offset + t, device=input_ids.device))
        if self.tok_type is not None:
            if token_type_ids is None:
                # BERT's convention: a single segment is type 0.
                x = x + self.tok_type.weight[0]
            else:
                if token_type_ids.shape != input_ids.shape:
                    raise ValueError(
                        f"token_type_ids must have the shape of input_ids "
                        f"{tuple(input_ids.shape)}, got {tuple(token_type_ids.shape)}"
                    )
                x = x + self.tok_type(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError(
                "token_type_ids were given but the model has no token type embeddings "
                "(type_vocab_size=0)"
            )
        if self.ln is not None:
            x = self.ln(x)
        return self.drop(x)


class MLP(nn.Module):
    """Position-wise feed-forward: ``fc_out(act(fc_in(x)))``, or with ``swiglu``
    ``fc_out(silu(a) * b)`` where ``fc_in`` produces ``[a, b]`` in one GEMM.
    ``(B, T, d_model) -> (B, T, d_model)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gated = cfg.activation == "swiglu"
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_ff * (2 if self.gated else 1), bias=cfg.bias)
        self.act = activation_module(cfg.activation)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        act = None if self.gated else self._plain_activation()
        if act is not None:  # the activation is recomputed in the backward (kernels/mlp.py)
            return mlp(x, self.fc_in.weight, self.fc_in.bias, self.fc_out.weight,
                       self.fc_out.bias, act)
        h = run_linear(self.fc_in, x)
        if self.gated:
            a, b = h.chunk(2, dim=-1)
            h = self.act(a) * b
        else:
            h = self.act(h)
        return run_linear(self.fc_out, h)

    def _plain_activation(self) -> str | None:
        """The name of ``act`` in :data:`headwise.kernels.mlp.ACTIVATIONS` when the three
        modules are plain and unhooked (else None: they are called one by one)."""
        mods = (self.fc_in, self.act, self.fc_out)
        if any(hooked(m) for m in mods) or any(type(m) is not nn.Linear for m in mods[::2]):
            return None
        if type(self.act) is nn.GELU:
            return "gelu_tanh" if self.act.approximate == "tanh" else "gelu"
        return "relu" if type(self.act) is nn.ReLU else None


class Block(nn.Module):
    """One transformer block: multi-head attention then MLP, each with a residual.

    * ``norm="pre"`` (GPT-2): ``x + drop(attn(ln_1(x)))``, then ``x + drop(mlp(ln_2(x)))``.
    * ``norm="post"`` (BERT): ``ln_1(x + drop(attn(x)))``, then ``ln_2(x + drop(mlp(x)))``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = MultiHeadAttention(
            cfg.d_model,
            cfg.n_heads,
            cfg.head_dim,
            cfg.n_kv_heads,
            bias=cfg.bias,
            dropout=cfg.attn_dropout,
            backend=cfg.attn_backend,
            rope=cfg.positions == "rope",
            rope_theta=cfg.rope_theta,
        )
        self.ln_1 = norm_module(cfg)
        self.mlp = MLP(cfg)
        self.ln_2 = norm_module(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """``x (B, T, d_model)`` -> ``(B, T, d_model)``. ``key_padding_mask (B, Tk)``
        bool, True = padding; ``kv_cache`` for incremental decoding. ``context (B, Tk,
        d_model)``: the sequence whose positions ``x`` is a subset of, for keys and
        values (the block then computes ``x``'s positions only; see
        ``Encoder.forward(rows=...)``)."""
        attn_kw = {"causal": causal, "key_padding_mask": key_padding_mask, "kv_cache": kv_cache}
        if self.pre_norm:
            kv = None if context is None else self.ln_1(context)
            x = x + self.drop(self.attn(self.ln_1(x), kv, **attn_kw))
            x = x + self.drop(self.mlp(self.ln_2(x)))
        else:
            x = self.ln_1(x + self.drop(self.attn(x, context, **attn_kw)))
            x = self.ln_2(x + self.drop(self.mlp(x)))
        return x


@torch.no_grad()
def init_weights(module: nn.Module, cfg: ModelConfig) -> None:
    """Initialise ``module`` and its children as BERT/GPT-2 do.

    Linear and embedding weights ~ N(0, init_std), biases 0, LayerNorm 1/0; the
    projections that write into the residual stream (attention ``out_proj`` and MLP
    ``fc_out``) get std ``init_std / sqrt(2 * n_layers)`` (GPT-2), so the variance the
    residual stream accumulates over ``2 * n_layers`` adds stays O(1).
    :class:`MultiHeadAttention` initialises itself with Xavier; this overrides it.
    """
    std = cfg.init_std
    residual_std = std / math.sqrt(2 * cfg.n_layers)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        elif isinstance(m, MultiHeadAttention):
            for w in m.projection_weights():
                w.normal_(0.0, std)
            for b in m.projection_biases():
                if b is not None:
                    b.zero_()
    # Second pass, so the residual scaling wins over the generic Linear rule above
    # whatever order modules() visits them in.
    for m in module.modules():
        if isinstance(m, Block):
            nn.init.normal_(m.attn.out_proj.weight, 0.0, residual_std)
            nn.init.normal_(m.mlp.fc_out.weight, 0.0, residual_std)


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (a tied or shared weight counts once)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters())
