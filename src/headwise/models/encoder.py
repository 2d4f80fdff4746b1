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

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..kernels.cpu_linear import hooked, run_linear
from .blocks import Block, Embeddings, activation_module, check_input_ids, init_weights, norm_module
from .config import ModelConfig
from .presets import generator_config

__all__ = ["Encoder", "MLMHead", "RTDHead", "EncoderForMLM", "EncoderForRTD", "build_electra"]


class Encoder(nn.Module):
    """A BERT-like encoder: ``input_ids (B, T) -> hidden (B, T, d_model)``.

    Args:
        cfg: the model config.
        embeddings: an :class:`Embeddings` to use instead of building one; pass another
            encoder's ``embeddings`` to share them (ELECTRA's generator and
            discriminator). Its width must be ``cfg.embedding_size``; it is not re-initialised.

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
            nn.Linear(cfg.embedding_size, cfg.d_model) if cfg.embedding_size != cfg.d_model else None
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
        *,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Encode ``input_ids (B, T)`` (long) into hidden states ``(B, T, d_model)``.

        Args:
            input_ids: token ids, ``(B, T)`` long.
            key_padding_mask: ``(B, T)`` bool, True = padding: no token attends to it.
                Padding positions still get (meaningless) hidden states.
            token_type_ids: ``(B, T)`` segment ids (None = all type 0).
            rows: ``(B, T)`` bool: only these positions' hidden states are wanted (the
                masked positions of MLM). Returns ``(N, d_model)``, equal to
                ``forward(...)[rows]``, and the last block computes its queries, MLP and
                norms at those positions only (keys and values still at every position):
                with 15% of the positions that is about two thirds of the last block's
                work saved. The last block runs in full where that would change what
                is observed: head hooks or forward hooks in it, quantized layers, or
                rotary positions.
        """
        check_input_ids(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        if self.embed_proj is not None:
            x = run_linear(self.embed_proj, x)
        narrow = rows is not None and self._can_narrow_last_block()
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if narrow and i == last:
                picked = _row_slots(rows)
                if picked is not None:
                    idx, valid = picked
                    xs = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
                    xs = block(xs, key_padding_mask=key_padding_mask, context=x)
                    if self.ln_f is not None:
                        xs = self.ln_f(xs)
                    return xs[valid]
            x = block(x, key_padding_mask=key_padding_mask)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x if rows is None else x[rows]

    def _can_narrow_last_block(self) -> bool:
        if self.cfg.positions == "rope" or not len(self.blocks):
            return False  # rotary keys are only rotated in self-attention
        last = self.blocks[-1]
        # exactly the float layers: a quantized one scales its inputs per tensor, so
        # fewer rows would change its numbers
        if type(last.attn) is not MultiHeadAttention or last.attn._head_hooks:
            return False
        if any(type(m) is not nn.Linear for m in (last.mlp.fc_in, last.mlp.fc_out)):
            return False
        mods = [*last.modules()] + ([self.ln_f] if self.ln_f is not None else [])
        return not any(hooked(m) for m in mods)


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
        self.dense = nn.Linear(cfg.d_model, cfg.embedding_size)
        self.act = activation_module(_head_activation(cfg))
        self.ln = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.embedding_size, cfg.vocab_size)
        init_weights(self, cfg)
        if cfg.tied_embeddings:
            # Tie after init so initialising the head never re-draws the embeddings.
            self.decoder.weight = word_embeddings.weight

    def forward(self, hidden: Tensor) -> Tensor:
        return run_linear(self.decoder, self.ln(self.act(run_linear(self.dense, hidden))))


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
        return run_linear(self.out, self.act(run_linear(self.dense, hidden))).squeeze(-1)


class _EncoderWithHead(nn.Module):
    """An :class:`Encoder` (``encoder``) and a head on its hidden states (``head``, from
    the subclass's ``_make_head``): ``forward`` runs one after the other."""

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, embeddings)
        self.head = self._make_head(cfg)

    def _make_head(self, cfg: ModelConfig) -> nn.Module:
        raise NotImplementedError

    def forward(
        self,
        input_ids: Tensor,
        key_padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        return self.head(self.encoder(input_ids, key_padding_mask, token_type_ids))


class EncoderForMLM(_EncoderWithHead):
    """:class:`Encoder` + :class:`MLMHead` (BERT's ``BertForMaskedLM`` layout).

    ``forward(input_ids (B, T), key_padding_mask, token_type_ids) -> logits (B, T, V)``;
    to score only some positions (cheaper: the vocabulary projection dominates), run
    ``model.head(model.encoder(...)[selected])``.
    """

    def _make_head(self, cfg: ModelConfig) -> nn.Module:
        return MLMHead(cfg, self.encoder.embeddings.tok)


class EncoderForRTD(_EncoderWithHead):
    """:class:`Encoder` + :class:`RTDHead` (ELECTRA's ``ElectraForPreTraining`` layout).

    ``forward(input_ids (B, T), key_padding_mask, token_type_ids) -> logits (B, T)``.
    """

    def _make_head(self, cfg: ModelConfig) -> nn.Module:
        return RTDHead(cfg)


def build_electra(
    cfg: ModelConfig, generator_fraction: float = 0.25
) -> tuple[EncoderForMLM, EncoderForRTD]:
    """ELECTRA's pair: ``(generator, discriminator)`` sharing one :class:`Embeddings`
    (token, position and type tables and their LayerNorm, as ELECTRA shares its
    ``embeddings`` scope). The generator is ``generator_config(cfg, generator_fraction)``
    and projects the shared ``embedding_size``-wide embeddings to its own width."""
    discriminator = EncoderForRTD(cfg)
    generator = EncoderForMLM(
        generator_config(cfg, generator_fraction), discriminator.encoder.embeddings
    )
    return generator, discriminator


def _row_slots(rows: Tensor) -> tuple[Tensor, Tensor] | None:
    """For ``rows (B, T)`` bool: ``idx (B, m)``, each sequence's selected positions in
    order, padded (with other positions) to the largest count ``m``, and ``valid (B, m)``
    marking the real ones, so that ``x.gather(1, idx)[valid] == x[rows]``. None when
    nothing is selected."""
    counts = rows.sum(dim=1)
    m = int(counts.max()) if rows.numel() else 0
    if m == 0:
        return None
    # stable: selected positions (key 0) first, each group in its original order
    idx = torch.argsort((~rows).to(torch.uint8), dim=1, stable=True)[:, :m]
    valid = torch.arange(m, device=rows.device) < counts.unsqueeze(1)
    return idx, valid


def _head_activation(cfg: ModelConfig) -> str:
    # A gated activation needs two inputs; heads are single dense layers, so they use
    # GELU with a SwiGLU trunk.
    return "gelu" if cfg.activation == "swiglu" else cfg.activation


def _check_shareable(embeddings: Embeddings, cfg: ModelConfig) -> None:
    """Shared embeddings must have exactly the tables this config would build."""
    want = {
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "learned positions": cfg.max_len if cfg.positions == "learned" else None,
        "type_vocab_size": cfg.type_vocab_size or None,
    }
    have = {
        "vocab_size": embeddings.tok.num_embeddings,
        "embedding_size": embeddings.tok.embedding_dim,
        "learned positions": None if embeddings.pos is None else embeddings.pos.num_embeddings,
        "type_vocab_size": None if embeddings.tok_type is None else embeddings.tok_type.num_embeddings,
    }
    bad = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    if bad:
        detail = ", ".join(f"{k}: embeddings have {h}, config wants {w}" for k, (h, w) in bad.items())
        raise ValueError(f"embeddings cannot be shared with this config ({detail})")
