"""torch.nn.functional.scaled_dot_product_attention: PyTorch's fused kernels
(FlashAttention-style on CPU and CUDA, memory-efficient, cuDNN), chosen by PyTorch.

Causal self-attention on the CPU at lengths where torch's kernel would compute the
masked half too goes through :mod:`.cpu_causal`, which calls the same kernel on the
visible blocks only; short bfloat16 calls on the CPU, where that kernel is slow, go
through :mod:`.cpu_short`. It never returns the weights.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..masks import MaskSpec
from .base import AttentionCall, Backend, zero_masked_rows
from .cpu_causal import blocked_causal_applies, blocked_causal_attention
from .cpu_short import short_bf16_applies, short_bf16_attention


class SdpaBackend(Backend):
    name = "sdpa"
    priority = 20
    timed_by_auto = True  # on CUDA, auto times it against the other candidates

    def unsupported(self, call: AttentionCall) -> str | None:
        if call.need_weights:
            return "it cannot return attention weights (need_weights=True)"
        return None

    def attend(self, q, k, v, mask: MaskSpec, *, scale, dropout_p, need_weights):
        if short_bf16_applies(q, k):
            return short_bf16_attention(q, k, v, mask, scale=scale, dropout_p=dropout_p), None
        n_heads, n_kv = q.shape[1], k.shape[1]
        if n_kv != n_heads:
            # enable_gqa is not served by every fused kernel; repeating is what the
            # efficient kernels would otherwise fall back to.
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
        plain_causal = (
            mask.causal
            and mask.q_len == mask.k_len
            and mask.key_lengths is None
            and mask.bias is None
        )
        if plain_causal and blocked_causal_applies(q, k, v, dropout_p):
            return blocked_causal_attention(q, k, v, scale), None
        if mask.is_empty or plain_causal:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout_p, is_causal=plain_causal, scale=scale
            )
            return out, None
        additive = mask.additive(q.dtype, q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=additive, dropout_p=dropout_p, scale=scale
        )
        return zero_masked_rows(out, mask), None
