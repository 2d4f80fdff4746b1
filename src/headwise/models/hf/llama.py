"""Llama (``LlamaModel``, ``LlamaForCausalLM``) <-> headwise :class:`~headwise.models.Decoder`
with RoPE, grouped-query attention, RMSNorm and SwiGLU: the config translation both
ways and the weight map.

``q_proj``/``k_proj``/``v_proj`` are concatenated along their output rows into the
fused QKV; ``gate_proj``/``up_proj`` become the MLP's fused ``fc_in`` (``[gate | up]``).
Llama's q/k rows are already in the rotate-half RoPE order headwise uses, so no
permutation is needed.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .common import Link, refuse

__all__ = ["config_from_hf", "config_to_hf", "links"]

def _rope_theta(hf: dict) -> float:
    """RoPE base from either config layout: transformers 5 keeps it in
    ``rope_parameters``; 4.x wrote ``rope_theta`` and ``rope_scaling`` at the top."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(
            f"rope_type={rope_type!r} (rope scaling) is not supported; accepted: ['default']"
        )
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def config_from_hf(hf: dict) -> ModelConfig:
    refuse(hf, "hidden_act", "silu", ("silu",), "headwise's gated MLP is SwiGLU")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ValueError(
            f"attention_bias={attn_bias} and mlp_bias={mlp_bias} differ; headwise has one "
            f"`bias` switch for both, so they must be equal"
        )
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // h
    kv = hf.get("num_key_value_heads") or h
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=h,
        # Left None when it is the default, so the config reads like a hand-written one.
        head_dim=None if d % h == 0 and head_dim == d // h else head_dim,
        n_kv_heads=None if kv == h else kv,
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 2048),
        positions="rope",
        rope_theta=_rope_theta(hf),
        norm="pre",
        norm_type="rmsnorm",
        activation="swiglu",
        bias=attn_bias,
        layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig, *, mlm: bool = False) -> dict[str, Any]:
    """``config.json`` for ``cfg`` as ``LlamaForCausalLM`` (``mlm`` is unused)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.layer_norm_eps,
        # Both layouts: transformers 5 reads rope_parameters, 4.x rope_theta.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attn_dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tied_embeddings,
    }


def links(cfg: ModelConfig, prefix: str) -> list[Link]:
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    qkv = (q_rows, kv_rows, kv_rows)
    out = [
        Link("embeddings.tok.weight", (prefix + "embed_tokens.weight",)),
        Link("ln_f.weight", (prefix + "norm.weight",)),
    ]
    ws = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layers):
        q, h = f"blocks.{i}.", f"{prefix}layers.{i}."
        a = h + "self_attn."
        out += [
            Link(f"{q}ln_1.weight", (h + "input_layernorm.weight",)),
            Link(f"{q}ln_2.weight", (h + "post_attention_layernorm.weight",)),
        ]
        for w in ws:
            out += [
                Link(f"{q}attn.qkv_{w}", (f"{a}q_proj.{w}", f"{a}k_proj.{w}", f"{a}v_proj.{w}"), qkv),
                Link(f"{q}attn.out_proj.{w}", (f"{a}o_proj.{w}",)),
                # SwiGLU: headwise's fc_in is [gate | up], silu applied to the first half.
                Link(f"{q}mlp.fc_in.{w}", (f"{h}mlp.gate_proj.{w}", f"{h}mlp.up_proj.{w}"), (cfg.d_ff, cfg.d_ff)),
                Link(f"{q}mlp.fc_out.{w}", (f"{h}mlp.down_proj.{w}",)),
            ]
    if not cfg.tied_embeddings:
        out.append(Link("lm_head.weight", ("lm_head.weight",)))
    return out
