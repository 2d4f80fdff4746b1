"""Masks, normalised once into the one form every backend accepts.

Every way a caller can restrict attention (a causal flag, key padding given as a
boolean mask or as per-sequence lengths, a boolean or additive ``attn_mask``) is
turned by :func:`normalize_mask` into a :class:`MaskSpec`:

* ``causal``: query ``i`` sees key ``j`` iff ``j <= i + (Tk - Tq)``. The diagonal is
  aligned to the *bottom right*, so that ``Tq`` new tokens decoded against a KV
  cache of ``Tk - Tq`` earlier tokens see exactly what a full causal pass shows
  them. For ``Tq == Tk`` this is the usual lower triangle.
* ``key_lengths``: ``(B,)`` integer tensor; keys at positions ``>= key_lengths[b]``
  are padding.
* ``bias``: optional additive float tensor, 4-D, each dimension either 1 or the
  full size of ``(B, H, Tq, Tk)``; ``-inf`` forbids a pair.

Boolean masks follow ``torch.nn.MultiheadAttention``: ``True`` means *masked out*
(the pair is not attended to). Query rows that can see no key at all produce an
output of exactly zero in every backend (and zero attention weights), never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..checks import check_key_lengths

__all__ = ["MaskSpec", "normalize_mask", "causal_bool_mask"]


@dataclass(frozen=True)
class MaskSpec:
    """The canonical mask for one attention call of shape ``(B, H, Tq, Tk)``."""

    batch: int
    q_len: int
    k_len: int
    causal: bool = False
    key_lengths: Tensor | None = None
    bias: Tensor | None = None

    @property
    def is_empty(self) -> bool:
        """True when nothing is masked: every query sees every key."""
        return not self.causal and self.key_lengths is None and self.bias is None

    def rows(self, start: int, stop: int) -> MaskSpec:
        """The mask of the call's batch rows ``[start, stop)`` (a bias whose batch
        dimension is 1 is shared, as it broadcasts)."""
        stop = min(stop, self.batch)
        lengths = None if self.key_lengths is None else self.key_lengths[start:stop]
        bias = self.bias
        if bias is not None and bias.shape[0] != 1:
            bias = bias[start:stop]
        return replace(self, batch=stop - start, key_lengths=lengths, bias=bias)

    @property
    def causal_offset(self) -> int:
        """``Tk - Tq``: query ``i`` sees keys ``j <= i + causal_offset``."""
        return self.k_len - self.q_len

    def allowed(self, device: torch.device | None = None) -> Tensor | None:
        """Boolean ``(B|1, 1, Tq, Tk)`` tensor, True where attending is allowed,
        from the causal flag and the key lengths (the bias is not included).
        ``None`` when neither is set."""
        allowed = None
        if self.causal:
            allowed = ~causal_bool_mask(self.q_len, self.k_len, device=device)[None, None]
        if self.key_lengths is not None:
            keys = torch.arange(self.k_len, device=self.key_lengths.device)
            pad_ok = (keys[None, :] < self.key_lengths[:, None])[:, None, None, :]
            allowed = pad_ok if allowed is None else allowed & pad_ok
        return allowed

    def additive(self, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """The whole mask as one additive tensor broadcastable to ``(B, H, Tq, Tk)``
        (0 where allowed, ``-inf`` where forbidden, plus the bias), or ``None``."""
        allowed = self.allowed(device)
        out = None
        if allowed is not None:
            out = torch.zeros(allowed.shape, dtype=dtype, device=device)
            out.masked_fill_(~allowed, float("-inf"))
        if self.bias is not None:
            bias = self.bias.to(dtype)
            out = bias if out is None else out + bias
        return out

    @property
    def may_empty_rows(self) -> bool:
        """Whether some query row may see no key (from the mask's kind alone; False
        means :meth:`fully_masked_rows` is None without building anything)."""
        return (
            (self.causal and self.q_len > self.k_len)
            or self.key_lengths is not None
            or self.bias is not None
            or self.k_len == 0
        )

    def fully_masked_rows(self, device: torch.device) -> Tensor | None:
        """Boolean tensor broadcastable to ``(B, H, Tq, 1)``: True for query rows that
        can see no key. ``None`` when no row can be fully masked."""
        if not self.may_empty_rows:
            return None
        allowed = self.allowed(device)
        if self.bias is not None:
            finite = ~torch.isneginf(self.bias)
            allowed = finite if allowed is None else allowed & finite
        if allowed is None:
            return None
        return ~allowed.any(dim=-1, keepdim=True)


def causal_bool_mask(q_len: int, k_len: int, device: torch.device | None = None) -> Tensor:
    """``(Tq, Tk)`` boolean tensor, True where key ``j`` lies in the future of query
    ``i`` (bottom-right aligned: ``j > i + Tk - Tq``)."""
    q = torch.arange(q_len, device=device)[:, None]
    k = torch.arange(k_len, device=device)[None, :]
    return k > q + (k_len - q_len)


def _check_bool_or_float(name: str, mask: Tensor) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor (True = masked out) or a floating additive "
            f"tensor, got dtype {mask.dtype}"
        )


def normalize_mask(
    *,
    batch: int,
    n_heads: int,
    q_len: int,
    k_len: int,
    device: torch.device,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    key_lengths: Tensor | None = None,
    attn_mask: Tensor | None = None,
    float_dtype: torch.dtype = torch.float32,
) -> MaskSpec:
    """Validate every mask argument and fold them into one :class:`MaskSpec`.

    Args:
        batch, n_heads, q_len, k_len: the call's ``(B, H, Tq, Tk)``.
        causal: mask keys in the future of each query (bottom-right aligned).
        key_padding_mask: ``(B, Tk)``, bool (True = padding) or additive float.
        key_lengths: ``(B,)`` integer tensor of valid key counts, in ``[0, Tk]``.
        attn_mask: bool (True = masked out) or additive float, 2-D ``(Tq, Tk)``,
            3-D ``(B|1, Tq, Tk)`` or 4-D ``(B|1, H|1, Tq, Tk)``.
        float_dtype: dtype of the additive bias that is built.

    Raises:
        TypeError / ValueError naming the argument, what it got and what is accepted.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    lengths = None
    if key_lengths is not None:
        check_key_lengths(key_lengths, batch, k_len, device)
        lengths = key_lengths.to(torch.long)

    bias = None
    if key_padding_mask is not None:
        _check_bool_or_float("key_padding_mask", key_padding_mask)
        if tuple(key_padding_mask.shape) != (batch, k_len):
            raise ValueError(
                f"key_padding_mask must have shape (batch, key_len) = ({batch}, {k_len}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != device:
            raise ValueError(
                f"key_padding_mask is on {key_padding_mask.device} but the inputs are on {device}"
            )
        bias = _to_additive(key_padding_mask, float_dtype)[:, None, None, :]

    if attn_mask is not None:
        _check_bool_or_float("attn_mask", attn_mask)
        if attn_mask.device != device:
            raise ValueError(f"attn_mask is on {attn_mask.device} but the inputs are on {device}")
        m = attn_mask
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[:, None]
        elif m.dim() != 4:
            raise ValueError(
                f"attn_mask must be 2-D (Tq, Tk), 3-D (B, Tq, Tk) or 4-D (B, H, Tq, Tk), "
                f"got {attn_mask.dim()}-D with shape {tuple(attn_mask.shape)}"
            )
        full = (batch, n_heads, q_len, k_len)
        if any(s not in (1, f) for s, f in zip(m.shape, full, strict=True)) or m.shape[-2:] != (
            q_len,
            k_len,
        ):
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not fit (B, H, Tq, Tk) = "
                f"{full}: its last two dims must be ({q_len}, {k_len}) and the others 1 or full"
            )
        m = _to_additive(m, float_dtype)
        bias = m if bias is None else bias + m

    return MaskSpec(batch, q_len, k_len, causal=causal, key_lengths=lengths, bias=bias)


def _to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return out.masked_fill_(mask, float("-inf"))
    return mask.to(dtype)
