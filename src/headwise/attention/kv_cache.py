"""Key/value cache for incremental decoding.

Holds the projected (and, with RoPE, rotated) keys and values of the tokens seen
so far, ``(B, Hkv, T, D)``, in a buffer that grows by doubling so that decoding N
tokens costs O(N) copies, not O(N^2).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KVCache"]


class KVCache:
    """One attention layer's cache. Pass the same object to every forward call of
    that layer while decoding; ``len(cache)`` is the number of cached positions."""

    def __init__(self) -> None:
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self._k = self._v = None
        self._len = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``k (B, Hkv, t, D)``, ``v (B, Hkv, t, Dv)`` and return all cached keys
        and values so far, ``(B, Hkv, T, D)`` and ``(B, Hkv, T, Dv)`` (views)."""
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or (k.dtype, k.device) != (v.dtype, v.device):
            raise ValueError(f"k and v must be 4-D (B, Hkv, t, D) sharing (B, Hkv, t), dtype and device; got k "
                             f"{tuple(k.shape)} {k.dtype} on {k.device}, v {tuple(v.shape)} {v.dtype} on {v.device}")
        t = k.shape[2]
        if self._k is None:
            cap = max(16, t)
            self._k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            self._v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
        elif (
            k.shape[:2] != self._k.shape[:2]
            or k.shape[3] != self._k.shape[3]
            or v.shape[3] != self._v.shape[3]
            or k.dtype != self._k.dtype
            or k.device != self._k.device
        ):
            raise ValueError(
                f"kv_cache holds keys of shape {tuple(self._k.shape[:2])}+(T, "
                f"{self._k.shape[3]}) {self._k.dtype} on {self._k.device}; cannot append keys "
                f"of shape {tuple(k.shape)} {k.dtype} on {k.device} (call reset() for a new "
                f"sequence)"
            )
        need = self._len + t
        if need > self._k.shape[2]:
            cap = max(need, 2 * self._k.shape[2])
            grow_k = self._k.new_empty(*self._k.shape[:2], cap, self._k.shape[3])
            grow_v = self._v.new_empty(*self._v.shape[:2], cap, self._v.shape[3])
            grow_k[:, :, : self._len] = self._k[:, :, : self._len]
            grow_v[:, :, : self._len] = self._v[:, :, : self._len]
            self._k, self._v = grow_k, grow_v
        # The cache stores values, not graph history: decoding runs without grad.
        with torch.no_grad():
            self._k[:, :, self._len : need] = k
            self._v[:, :, self._len : need] = v
        self._len = need
        return self._k[:, :, :need], self._v[:, :, :need]
