"""Rotary position embedding (RoPE), rotate-half convention (GPT-NeoX, Llama).

Dimension pairs ``(i, i + D/2)`` of each head vector are rotated by
``position * theta^(-2i/D)``, so that ``q_m . k_n`` depends on ``m - n`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_int, check_real

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    """Applies RoPE to ``(B, H, T, D)`` tensors at positions ``offset .. offset+T-1``.

    Args:
        head_dim: ``D``, must be even.
        theta: the base (10000 in the original paper, 500000 in Llama 3).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        check_int("head_dim", head_dim)
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        # a NaN or infinite base passed `theta <= 0` and made every rotated query and key NaN
        self.theta = check_real("rope_theta", theta, minimum=0, min_open=True, what="a finite positive float")
        self.head_dim = head_dim

    def cos_sin(self, length: int, offset: int, device, dtype) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``(length, D)`` for positions ``offset ..``.

        Angles are computed in float64 (not stored as a buffer, which ``model.to(bf16)``
        would round): at position 4096 a float32 angle is already off by ~5e-4."""
        d = self.head_dim
        inv_freq = self.theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        pos = torch.arange(offset, offset + length, device=device, dtype=torch.float64)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate ``x (B, H, T, D)`` as if its tokens sat at ``offset + t``."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have shape (..., T, head_dim={self.head_dim}), got {tuple(x.shape)}")
        cos, sin = self.cos_sin(x.shape[-2], offset, x.device, x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"
