"""Capture what every attention head computes, without editing the model.

``capture(model)`` finds every :class:`~headwise.attention.MultiHeadAttention` inside a
model (by ``isinstance``, in ``named_modules()`` order, so layer ``i`` is the ``i``-th
attention module met) and registers a head hook on each for the duration of a
``with`` block::

    with capture(model, what=("weights", "z")) as cap:
        model(input_ids)
    cap.weights[0]                  # (B, H, Tq, Tk), layer 0
    cap.z["encoder.blocks.3.attn"]  # (B, H, Tq, Dh): the same layers by module path
    cap.stack("weights")            # (L, B, H, Tq, Tk) when every layer has the same shape

On exit every hook is removed (and with it any backend switch the weights needed), so a model
that is not capturing runs exactly as before (the layer skips the hook machinery when
it has no hooks).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..checks import is_int
from ..models import Decoder

__all__ = [
    "CAPTURABLE", "attention_layers", "n_layers_heads", "is_causal", "context_length", "Capture", "capture",
    "weights_capable", "eval_mode",
]

#: what :func:`capture` can record: ``"weights"`` (attention probabilities
#: ``(B, H, Tq, Tk)``) and ``"z"`` (each head's output before W_O, ``(B, H, Tq, Dh)``).
CAPTURABLE = ("weights", "z")


def attention_layers(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """Every ``MultiHeadAttention`` inside ``model`` as ``(module path, layer)``, in
    ``named_modules()`` order (the model itself is path ``""`` if it is one). A layer
    shared by several parents is listed once. Raises ValueError when there is none."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    if not found:
        raise ValueError(
            f"model ({type(model).__name__}) contains no headwise MultiHeadAttention; "
            "inspect works on models built from headwise.attention (headwise.models, or "
            "Hugging Face checkpoints imported with headwise.models.hf)"
        )
    return found


def n_layers_heads(model: nn.Module) -> tuple[int, int]:
    """``(L, H)`` of a model whose attention layers all have the same head count."""
    layers = attention_layers(model)
    heads = {m.n_heads for _, m in layers}
    if len(heads) != 1:
        raise ValueError(f"attention layers have different head counts {sorted(heads)}; (L, H) tables need one")
    return len(layers), heads.pop()


def is_causal(model: nn.Module) -> bool:
    """Whether ``model`` attends causally: it is, or contains, a headwise ``Decoder``."""
    return any(isinstance(m, Decoder) for m in model.modules())


def context_length(model: nn.Module) -> int | None:
    """The most positions ``model`` takes (``model.cfg.max_len`` of a headwise model;
    None for a model without one)."""
    return getattr(getattr(model, "cfg", None), "max_len", None)


def weights_capable(layer: MultiHeadAttention) -> bool:
    """Whether ``layer``'s configured backend can return attention weights
    (:meth:`MultiHeadAttention.can_return_weights`)."""
    return layer.can_return_weights()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block (dropout would make what is measured noisy), then
    back to the mode the caller had it in, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class _LayerMap(Mapping):
    """Read-only ``{layer index: tensor}`` that also accepts the layer's module path."""

    def __init__(self, names: Sequence[str], store: dict[int, list[Tensor]], what: str) -> None:
        self._names, self._store, self._what = list(names), store, what

    def _index(self, key: int | str) -> int:
        if not (is_int(key) or isinstance(key, str)):
            raise KeyError(f"layer must be an int index or a module path, got {key!r}")
        if isinstance(key, str):
            if key not in self._names:
                raise KeyError(f"no captured layer at module path {key!r}; layers are {self._names}")
            return self._names.index(key)
        n = len(self._names)
        if not -n <= key < n:
            raise KeyError(f"layer index must be in [-{n}, {n}), got {key}")
        return key % n

    def __getitem__(self, key: int | str) -> Tensor:
        i = self._index(key)
        if i not in self._store or not self._store[i]:
            raise KeyError(
                f"nothing captured for {self._what!r} at layer {i} ({self._names[i]!r}); "
                "was the model run inside the `with capture(...)` block?"
            )
        return self._store[i][-1]

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(i for i, v in self._store.items() if v))

    def __len__(self) -> int:
        return sum(1 for v in self._store.values() if v)


class Capture:
    """What one :func:`capture` block recorded.

    Attributes:
        names: module path of each captured layer; ``names[i]`` is layer ``i``.
        weights: ``{layer: (B, H, Tq, Tk)}`` from the most recent forward (empty if
            ``"weights"`` was not requested). Keys are layer indices; module paths
            work too.
        z: ``{layer: (B, H, Tq, Dh)}``, each head's output before W_O.
        n_calls: forwards seen per layer (``{index: count}``).

    With ``keep="all"``, :meth:`history` returns every forward's tensor (e.g. one per
    generated token with a KV cache); with ``keep="last"`` only the latest is held.
    """

    def __init__(self, names: Sequence[str], what: tuple[str, ...], keep: str) -> None:
        self.names: list[str] = list(names)
        self.what = what
        self.keep = keep
        self._weights: dict[int, list[Tensor]] = {}
        self._z: dict[int, list[Tensor]] = {}
        self.n_calls: dict[int, int] = {i: 0 for i in range(len(self.names))}

    @property
    def weights(self) -> Mapping[int, Tensor]:
        return _LayerMap(self.names, self._weights, "weights")

    @property
    def z(self) -> Mapping[int, Tensor]:
        return _LayerMap(self.names, self._z, "z")

    def history(self, what: str, layer: int | str) -> list[Tensor]:
        """Every recorded tensor of ``what`` (``"weights"`` or ``"z"``) at ``layer``,
        oldest first (only the last one unless the capture used ``keep="all"``)."""
        store = self._store(what)
        i = _LayerMap(self.names, store, what)._index(layer)
        return list(store.get(i, []))

    def stack(self, what: str) -> Tensor:
        """The latest ``what`` of every layer stacked: ``(L, B, H, Tq, Tk)`` for
        weights, ``(L, B, H, Tq, Dh)`` for z. Raises ValueError when layers differ in
        shape (different head counts) or some layer recorded nothing."""
        m = _LayerMap(self.names, self._store(what), what)
        tensors = [m[i] for i in range(len(self.names))]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"cannot stack {what!r}: layers have different shapes {sorted(shapes)}")
        return torch.stack(tensors)

    def clear(self) -> None:
        """Drop everything recorded so far (the hooks stay in place)."""
        self._weights.clear()
        self._z.clear()
        self.n_calls = {i: 0 for i in range(len(self.names))}

    def _store(self, what: str) -> dict[int, list[Tensor]]:
        if what == "weights":
            return self._weights
        if what == "z":
            return self._z
        raise ValueError(f"what must be one of {CAPTURABLE}, got {what!r}")

    def _record(self, i: int, z: Tensor, w: Tensor | None, detach: bool, to_cpu: bool) -> None:
        self.n_calls[i] += 1
        for name, t, store in (("z", z, self._z), ("weights", w, self._weights)):
            if name not in self.what or t is None:
                continue
            if detach:
                t = t.detach()
            if to_cpu:
                t = t.cpu()
            if self.keep == "last":
                store[i] = [t]
            else:
                store.setdefault(i, []).append(t)


def _check_what(what: str | Iterable[str]) -> tuple[str, ...]:
    items = (what,) if isinstance(what, str) else tuple(what)
    bad = [w for w in items if w not in CAPTURABLE]
    if not items or bad:
        raise ValueError(f"what must be a non-empty subset of {CAPTURABLE}, got {what!r}")
    return items


def _select_layers(
    found: list[tuple[str, MultiHeadAttention]], layers: Iterable[int | str] | None
) -> list[int]:
    if layers is None:
        return list(range(len(found)))
    names = [n for n, _ in found]
    out = []
    for key in layers:
        if isinstance(key, str) and key in names:
            out.append(names.index(key))
        elif is_int(key) and -len(found) <= key < len(found):
            out.append(key % len(found))
        else:
            raise ValueError(
                f"layers must hold layer indices in [0, {len(found)}) or module paths {names}; got {key!r}"
            )
    return sorted(set(out))


@contextmanager
def capture(
    model: nn.Module,
    what: str | Iterable[str] = ("weights",),
    *,
    layers: Iterable[int | str] | None = None,
    keep: str = "last",
    detach: bool = True,
    to_cpu: bool = False,
) -> Iterator[Capture]:
    """Record attention weights and/or per-head outputs of ``model`` inside a ``with``.

    Args:
        model: any module containing headwise ``MultiHeadAttention`` layers.
        what: ``"weights"`` and/or ``"z"`` (see :data:`CAPTURABLE`).
        layers: indices or module paths of the layers to record (default all);
            ``Capture.names`` still lists every layer so indices keep their meaning.
        keep: ``"last"`` (each forward replaces the previous record) or ``"all"``.
        detach: store detached tensors (set False to backpropagate through them).
        to_cpu: move records to the CPU as they arrive (long GPU runs).

    Yields:
        a :class:`Capture`, filled as the model runs.

    Capturing weights needs a backend that returns them: a layer whose explicitly
    chosen backend cannot (``"sdpa"``, ``"tiled"``) runs on ``"auto"`` for the block
    and goes back on exit (:meth:`MultiHeadAttention.register_head_hook` with
    ``switch_to_auto=True`` does it). Outputs are otherwise unchanged; the hooks
    never replace ``z``.
    """
    items = _check_what(what)
    if keep not in ("last", "all"):
        raise ValueError(f"keep must be 'last' or 'all', got {keep!r}")
    found = attention_layers(model)
    chosen = _select_layers(found, layers)
    cap = Capture([n for n, _ in found], items, keep)
    want_weights = "weights" in items
    handles = []
    try:
        for i in chosen:
            layer = found[i][1]

            def hook(mod: MultiHeadAttention, z: Tensor, w: Tensor | None, _i: int = i) -> None:
                cap._record(_i, z, w, detach, to_cpu)

            handles.append(layer.register_head_hook(hook, need_weights=want_weights, switch_to_auto=True))
        yield cap
    finally:
        for h in handles:
            h.remove()
