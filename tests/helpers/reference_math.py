"""An independent float64 reference for the attention layer, written from the
textbook definition with the per-head weight views and explicit masks. It shares
no code with headwise's masks or backends."""

from __future__ import annotations

import math

import torch


def allowed_matrix(
    batch: int,
    n_heads: int,
    q_len: int,
    k_len: int,
    *,
    causal: bool = False,
    key_padding: torch.Tensor | None = None,  # (B, Tk) bool, True = pad
    key_lengths: torch.Tensor | None = None,  # (B,)
    bool_mask: torch.Tensor | None = None,  # broadcastable to (B, H, Tq, Tk), True = masked
) -> torch.Tensor:
    """(B, H, Tq, Tk) bool, True where query i may attend key j."""
    ok = torch.ones(batch, n_heads, q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        for j in range(k_len):
            if causal and j > i + (k_len - q_len):
                ok[:, :, i, j] = False
    if key_padding is not None:
        ok &= ~key_padding[:, None, None, :]
    if key_lengths is not None:
        for b in range(batch):
            ok[b, :, :, int(key_lengths[b]) :] = False
    if bool_mask is not None:
        ok &= ~bool_mask.expand(batch, n_heads, q_len, k_len)
    return ok


def layer_reference(
    layer,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    additive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, Tq, d_model) and weights (B, H, Tq, Tk) in float64, one head at a
    time from ``layer.heads[i]``; rows with no allowed key give zero."""
    x = x.double()
    src = x if context is None else context.double()
    outs = []
    weights = []
    for head in layer.heads:
        q = x @ head.W_Q.double() + (0 if head.b_Q is None else head.b_Q.double())
        k = src @ head.W_K.double() + (0 if head.b_K is None else head.b_K.double())
        v = src @ head.W_V.double() + (0 if head.b_V is None else head.b_V.double())
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if additive is not None:
            s = s + additive.double().expand(x.shape[0], layer.n_heads, *s.shape[-2:])[
                :, head.index
            ]
        if allowed is not None:
            a = allowed[:, head.index]
            s = s.masked_fill(~a, float("-inf"))
        p = torch.softmax(s, dim=-1)
        p = torch.nan_to_num(p, nan=0.0)  # fully masked rows: zero by convention
        weights.append(p)
        outs.append((p @ v) @ head.W_O.double())
    out = sum(outs) + (0 if layer.out_proj.bias is None else layer.out_proj.bias.double())
    return out, torch.stack(weights, dim=1)


def attention_reference(q, k, v, *, causal=False, key_lengths=None, scale=None, dtype=torch.float64):
    """softmax(q k^T * scale + mask) v from the textbook, in ``dtype`` (float64 by
    default): K/V heads repeated for GQA, masks as explicit index comparisons, rows
    with no visible key set to zero (their gradients too). Returns (out, lse)."""
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    tq, tk = s.shape[-2:]
    i = torch.arange(tq, device=q.device)[:, None]
    j = torch.arange(tk, device=q.device)[None, :]
    ok = torch.ones(q.shape[0], 1, tq, tk, dtype=torch.bool, device=q.device)
    if causal:
        ok = ok & (j <= i + (tk - tq))
    if key_lengths is not None:
        ok = ok & (j < key_lengths.to(q.device)[:, None, None, None])
    s = s.masked_fill(~ok, float("-inf"))
    empty = ~ok.any(dim=-1, keepdim=True)
    lse = torch.logsumexp(torch.where(empty, 0.0, s).to(torch.float64), dim=-1)
    lse = lse.masked_fill(empty[..., 0], float("-inf"))
    p = torch.softmax(torch.where(empty, 0.0, s), dim=-1) * (~empty)
    return (p.to(dtype) @ v), lse
