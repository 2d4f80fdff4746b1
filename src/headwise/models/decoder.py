"""Decoder (GPT-like): causal self-attention, a language-model head, and sampling
with one KV cache per layer.

Layout (names are stable hook points)::

    embeddings   token (+ learned position) embeddings, dropout          (B, T, d_model)
    blocks[i]    Block: .attn (MultiHeadAttention, causal), .mlp, .ln_1, .ln_2
    ln_f         final norm (LayerNorm or RMSNorm), only with norm="pre" (GPT-2)
    lm_head      Linear(d_model, V, bias=False), weight = token embedding when tied
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import KVCache
from ..checks import check_int, check_real
from .blocks import Block, Embeddings, check_input_ids, init_weights, norm_module
from .config import ModelConfig

__all__ = ["Decoder"]


class Decoder(nn.Module):
    """A GPT-like decoder: ``input_ids (B, T) -> next-token logits (B, T, V)``.

    ``logits[:, t]`` depends on ``input_ids[:, :t+1]`` only. ``embedding_size`` and
    ``type_vocab_size`` are encoder features and must be left unset.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.embedding_size != cfg.d_model:
            raise ValueError(
                f"Decoder needs embedding_size None or equal to d_model={cfg.d_model}, "
                f"got embedding_size={cfg.embedding_size}"
            )
        if cfg.type_vocab_size != 0:
            raise ValueError(
                f"Decoder has no token type embeddings: type_vocab_size must be 0, "
                f"got {cfg.type_vocab_size}"
            )
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, layer_norm=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = norm_module(cfg) if cfg.norm == "pre" else None
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg)
        if cfg.tied_embeddings:
            self.lm_head.weight = self.embeddings.tok.weight

    def forward(
        self,
        input_ids: Tensor,
        kv_caches: list[KVCache] | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        head: bool = True,
    ) -> Tensor:
        """Logits ``(B, T, V)`` for ``input_ids (B, T)`` (long); with ``head=False`` the
        hidden states ``(B, T, d_model)`` that ``lm_head`` would read (see
        :meth:`hidden_states`).

        Args:
            input_ids: token ids ``(B, T)``; with ``kv_caches``, the new tokens only.
            kv_caches: one :class:`KVCache` per block (``len == n_layers``). The new
                tokens are placed after the ``len(kv_caches[0])`` cached ones, their keys
                and values appended, and attention runs over everything cached.
            key_padding_mask: ``(B, Tk)`` bool, True = padding, over all keys (cached +
                new). Not needed for right padding: causal attention never lets a real
                token see the padding after it.
        """
        x = self.hidden_states(input_ids, kv_caches, key_padding_mask=key_padding_mask)
        return self.lm_head(x) if head else x

    def hidden_states(
        self,
        input_ids: Tensor,
        kv_caches: list[KVCache] | None = None,
        *,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """What ``lm_head`` reads: the final hidden states ``(B, T, d_model)`` (after
        ``ln_f``); arguments as for :meth:`forward`. The CLM objective takes them
        (``forward(..., head=False)``) and projects them together with its loss
        (:func:`headwise.objectives.fused_loss.linear_cross_entropy`)."""
        check_input_ids(input_ids)
        if kv_caches is not None and len(kv_caches) != len(self.blocks):
            raise ValueError(
                f"kv_caches must hold one KVCache per block ({len(self.blocks)}), "
                f"got {len(kv_caches)}"
            )
        if kv_caches is not None:
            bad = [i for i, c in enumerate(kv_caches) if not isinstance(c, KVCache)]
            if bad:
                raise TypeError(f"kv_caches must hold KVCache objects (new_kv_caches()), got "
                                f"{type(kv_caches[bad[0]]).__name__} at index {bad[0]}")
            lengths = [len(c) for c in kv_caches]
            if len(set(lengths)) > 1:  # (was: the new tokens placed after block 0's, the others' ignored)
                raise ValueError(f"kv_caches must all hold the same number of tokens (one sequence's keys "
                                 f"per block), got {lengths}; reset() them all for a new sequence")
        offset = len(kv_caches[0]) if kv_caches is not None else 0
        x = self.embeddings(input_ids, offset=offset)
        for i, block in enumerate(self.blocks):
            cache = kv_caches[i] if kv_caches is not None else None
            x = block(x, causal=True, key_padding_mask=key_padding_mask, kv_cache=cache)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x

    def new_kv_caches(self) -> list[KVCache]:
        """A fresh, empty :class:`KVCache` for every block."""
        return [KVCache() for _ in self.blocks]

    @torch.no_grad()
    def positions_left(self, prompt_len: int) -> int | None:
        """How many tokens :meth:`generate` may add to a prompt of ``prompt_len`` tokens:
        what the learned positions leave (may be <= 0), or None when positions do not
        bound the length (rotary)."""
        return self.cfg.max_len - prompt_len if self.cfg.positions == "learned" else None

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue ``input_ids (B, T)`` by up to ``max_new_tokens`` tokens.

        The prompt runs once through the model, filling one KV cache per block; each new
        token then costs one single-token forward. Runs in eval mode (no dropout) and
        restores the training flag afterwards.

        Args:
            input_ids: prompt ``(B, T)``, long, ``T >= 1``.
            max_new_tokens: number of tokens to add (>= 0).
            temperature: softmax temperature, finite and >= 0; ``0`` means greedy (argmax).
            top_k: sample only among the ``top_k`` most likely tokens, fewer than the
                ``vocab_size`` (None: among every token); not with ``temperature=0``.
            eos_id: once a sequence emits it, the rest of its row is filled with it;
                generation stops early when every row has finished.
            generator: random source for sampling (on the model's device).

        Returns:
            ``(B, T + n)`` long, the prompt followed by ``n <= max_new_tokens`` tokens.
        """
        check_input_ids(input_ids)
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids must hold at least one prompt token, got length 0")
        # a nan or infinite temperature gave torch.multinomial's 'probability tensor contains
        # nan' (or, with inf, uniform sampling that reads as the model's)
        temperature = check_real("temperature", temperature, minimum=0,
                                 what="a finite float >= 0 (0 = greedy)")
        vocab = self.cfg.vocab_size
        check_int("top_k", top_k, none_ok=True, maximum=vocab - 1,
                  what=f"a positive int below vocab_size={vocab} (None samples among every token)")
        if temperature == 0 and top_k is not None:  # (was: taken, and ignored)
            raise ValueError(f"top_k={top_k} with temperature=0: greedy decoding takes the most likely token, "
                             "so top_k changes nothing; drop top_k or give a temperature above 0")
        check_int("eos_id", eos_id, none_ok=True, minimum=0, maximum=vocab - 1,
                  what=f"a token id in [0, {vocab})")
        left = self.positions_left(input_ids.shape[1])
        if left is not None and max_new_tokens > left:
            raise ValueError(
                f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} = "
                f"{input_ids.shape[1] + max_new_tokens} exceeds max_len={self.cfg.max_len} of the learned positions"
            )
        if max_new_tokens == 0:
            return input_ids

        was_training = self.training
        self.eval()
        try:
            caches = self.new_kv_caches()
            logits = self(input_ids, caches)[:, -1]
            out = [input_ids]
            finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for step in range(max_new_tokens):
                token = _sample(logits, temperature, top_k, generator).to(input_ids.dtype)
                if eos_id is not None:
                    token = token.masked_fill(finished, eos_id)
                    finished |= token == eos_id
                out.append(token[:, None])
                if step + 1 == max_new_tokens or (eos_id is not None and bool(finished.all())):
                    break
                logits = self(token[:, None], caches)[:, -1]
        finally:
            self.train(was_training)
        return torch.cat(out, dim=1)


def _sample(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    """One token id per row of ``logits (B, V)`` -> ``(B,)``."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # in float64 (which holds any temperature the CLI accepts), shifted to a maximum of 0 first:
    # a tiny temperature gives -inf for all but the best tokens, never inf - inf = nan
    logits = logits.double()
    logits = logits - logits.amax(dim=-1, keepdim=True)
    # the top k before the temperature: a huge one makes the scaled logits subnormal, flushed
    # to 0 where denormals are, and ties at 0 kept every token in the draw (was: --top-k ignored)
    drop = None
    if top_k is not None:  # generate checked it is below the vocabulary size
        drop = logits < torch.topk(logits, top_k, dim=-1).values[:, -1:]
    logits = logits / temperature
    if drop is not None:
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
