"""``layer.heads[i]``: one head's weights of a
:class:`~headwise.attention.MultiHeadAttention` in the textbook orientation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from ..checks import is_int

__all__ = ["HeadView", "HeadSequence"]


@dataclass(frozen=True)
class HeadView:
    """One head's weights as views into the layer's fused storage (no copies: writing
    into them changes the layer). Shapes follow ``x @ W``:

    * ``W_Q (d_model, Dh)``, ``W_K (kdim, Dh)``, ``W_V (vdim, Dh)``, ``W_O (Dh, d_model)``
    * ``b_Q``, ``b_K``, ``b_V`` ``(Dh,)`` or ``None`` without bias.

    With grouped-query attention, ``W_K``/``W_V`` are those of the key/value head
    shared by this head's group (``kv_index``), so writing to them changes every
    head in the group. The views carry gradients to the layer's parameters; to
    write into them, do it under ``torch.no_grad()`` as for any parameter. A layer
    given other projection modules (int8) shows copies read from their ``weight``.
    """

    index: int
    kv_index: int
    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor | None
    b_K: Tensor | None
    b_V: Tensor | None


class _Layer(Protocol):
    """What a :class:`HeadSequence` reads of its layer (a MultiHeadAttention)."""

    n_heads: int

    def head_view(self, i: int) -> HeadView: ...


class HeadSequence(Sequence):
    """``layer.heads``: ``len()`` is the number of query heads; ``[i]`` a :class:`HeadView`."""

    def __init__(self, layer: _Layer) -> None:
        self._layer = layer

    def __len__(self) -> int:
        return self._layer.n_heads

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not is_int(i):  # as a list: TypeError for what is no index (True is not head 1)
            raise TypeError(f"head index must be an int or a slice, got {type(i).__name__} {i!r}")
        if not -n <= i < n:
            raise IndexError(f"head index must be an int in [-{n}, {n}), got {i!r}")
        return self._layer.head_view(i % n)
