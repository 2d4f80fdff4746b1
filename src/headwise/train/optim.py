"""The optimizers a run can use (``TrainConfig.optimizer``).

* ``"adamw"``: AdamW on every parameter; weight decay on matrices only.
* ``"muon"``: :class:`Muon` (Nesterov momentum, then the update orthogonalised by a
  quintic Newton-Schulz iteration) on the 2-D weights inside the transformer blocks
  (the attention QKV and output projections, the MLP's two layers), at ``muon_lr``;
  AdamW at ``lr`` on everything else: embeddings (and the tied output head), norms,
  biases. The two are driven as one optimizer (:class:`MuonAdamW`), so the trainer's
  single learning-rate schedule scales both and one state_dict holds both.

headwise's :class:`Muon` follows the update rule of ``torch.optim.Muon`` (same
coefficients, the same ``sqrt(max(1, rows / cols))`` scale), with two differences
that matter on CPUs: the iteration runs in float32 (torch's casts to bfloat16, which
a CPU without native bf16 arithmetic, e.g. AVX2 only, runs ~8x slower than float32:
measured 14 ms vs 1.8 ms for a 128x512 Gram matrix on one core), and all matrices of
one shape are orthogonalised together in batched matmuls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.blocks import Block

__all__ = ["OPTIMIZERS", "Muon", "MuonAdamW", "adamw_groups", "split_muon_params", "build_optimizer"]

OPTIMIZERS = ("adamw", "muon")


def adamw_groups(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases, norms and other vectors."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def split_muon_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(matrices, rest)``: the trainable 2-D parameters of every transformer
    :class:`~headwise.models.blocks.Block` in ``model`` (for Muon), and every other
    trainable parameter (for AdamW), each once, in ``model.parameters()`` order.

    A parameter shared with something outside the blocks (none in headwise's models)
    goes with the rest."""
    prefixes = tuple(name + "." for name, m in model.named_modules() if isinstance(m, Block))
    inside: dict[int, bool] = {}  # id -> every occurrence of it is a block's matrix
    for name, p in model.named_parameters(remove_duplicate=False):
        ok = p.dim() == 2 and bool(prefixes) and name.startswith(prefixes)
        inside[id(p)] = inside.get(id(p), True) and ok
    matrices, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (matrices if inside[id(p)] else rest).append(p)
    return matrices, rest


#: the quintic Newton-Schulz coefficients of Keller Jordan's Muon (also torch.optim.Muon's)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U V^T`` of each matrix ``g (..., m, n)`` (its singular values
    pushed towards 1) by ``steps`` quintic Newton-Schulz iterations, in float32."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.mT
    # scale so every singular value is at most 1 (the Frobenius norm bounds the largest)
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: ``buf = momentum * buf + (1 - momentum) * grad``, the
    update (Nesterov: ``grad`` moved towards ``buf`` by ``momentum``) orthogonalised by
    :func:`orthogonalize`, scaled by ``sqrt(max(1, rows / cols))``, applied at ``lr``;
    decoupled weight decay ``p *= 1 - lr * weight_decay``. State: ``momentum_buffer``."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"bad Muon settings: lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay}, ns_steps={ns_steps}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay, "ns_steps": ns_steps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = _evaluate(closure)
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple[int, ...], list[tuple[nn.Parameter, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, items in by_shape.items():
                ortho = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for (p, _), o in zip(items, ortho, strict=True):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(o.to(p.dtype), alpha=-lr * scale)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """:class:`Muon` on ``matrices``, AdamW on ``rest``, stepped, zeroed and saved together.

    ``param_groups`` is AdamW's groups followed by Muon's (the live lists, so a
    learning-rate scheduler scales both); ``state_dict()`` is ``{"adamw": ...,
    "muon": ...}``.

    Args:
        matrices: 2-D parameters for Muon.
        rest: parameters for AdamW (decay on the 2-D ones).
        lr, betas, weight_decay: AdamW's settings; ``weight_decay`` is also Muon's
            (decoupled, scaled by its learning rate).
        muon_lr, muon_momentum: Muon's learning rate and (Nesterov) momentum. Muon
            scales each matrix's update by ``sqrt(max(1, rows / cols))`` (its
            "original" rule).
        fused: passed to AdamW.
    """

    def __init__(self, matrices: list[nn.Parameter], rest: list[nn.Parameter], *, lr: float,
                 betas: tuple[float, float], weight_decay: float, muon_lr: float,
                 muon_momentum: float = 0.95, fused: bool | None = None) -> None:
        if not matrices:
            raise ValueError("optimizer 'muon' found no 2-D weights inside transformer blocks")
        bad = [tuple(p.shape) for p in matrices if p.dim() != 2]
        if bad:
            raise ValueError(f"Muon takes 2-D parameters only, got shapes {bad}")
        self._inner: list[torch.optim.Optimizer] = []
        # the base class sets up its hooks; the groups it makes are never used
        super().__init__([*matrices, *rest], {"lr": lr})
        inner: list[torch.optim.Optimizer] = []
        if rest:
            inner.append(torch.optim.AdamW(adamw_groups(rest, weight_decay), lr=lr, betas=betas,
                                           fused=fused))
        inner.append(Muon(matrices, lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay))
        self._inner = inner
        self.adamw = inner[0] if rest else None
        self.muon = inner[-1]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if self._inner:
            return [g for opt in self._inner for g in opt.param_groups]
        return self._own_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._own_groups = value

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = _evaluate(closure)
        for opt in self._inner:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._inner:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        out = {"muon": self.muon.state_dict()}
        if self.adamw is not None:
            out["adamw"] = self.adamw.state_dict()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        want = {"muon"} | ({"adamw"} if self.adamw is not None else set())
        if set(state_dict) != want:
            raise ValueError(f"not a MuonAdamW state: keys {sorted(state_dict)}, expected {sorted(want)}")
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None:
            self.adamw.load_state_dict(state_dict["adamw"])


def build_optimizer(model: nn.Module, *, optimizer: str, lr: float, betas: tuple[float, float],
                    weight_decay: float, muon_lr: float = 0.02, muon_momentum: float = 0.95,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimizer named ``optimizer`` (one of :data:`OPTIMIZERS`) over ``model``'s
    trainable parameters."""
    if optimizer == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(adamw_groups(params, weight_decay), lr=lr, betas=betas, fused=fused)
    if optimizer == "muon":
        matrices, rest = split_muon_params(model)
        return MuonAdamW(matrices, rest, lr=lr, betas=betas, weight_decay=weight_decay, muon_lr=muon_lr,
                         muon_momentum=muon_momentum, fused=fused)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def _evaluate(closure: Callable[[], Any] | None) -> Any:
    """What ``step(closure)`` returns: ``closure()`` re-evaluated with gradients on (the
    torch.optim convention), or None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
