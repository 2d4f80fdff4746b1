"""BERT (``BertModel``, ``BertForMaskedLM``, sentence-transformers encoders) <-> headwise
:class:`~headwise.models.Encoder` / :class:`~headwise.models.EncoderForMLM`: the config
translation both ways and the weight map.

BERT's separate ``query``/``key``/``value`` are concatenated along their output rows
into headwise's fused QKV. The pooler has no headwise module: import keeps it among
the extras (:data:`EXTRAS`) and export writes it back.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from .common import ACT_HF, Link, read_act, refuse

__all__ = ["config_from_hf", "config_to_hf", "links"]

#: HF tensors headwise has no module for but keeps (``Pretrained.extras``) for export.
EXTRAS = ("pooler.dense.weight", "pooler.dense.bias")


def config_from_hf(hf: dict) -> ModelConfig:
    refuse(hf, "position_embedding_type", "absolute", ("absolute",), "headwise BERT has learned absolute positions")
    refuse(hf, "is_decoder", False, (False,), "a BERT decoder is not a headwise Encoder")
    refuse(hf, "add_cross_attention", False, (False,), "headwise encoders have no cross-attention")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf.get("intermediate_size", 4 * hf["hidden_size"]),
        max_len=hf.get("max_position_embeddings", 512),
        positions="learned",
        norm="post",
        activation=read_act(hf, "hidden_act", "gelu"),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        type_vocab_size=hf.get("type_vocab_size", 2),
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def config_to_hf(cfg: ModelConfig, *, mlm: bool = False) -> dict[str, Any]:
    """``config.json`` for ``cfg`` as ``BertForMaskedLM`` (``mlm``) or ``BertModel``."""
    return {
        "architectures": ["BertForMaskedLM" if mlm else "BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": ACT_HF[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.attn_dropout,
        "max_position_embeddings": cfg.max_len,
        # BERT always has a token-type table; a model without one exports a single
        # all-zero row, which adds nothing (see _to_hf_state).
        "type_vocab_size": max(cfg.type_vocab_size, 1),
        "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "absolute",
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tied_embeddings,
    }


def links(cfg: ModelConfig, p: str, mlm: bool, prefix: str) -> list[Link]:
    """``p``: our prefix (``""`` or ``"encoder."``); ``prefix``: HF's (``""``/``"bert."``)."""
    qkv = (cfg.d_model, cfg.d_model, cfg.d_model)
    emb = prefix + "embeddings."
    out = [
        Link(f"{p}embeddings.tok.weight", (emb + "word_embeddings.weight",)),
        Link(f"{p}embeddings.pos.weight", (emb + "position_embeddings.weight",)),
        Link(f"{p}embeddings.ln.weight", (emb + "LayerNorm.weight",)),
        Link(f"{p}embeddings.ln.bias", (emb + "LayerNorm.bias",)),
    ]
    if cfg.type_vocab_size > 0:
        out.append(Link(f"{p}embeddings.tok_type.weight", (emb + "token_type_embeddings.weight",)))
    for i in range(cfg.n_layers):
        q, h = f"{p}blocks.{i}.", f"{prefix}encoder.layer.{i}."
        att = h + "attention.self."
        for w in ("weight", "bias"):
            out.append(Link(f"{q}attn.qkv_{w}", tuple(f"{att}{n}.{w}" for n in ("query", "key", "value")), qkv))
            for ours, theirs in (
                ("attn.out_proj", "attention.output.dense"),
                ("ln_1", "attention.output.LayerNorm"),
                ("mlp.fc_in", "intermediate.dense"),
                ("mlp.fc_out", "output.dense"),
                ("ln_2", "output.LayerNorm"),
            ):
                out.append(Link(f"{q}{ours}.{w}", (f"{h}{theirs}.{w}",)))
    if mlm:
        c = "cls.predictions."
        out += [
            Link("head.dense.weight", (c + "transform.dense.weight",)),
            Link("head.dense.bias", (c + "transform.dense.bias",)),
            Link("head.ln.weight", (c + "transform.LayerNorm.weight",)),
            Link("head.ln.bias", (c + "transform.LayerNorm.bias",)),
            Link("head.decoder.bias", (c + "bias",)),
        ]
        if not cfg.tied_embeddings:
            out.append(Link("head.decoder.weight", (c + "decoder.weight",)))
    return out
