"""What :class:`~headwise.attention.MultiHeadAttention` asks of a projection module it
is given instead of its own weights (the int8 layer's :class:`Int8Linear` modules, for
one), and the checks it makes of one."""

from __future__ import annotations

from itertools import chain
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["Projection", "check_projection", "module_device"]


class Projection(Protocol):
    """What :class:`MultiHeadAttention` asks of a projection module it is given
    (``qkv_proj``, ``q_proj``/``k_proj``/``v_proj`` or ``out_proj``); ``nn.Linear`` and
    :class:`headwise.formats.Int8Linear` are two.

    * ``proj(x)`` maps ``x (..., in_features)`` to ``(..., out_features)`` in ``x``'s
      dtype, for any floating-point ``x`` the module accepts (the layer checks the
      input's dtype against the weights only for the Q/K/V weights it holds itself).
    * ``weight``: the ``(out_features, in_features)`` matrix it applies, as a float
      tensor (a view or a fresh dequantised copy); the layer reads it for
      ``layer.heads`` and the shape check at construction, never in ``forward``.
    * ``bias``: ``(out_features,)`` or ``None``.
    * Its tensors (parameters or buffers) live on the device inputs must come from.

    A fused ``qkv_proj`` has ``out_features = (H + 2*Hkv) * Dh``, rows ordered as the
    layer's own ``qkv_weight`` (every head's Q, then K, then V); given cross-attention
    context of width ``d_model`` it is run on the context and its Q rows are dropped.
    """

    weight: Tensor
    bias: Tensor | None

    def __call__(self, x: Tensor) -> Tensor: ...


def check_projection(name: str, proj: object, shape: tuple[int, int]) -> None:
    """Raise unless ``proj`` is a module with ``weight`` of ``shape`` (out, in) and a ``bias``."""
    # checked by hand: a runtime Protocol check reads attributes statically (Python
    # 3.12), which misses an nn.Module's parameters
    if not isinstance(proj, nn.Module) or not all(hasattr(proj, a) for a in ("weight", "bias")):
        raise TypeError(f"{name} must be an nn.Module with weight and bias (a Projection), "
                        f"got {type(proj).__name__}")
    got = tuple(proj.weight.shape)
    if got != shape:
        raise ValueError(f"{name}.weight must have shape {shape} (out, in) for this layer, got {got}")


def module_device(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter or buffer (None if it has none)."""
    t = next(chain(module.parameters(), module.buffers()), None)
    return None if t is None else t.device
