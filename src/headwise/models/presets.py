"""Named configs: ``tiny`` for CPU experiments, and three published models whose
parameter counts the built models reproduce exactly (tested against Hugging Face
transformers):

=================  ==============================  =============================
preset             headwise model                  Hugging Face class, same count
=================  ==============================  =============================
``bert-base``      ``Encoder``                     ``BertModel(add_pooling_layer=False)``
``bert-base``      ``EncoderForMLM``               ``BertForMaskedLM``
``electra-small``  ``EncoderForRTD``               ``ElectraForPreTraining``
``electra-small``  ``EncoderForMLM(generator_      ``ElectraForMaskedLM`` of the same
                   config(cfg))``                  widths (64 wide, 1 head, FFN 256)
``gpt2-small``     ``Decoder``                     ``GPT2LMHeadModel`` (tied head)
=================  ==============================  =============================

BERT's pooler (the ``[CLS]`` dense + tanh used by next-sentence prediction) is not
part of headwise's Encoder: ``BertModel`` with its pooler has 768*768 + 768 more.
"""

from __future__ import annotations

from ..checks import check_real
from .config import ModelConfig

__all__ = ["PRESETS", "get_preset", "generator_config"]

#: what the CPU presets share: 128 wide, 4 layers of 4 heads, pre-norm, no dropout.
_CPU = dict(
    vocab_size=8192,
    d_model=128,
    n_layers=4,
    n_heads=4,
    d_ff=512,
    norm="pre",
    dropout=0.0,
    attn_dropout=0.0,
    activation="gelu",
    layer_norm_eps=1e-5,
)

#: BERT's architecture, which ELECTRA keeps: its WordPiece vocabulary, 512 learned
#: positions, two token types, post-norm, GELU, dropout 0.1.
_BERT = dict(
    vocab_size=30522,
    max_len=512,
    positions="learned",
    norm="post",
    dropout=0.1,
    attn_dropout=0.1,
    activation="gelu",
    layer_norm_eps=1e-12,
    type_vocab_size=2,
)

PRESETS: dict[str, ModelConfig] = {
    # Trains on 2 CPU cores in minutes; vocab_size is a placeholder to override with the
    # tokenizer's (get_preset("tiny", vocab_size=tok.vocab_size)).
    "tiny": ModelConfig(**_CPU, max_len=128, positions="learned"),
    # A character-level GPT for the CPU: the recipe headwise.train.recipes["shakespeare-char"]
    # trains it (rotary positions, no biases, tied embeddings); vocab_size as for tiny.
    "shakespeare-char": ModelConfig(**_CPU, max_len=256, positions="rope", bias=False, tied_embeddings=True),
    # google/electra-small-discriminator: 256 wide, 128-wide shared embeddings.
    "electra-small": ModelConfig(**_BERT, d_model=256, n_layers=12, n_heads=4, d_ff=1024, embedding_size=128),
    # bert-base-uncased.
    "bert-base": ModelConfig(**_BERT, d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    # gpt2 (124M).
    "gpt2-small": ModelConfig(
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_ff=3072,
        max_len=1024,
        positions="learned",
        norm="pre",
        dropout=0.1,
        attn_dropout=0.1,
        activation="gelu_tanh",
        layer_norm_eps=1e-5,
        tied_embeddings=True,
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The config named ``name`` (one of :data:`PRESETS`), with any field replaced by
    ``overrides`` (validated), e.g. ``get_preset("tiny", vocab_size=tok.vocab_size)``."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].replace(**overrides)  # which refuses an unknown field, naming the known ones


def generator_config(cfg: ModelConfig, fraction: float = 0.25) -> ModelConfig:
    """ELECTRA's generator for discriminator ``cfg``: ``d_model``, ``d_ff`` and
    ``n_heads`` scaled by ``fraction`` (ELECTRA's "generator size" multiplier), same
    depth, and ``embedding_size`` pinned to the discriminator's embedding width so both
    can share one embedding table (each projects it to its own width).

    Head width is kept when ``head_dim`` is explicit; otherwise it stays
    ``d_model // n_heads`` of the scaled sizes. Raises ValueError if the scaled sizes
    do not divide evenly.
    """
    check_real("fraction", fraction, minimum=0, maximum=1, min_open=True, what="in (0, 1]")
    d_model = round(cfg.d_model * fraction)
    n_heads = max(1, round(cfg.n_heads * fraction))
    d_ff = round(cfg.d_ff * fraction)
    if min(d_model, d_ff) < 1:
        raise ValueError(
            f"fraction={fraction!r} scales d_model={cfg.d_model} to {d_model} and d_ff={cfg.d_ff} "
            f"to {d_ff}; the generator needs both >= 1, so use a larger fraction"
        )
    n_kv_heads = None
    if not cfg.is_default("n_kv_heads"):
        # Keep the grouping ratio; at least one K/V head.
        n_kv_heads = max(1, n_heads * cfg.n_kv_heads // cfg.n_heads)
    return cfg.replace(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=d_ff,
        embedding_size=cfg.embedding_size,
    )
