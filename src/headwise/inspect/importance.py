"""How much does the model need each head? Importance, ablation and pruning.

Everything acts on each head's output ``z (B, H, T, Dh)`` **before** W_O, through
:meth:`MultiHeadAttention.register_head_hook`, so it works for any headwise model
(trained here or imported) without editing it; hooks are removed on exit.

* :func:`head_importance`: Michel et al. (2019, "Are sixteen heads really better than
  one?"): multiply each head's output by a mask variable ``m[l, h] = 1`` and take
  ``I = sum over batches of |dL/dm|``, then divide each layer's row by its L2 norm.
* :func:`ablate_heads`: zero a set of heads (``mode="zero"``), or replace their output
  by its mean over data (``mode="mean"``, from :func:`head_means`), which removes the
  information a head carries but not its average contribution to the residual stream.
* :func:`pruning_curve`: the task metric as ever more of the least important heads
  are ablated.

The task is the caller's: ``loss_fn(model, batch) -> scalar tensor`` and
``metric_fn(model, batch) -> float`` run the model on a batch in whatever way it needs
(MLM, CLM, a classifier on an imported encoder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_real, is_int
from .capture import attention_layers, capture, eval_mode, n_layers_heads

__all__ = [
    "ABLATION_MODES",
    "head_mask",
    "head_importance",
    "head_means",
    "heads_to_mask",
    "ablate_heads",
    "pruning_curve",
]

ABLATION_MODES = ("zero", "mean")


def _check_lh(name: str, t: Any, shape: tuple[int, int]) -> Tensor:
    if not isinstance(t, Tensor) or tuple(t.shape) != shape:
        raise ValueError(f"{name} must be a tensor of shape (L, H) = {shape}, got {tuple(getattr(t, 'shape', ()))}")
    return t


@contextmanager
def head_mask(model: nn.Module, mask: Tensor) -> Iterator[None]:
    """Multiply every head's output by ``mask (L, H)`` (float; may require grad) while
    the block runs: head ``h`` of layer ``l`` contributes ``mask[l, h] * z_h W_O^h``."""
    shape = n_layers_heads(model)
    _check_lh("mask", mask, shape)
    handles = []
    try:
        for i, (_, layer) in enumerate(attention_layers(model)):

            def hook(mod: nn.Module, z: Tensor, w: Tensor | None, _i: int = i) -> Tensor:
                return z * mask[_i].to(z.dtype)[None, :, None, None]

            handles.append(layer.register_head_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def head_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
    *,
    normalize: bool = True,
) -> Tensor:
    """Head importance ``(L, H)`` float64 (Michel et al. 2019).

    For each batch, ``loss_fn(model, batch)`` is differentiated with respect to a head
    mask ``m`` of ones (:func:`head_mask`), and ``|dL/dm|`` is summed over batches.
    With ``normalize`` each layer's row is divided by its L2 norm, as in the paper,
    so heads compare within a layer and layers weigh alike. A head whose W_O block is
    zero gets exactly 0. Runs in eval mode; model parameters get no ``.grad``.
    """
    shape = n_layers_heads(model)
    device = next(model.parameters()).device
    m = torch.ones(shape, device=device, requires_grad=True)
    total = torch.zeros(shape, dtype=torch.float64)
    n = 0
    with eval_mode(model), torch.enable_grad(), head_mask(model, m):
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(
                    f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                    f"{tuple(getattr(loss, 'shape', ()))}"
                )
            (grad,) = torch.autograd.grad(loss.reshape(()), m, allow_unused=True)
            if grad is not None:
                total += grad.detach().abs().double().cpu()
            n += 1
    if n == 0:
        raise ValueError("batches is empty: head importance needs at least one batch")
    if normalize:
        total = total / total.norm(dim=-1, keepdim=True).clamp(min=1e-20)
    return total


def head_means(
    model: nn.Module,
    batches: Iterable[Any],
    run: Callable[[nn.Module, Any], Any],
    *,
    valid: Callable[[Any], Tensor] | None = None,
) -> Tensor:
    """Each head's mean output ``(L, H, Dh)`` over the batches and positions (for
    ``ablate_heads(mode="mean")``).

    ``run(model, batch)`` runs the model (e.g. the same ``metric_fn`` or ``loss_fn``);
    ``valid(batch)`` may return a ``(B, T)`` bool mask of the positions to average over
    (e.g. ``~key_padding_mask``), default all."""
    n_layers, n_heads = n_layers_heads(model)
    dims = {m.head_dim for _, m in attention_layers(model)}
    if len(dims) != 1:
        raise ValueError(f"attention layers have different head_dim {sorted(dims)}")
    sums = torch.zeros(n_layers, n_heads, dims.pop(), dtype=torch.float64)
    count = 0.0
    with eval_mode(model), torch.no_grad(), capture(model, "z") as cap:
        for batch in batches:
            run(model, batch)
            z = cap.stack("z").double()  # (L, B, H, T, Dh)
            if valid is None:
                sums += z.sum((1, 3)).cpu()
                count += z.shape[1] * z.shape[3]
            else:
                v = valid(batch)
                if not isinstance(v, Tensor) or v.dtype != torch.bool or tuple(v.shape) != (z.shape[1], z.shape[3]):
                    raise ValueError(
                        f"valid(batch) must return a bool tensor (B, T) = {(z.shape[1], z.shape[3])}, got "
                        f"{getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}"
                    )
                w = v.to(z.device, z.dtype)[None, :, None, :, None]
                sums += (z * w).sum((1, 3)).cpu()
                count += float(v.sum())
            cap.clear()
    if count == 0:
        raise ValueError("no positions were averaged: batches is empty or valid() masked everything")
    return sums / count


def heads_to_mask(heads: Tensor | Iterable[tuple[int, int]], shape: tuple[int, int]) -> Tensor:
    """A bool ``(L, H)`` mask, True = ablate, from a bool tensor or ``(layer, head)`` pairs."""
    if isinstance(heads, Tensor):
        if heads.dtype != torch.bool:
            raise ValueError(f"heads as a tensor must be bool (L, H), got dtype {heads.dtype}")
        return _check_lh("heads", heads, shape).cpu()
    mask = torch.zeros(shape, dtype=torch.bool)
    for pair in heads:
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_int(x) for x in pair)
        if not ok or not (0 <= pair[0] < shape[0] and 0 <= pair[1] < shape[1]):
            raise ValueError(f"heads must hold (layer, head) pairs within (L, H) = {shape}, got {pair!r}")
        mask[pair[0], pair[1]] = True
    return mask


@contextmanager
def ablate_heads(
    model: nn.Module,
    heads: Tensor | Iterable[tuple[int, int]],
    mode: str = "zero",
    *,
    means: Tensor | None = None,
) -> Iterator[Tensor]:
    """Ablate ``heads`` (bool ``(L, H)``, True = ablate, or ``(layer, head)`` pairs)
    inside the block: their output before W_O becomes 0 (``mode="zero"``) or
    ``means[l, h]`` at every position (``mode="mean"``; ``means (L, H, Dh)`` from
    :func:`head_means`). Yields the bool mask used."""
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    if mode == "zero" and means is not None:
        raise ValueError("means has no effect with mode='zero' (the heads' output becomes 0); drop it or "
                         "use mode='mean'")
    shape = n_layers_heads(model)
    mask = heads_to_mask(heads, shape)
    if mode == "mean":
        if means is None:
            raise ValueError("mode='mean' needs means (L, H, Dh): compute them with head_means(model, batches, run)")
        if not isinstance(means, Tensor) or means.dim() != 3 or tuple(means.shape[:2]) != shape:
            got = tuple(getattr(means, "shape", ()))
            raise ValueError(f"means must be (L, H, Dh) with (L, H) = {shape}, got {got}")
    handles = []
    try:
        for i, (_, layer) in enumerate(attention_layers(model)):
            if not mask[i].any():
                continue
            sel = mask[i].to(layer.out_proj.weight.device)
            fill = None if mode == "zero" else means[i].to(layer.out_proj.weight.device)

            def hook(mod: nn.Module, z: Tensor, w: Tensor | None, _sel: Tensor = sel, _fill: Tensor | None = fill):
                keep = ~_sel[None, :, None, None]
                if _fill is None:
                    return z * keep.to(z.dtype)
                return torch.where(keep, z, _fill.to(z.dtype)[None, :, None, :])

            handles.append(layer.register_head_hook(hook))
        yield mask
    finally:
        for h in handles:
            h.remove()


def pruning_curve(
    model: nn.Module,
    importance: Tensor,
    batches: Iterable[Any],
    metric_fn: Callable[[nn.Module, Any], float | Tensor],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    step: float = 0.1,
    include_all: bool = False,
) -> list[tuple[float, float]]:
    """``[(fraction removed, metric)]`` as heads are ablated in ascending order of
    ``importance (L, H)`` (ties: lower layer, then head, first), in steps of ``step``:
    ``0, 0.1, ..., 0.9`` (and 1.0 with ``include_all``); a fraction ``f`` ablates
    ``round(f * L * H)`` heads. The metric at each step is the mean of
    ``metric_fn(model, batch)`` over ``batches`` (a list: it is iterated once per
    step). With ``mode="mean"`` and no ``means``, they are computed from ``batches``
    by running ``metric_fn``."""
    shape = n_layers_heads(model)
    _check_lh("importance", importance, shape)
    if not torch.isfinite(importance).all():  # NaN would put the heads in an arbitrary order
        raise ValueError(f"importance must be finite, got {int((~torch.isfinite(importance)).sum())} NaN or "
                         "infinite value(s)")
    if mode not in ABLATION_MODES:
        raise ValueError(f"mode must be one of {ABLATION_MODES}, got {mode!r}")
    if mode == "zero" and means is not None:
        raise ValueError("means has no effect with mode='zero' (the heads' output becomes 0); drop it or "
                         "use mode='mean'")
    check_real("step", step, minimum=0, min_open=True, maximum=1, what="a fraction in (0, 1]")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: the pruning curve needs data to evaluate")
    if mode == "mean" and means is None:
        means = head_means(model, batches, metric_fn)
    n_total = shape[0] * shape[1]
    order = torch.sort(importance.detach().double().cpu().reshape(-1), stable=True).indices
    n_steps = int(round(1 / step))
    fractions = [round(k * step, 10) for k in range(n_steps + 1) if k * step < 1 - 1e-9]
    if include_all:  # every head, whether or not a whole number of steps reaches it
        fractions.append(1.0)
    curve = []
    with eval_mode(model), torch.no_grad():
        for f in fractions:
            k = int(round(f * n_total))
            mask = torch.zeros(n_total, dtype=torch.bool)
            mask[order[:k]] = True
            with ablate_heads(model, mask.reshape(shape), mode, means=means):
                values = [float(metric_fn(model, b)) for b in batches]
            curve.append((f, sum(values) / len(values)))
    return curve
