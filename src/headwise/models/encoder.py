"""Encoder (BERT/ELECTRA-like): bidirectional self-attention over a whole sequence,
plus the heads that turn its hidden states into masked-token predictions (``MLMHead``)
or replaced-token scores (``RTDHead``).

Layout (names are stable hook points)::

    embeddings   token + position + token type, LayerNorm, dropout   (B, T, E)
    embed_proj   Linear(E, d_model), only when embedding_size != d_model (ELECTRA)
    blocks[i]    Block: .attn (MultiHeadAttention), .mlp, .ln_1, .ln_2
    ln_f         final norm (LayerNorm or RMSNorm), only with norm="pre"
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import Block, Embeddings, activation_module, check_input_ids, init_weights, norm_module
from .config import ModelConfig

__all__ = ["Encoder", "MLMHead", "RTDHead", "EncoderForMLM", "EncoderForRTD", "build_electra"]


class Encoder(nn.Module):
    """A BERT-like encoder: ``input_ids (B, T) -> hidden (B, T, d_model)``.

    Args:
        cfg: the model config.
        embeddings: an :class:`Embeddings` to use instead of building one; pass another
            encoder's ``embeddings`` to share them (ELECTRA's generator and
            discriminator). Its width must be ``cfg.embed_dim``; it is not re-initialised.

    With ``cfg.embedding_size`` set (and different from ``d_model``) the embeddings are
    ``embedding_size`` wide and ``embed_proj`` maps them to ``d_model``, as in ELECTRA.
    """

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        shared = embeddings is not None
        if embeddings is None:
            embeddings = Embeddings(cfg, layer_norm=True)
        elif not isinstance(embeddings, Embeddings):
            raise TypeError(f"embeddings must be an Embeddings, got {type(embeddings).__name__}")
        else:
            _check_shareable(embeddings, cfg)
        self.embeddings = embeddings
        self.embed_proj = (
            nn.Linear(cfg.embed_dim, cfg.d_model) if cfg.embed_dim != cfg.d_model else None
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = norm_module(cfg) if cfg.norm == "pre" else None
        for name, child in self.named_children():
            if not (shared and name == "embeddings"):
                init_weights(child, cfg)

    def forward(
        self,
        input_ids: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Encode ``input_ids (B, T)`` (long) into hidden states ``(B, T, d_model)``.

        Args:
            input_ids: token ids, ``(B, T)`` long.
            key_padding_mask: ``(B, T)`` bool, True = padding: no token attends to it.
                Padding positions still get (meaningless) hidden states.
            token_type_ids: ``(B, T)`` segment ids (None = all type 0).
        """
        check_input_ids(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x


class MLMHead(nn.Module):
    """BERT's masked-LM head: ``dense -> act -> LayerNorm -> decoder (+ bias)``.

    ``hidden (..., d_model) -> logits (..., V)``. The dense layer maps to the embedding
    width ``E`` (ELECTRA's generator; ``E == d_model`` for BERT), and the decoder's
    weight is the token embedding matrix itself when ``cfg.tied_embeddings``.

    Args:
        cfg: the model config.
        word_embeddings: the ``(V, E)`` token embedding to tie the decoder to.
    """

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.embed_dim)
        self.act = activation_module(_head_activation(cfg))
        self.ln = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.embed_dim, cfg.vocab_size)
        init_weights(self, cfg)
        if cfg.tied_embeddings:
            # Tie after init so initialising the head never re-draws the embeddings.
            self.decoder.weight = word_embeddings.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.ln(self.act(self.dense(hidden))))


class RTDHead(nn.Module):
    """ELECTRA's discriminator head: ``dense -> act -> dense(1)``.

    ``hidden (..., d_model) -> logits (...)``: one logit per token, > 0 meaning
    "replaced"."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = activation_module(_head_activation(cfg))
        self.out = nn.Linear(cfg.d_model, 1)
        init_weights(self, cfg)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)


class EncoderForMLM(nn.Module):
    """:class:`Encoder` + :class:`MLMHead` (BERT's ``BertForMaskedLM`` layout).

    ``forward(input_ids (B, T), key_padding_mask, token_type_ids) -> logits (B, T, V)``;
    to score only some positions (cheaper: the vocabulary projection dominates), run
    ``model.head(model.encoder(...)[selected])``.
    """

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, embeddings)
        self.head = MLMHead(cfg, self.encoder.embeddings.tok)

    def forward(
        self,
        input_ids: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        return self.head(self.encoder(input_ids, key_padding_mask, token_type_ids))


class EncoderForRTD(nn.Module):
    """:class:`Encoder` + :class:`RTDHead` (ELECTRA's ``ElectraForPreTraining`` layout).

    ``forward(input_ids (B, T), key_padding_mask, token_type_ids) -> logits (B, T)``.
    """

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, embeddings)
        self.head = RTDHead(cfg)

    def forward(
        self,
        input_ids: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        return self.head(self.encoder(input_ids, key_padding_mask, token_type_ids))


def build_electra(
    cfg: ModelConfig, generator_fraction: float = 0.25
) -> tuple[EncoderForMLM, EncoderForRTD]:
    """ELECTRA's pair: ``(generator, discriminator)`` sharing one :class:`Embeddings`
    (token, position and type tables and their LayerNorm, as ELECTRA shares its
    ``embeddings`` scope). The generator is ``generator_config(cfg, generator_fraction)``
    and projects the shared ``embed_dim``-wide embeddings to its own width."""
    from .presets import generator_config

    discriminator = EncoderForRTD(cfg)
    generator = EncoderForMLM(
        generator_config(cfg, generator_fraction), discriminator.encoder.embeddings
    )
    return generator, discriminator


def _head_activation(cfg: ModelConfig) -> str:
    # A gated activation needs two inputs; heads are single dense layers, so they use
    # GELU with a SwiGLU trunk.
    return "gelu" if cfg.activation == "swiglu" else cfg.activation


def _check_shareable(embeddings: Embeddings, cfg: ModelConfig) -> None:
    """Shared embeddings must have exactly the tables this config would build."""
    want = {
        "vocab_size": cfg.vocab_size,
        "embed_dim": cfg.embed_dim,
        "learned positions": cfg.max_len if cfg.positions == "learned" else None,
        "type_vocab_size": cfg.type_vocab_size or None,
    }
    have = {
        "vocab_size": embeddings.tok.num_embeddings,
        "embed_dim": embeddings.tok.embedding_dim,
        "learned positions": None if embeddings.pos is None else embeddings.pos.num_embeddings,
        "type_vocab_size": None if embeddings.tok_type is None else embeddings.tok_type.num_embeddings,
    }
    bad = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if bad:
        detail = ", ".join(f"{k}: embeddings have {h}, config wants {w}" for k, (h, w) in bad.items())
        raise ValueError(f"embeddings cannot be shared with this config ({detail})")
