"""GPT-2 (``GPT2Model``, ``GPT2LMHeadModel``) <-> headwise :class:`~headwise.models.Decoder`
with learned positions: the config translation both ways and the weight map.

GPT-2's ``c_attn`` is already fused as ``[Q | K | V]``, but it (like every GPT-2 Conv1D)
is stored ``(in, out)``, so the map transposes it.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .common import ACT_HF, Link, read_act, refuse

__all__ = ["config_from_hf", "config_to_hf", "links"]

def config_from_hf(hf: dict) -> ModelConfig:
    refuse(hf, "scale_attn_weights", True, (True,), "headwise scales scores by 1/sqrt(head_dim)")
    refuse(hf, "scale_attn_by_inverse_layer_idx", False, (False,), "no per-layer score scaling")
    refuse(hf, "add_cross_attention", False, (False,), "headwise decoders have no cross-attention")
    d = hf["n_embd"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_len=hf.get("n_positions", 1024),
        positions="learned",
        norm="pre",
        activation=read_act(hf, "activation_function", "gelu_new"),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)),
        # headwise has one dropout for embeddings and residual branches; GPT-2 ships both at 0.1.
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig, *, mlm: bool = False) -> dict[str, Any]:
    """``config.json`` for ``cfg`` as ``GPT2LMHeadModel`` (``mlm`` is unused)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "n_positions": cfg.max_len,
        "activation_function": ACT_HF[cfg.activation],
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "initializer_range": cfg.init_std,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tied_embeddings,
    }


def links(cfg: ModelConfig, prefix: str) -> list[Link]:
    out = [
        Link("embeddings.tok.weight", (prefix + "wte.weight",)),
        Link("embeddings.pos.weight", (prefix + "wpe.weight",)),
        Link("ln_f.weight", (prefix + "ln_f.weight",)),
        Link("ln_f.bias", (prefix + "ln_f.bias",)),
    ]
    for i in range(cfg.n_layers):
        q, h = f"blocks.{i}.", f"{prefix}h.{i}."
        for w in ("weight", "bias"):
            conv = w == "weight"
            out += [
                # c_attn is already [Q | K | V] along its output features.
                Link(f"{q}attn.qkv_{w}", (f"{h}attn.c_attn.{w}",), conv1d=conv),
                Link(f"{q}attn.out_proj.{w}", (f"{h}attn.c_proj.{w}",), conv1d=conv),
                Link(f"{q}mlp.fc_in.{w}", (f"{h}mlp.c_fc.{w}",), conv1d=conv),
                Link(f"{q}mlp.fc_out.{w}", (f"{h}mlp.c_proj.{w}",), conv1d=conv),
                Link(f"{q}ln_1.{w}", (f"{h}ln_1.{w}",)),
                Link(f"{q}ln_2.{w}", (f"{h}ln_2.{w}",)),
            ]
    if not cfg.tied_embeddings:
        out.append(Link("lm_head.weight", ("lm_head.weight",)))
    return out
