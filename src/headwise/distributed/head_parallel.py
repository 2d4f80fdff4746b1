"""Head-parallel (tensor-parallel) attention: each attention layer's heads split across
the ranks of a process group, Megatron-style.

With degree ``p`` (the group's size), rank ``r`` owns query heads
``r*H/p .. (r+1)*H/p - 1`` and key/value heads ``r*Hkv/p .. (r+1)*Hkv/p - 1``:

* QKV is column-parallel: rank ``r`` holds the rows of the fused ``qkv_weight`` that
  produce *its* heads' Q, K and V, i.e. three slices of the full
  ``[all Q | all K | all V]`` layout, stored fused again as ``[its Q | its K | its V]``.
  (Sharding the fused weight along dim 0 in ``p`` contiguous pieces, as a plain
  ``ColwiseParallel`` would, gives rank 0 the Q rows and rank 1 the K/V rows: wrong.)
* ``out_proj`` is row-parallel: rank ``r`` holds its heads' columns of W_O, so its
  GEMM gives a partial ``(B, T, d_model)`` sum; one all-reduce adds the partials,
  then the bias is added once (it is replicated, not sharded).

Grouped-query attention shards cleanly: local head ``j`` of rank ``r`` is global head
``r*H/p + j``, whose key/value head ``(r*H/p + j) // (H/Hkv)`` is local K/V head
``j // (H/Hkv)`` of the same rank.

Why collectives and not ``torch.distributed.tensor.parallel.parallelize_module``: the
fused ``qkv_weight`` is a bare Parameter (``ColwiseParallel`` handles ``nn.Linear``/
``nn.Embedding``), its row order would need the per-head-group permutation above, and
the layer reshapes by its own ``n_heads``; a wrapper that holds an ordinary local
:class:`MultiHeadAttention` (H/p heads) keeps every backend, mask, RoPE and hook path
unchanged and costs exactly one all-reduce per layer in each direction.

The autograd pair (Megatron's ``f`` and ``g``):

* ``f`` = :func:`copy_to_group`: identity forward, all-reduce backward (the input's
  gradient is the sum of every rank's partial from its own heads);
* ``g`` = :func:`reduce_from_group`: all-reduce forward, identity backward. We do not
  use ``torch.distributed.nn.functional.all_reduce`` here: its backward all-reduces
  the gradient too, which treats the loss as the *sum* of every rank's (identical)
  loss and would multiply gradients by ``p``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..checks import check_int

__all__ = [
    "HeadParallelAttention",
    "copy_to_group",
    "reduce_from_group",
    "head_slices",
    "check_head_parallel",
    "parallelize_heads",
    "full_state_dict",
    "shard_state_dict",
    "sharded_parameters",
    "full_parameter_names",
    "clip_grad_norm_",
]


# ---------------------------------------------------------------------- autograd pair
class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def copy_to_group(x: Tensor, group=None) -> Tensor:
    """Megatron's ``f``: returns ``x`` unchanged; in backward, all-reduces (sums) the
    gradient over ``group``. Put it where a replicated tensor enters sharded work."""
    return _CopyToGroup.apply(x, group)


def reduce_from_group(x: Tensor, group=None) -> Tensor:
    """Megatron's ``g``: all-reduces (sums) ``x`` over ``group``; in backward, passes the
    (replicated) gradient through unchanged. Put it where partial sums leave sharded work."""
    return _ReduceFromGroup.apply(x, group)


# ---------------------------------------------------------------------- layout
def check_head_parallel(n_heads: int, n_kv_heads: int, degree: int) -> None:
    """Raise ValueError unless ``degree`` divides both ``n_heads`` and ``n_kv_heads``."""
    check_int("the head-parallel degree", degree)
    for name, value in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if value % degree:
            ok = [d for d in range(1, value + 1) if value % d == 0 and n_heads % d == 0 and n_kv_heads % d == 0]
            raise ValueError(
                f"head parallelism of degree {degree} needs {name} divisible by it, got {name}={value} "
                f"(n_heads={n_heads}, n_kv_heads={n_kv_heads}); degrees that work: {ok}"
            )


def head_slices(n_heads: int, n_kv_heads: int, head_dim: int, rank: int, degree: int) -> tuple[Tensor, Tensor]:
    """Indices of the full fused ``qkv_weight`` rows ``(rows,)`` and of the full
    ``out_proj`` columns ``(cols,)`` that ``rank`` of ``degree`` owns; ``rows`` is in
    its local fused order ``[its Q | its K | its V]``."""
    check_head_parallel(n_heads, n_kv_heads, degree)
    if not 0 <= rank < degree:
        raise ValueError(f"rank must be in [0, {degree}), got {rank}")
    d = head_dim
    q_local, kv_local = n_heads // degree * d, n_kv_heads // degree * d
    q0, k0 = n_heads * d, n_heads * d + n_kv_heads * d
    q = torch.arange(rank * q_local, (rank + 1) * q_local)
    k = torch.arange(q0 + rank * kv_local, q0 + (rank + 1) * kv_local)
    v = torch.arange(k0 + rank * kv_local, k0 + (rank + 1) * kv_local)
    return torch.cat([q, k, v]), q.clone()


def _group_info(group) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


# ---------------------------------------------------------------------- the layer
class HeadParallelAttention(nn.Module):
    """This rank's share of a :class:`MultiHeadAttention` layer's heads.

    Built from a full layer (every rank passes the same weights); holds ``local``, an
    ordinary ``MultiHeadAttention`` with ``H/p`` query and ``Hkv/p`` key/value heads
    whose ``out_proj`` has no bias, and ``out_bias (d_model,)`` (replicated, added once
    after the all-reduce). Call it like the full layer: ``x (B, T, d_model)`` ->
    ``(B, T, d_model)``, identical on every rank of ``group``.

    ``need_weights=True`` returns this rank's heads' weights ``(B, H/p, Tq, Tk)``; a
    ``kv_cache`` given to it caches this rank's heads only. Only self-attention layers
    with the fused QKV weight (``kdim == vdim == d_model``) are supported.

    Args:
        full: the layer to split (unchanged; its weights are copied).
        group: the process group of the head-parallel ranks (None: the default group).
    """

    def __init__(self, full: MultiHeadAttention, group=None) -> None:
        super().__init__()
        if not isinstance(full, MultiHeadAttention):
            raise TypeError(f"full must be a headwise MultiHeadAttention, got {type(full).__name__}")
        if not full.fused:
            raise ValueError(
                f"head parallelism supports self-attention layers with a fused qkv_weight; this layer has "
                f"kdim={full.kdim}, vdim={full.vdim}, d_model={full.d_model}"
            )
        rank, degree = _group_info(group)
        check_head_parallel(full.n_heads, full.n_kv_heads, degree)
        self.group, self.rank, self.degree = group, rank, degree
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = (
            full.d_model, full.n_heads, full.n_kv_heads, full.head_dim)
        w = full.out_proj.weight
        has_bias = full.qkv_bias is not None
        local = MultiHeadAttention(
            full.d_model, full.n_heads // degree, full.head_dim, full.n_kv_heads // degree,
            bias=has_bias, dropout=full.dropout, backend=full.backend, rope=full.rotary is not None,
            rope_theta=full.rotary.theta if full.rotary is not None else 10000.0,
            device=w.device, dtype=w.dtype,
        )
        # partial sums must not each carry the bias: it is added once, after the reduce
        local.out_proj.register_parameter("bias", None)
        self.local = local
        self.out_bias = (nn.Parameter(full.out_proj.bias.detach().clone())
                         if full.out_proj.bias is not None else None)
        self.load_full_(full.qkv_weight, full.qkv_bias, full.out_proj.weight)

    @torch.no_grad()
    def load_full_(self, qkv_weight: Tensor, qkv_bias: Tensor | None, out_weight: Tensor) -> None:
        """Copy this rank's slices of full tensors ``qkv_weight ((H+2Hkv)*Dh, d_model)``,
        ``qkv_bias ((H+2Hkv)*Dh,)`` and ``out_weight (d_model, H*Dh)`` into ``local``."""
        rows, cols = head_slices(self.n_heads, self.n_kv_heads, self.head_dim, self.rank, self.degree)
        self.local.qkv_weight.copy_(qkv_weight[rows.to(qkv_weight.device)])
        if qkv_bias is not None and self.local.qkv_bias is not None:
            self.local.qkv_bias.copy_(qkv_bias[rows.to(qkv_bias.device)])
        self.local.out_proj.weight.copy_(out_weight[:, cols.to(out_weight.device)])

    def sharded_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that differ across the group (every other one is replicated)."""
        return self.local.parameters()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        need_weights: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """As :meth:`MultiHeadAttention.forward`, whose other keywords (``causal``,
        ``key_padding_mask``, ``key_lengths``, ``kv_cache``) ``kwargs`` passes on to this
        rank's layer; ``attn_mask`` with a head dimension of size H is sliced to this
        rank's heads."""
        x = copy_to_group(x, self.group)
        if context is not None:
            context = copy_to_group(context, self.group)
        if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[1] == self.n_heads > 1:
            h = self.n_heads // self.degree
            attn_mask = attn_mask[:, self.rank * h : (self.rank + 1) * h]
        out = self.local(x, context, attn_mask=attn_mask, need_weights=need_weights, **kwargs)
        weights = None
        if need_weights:
            out, weights = out
        out = reduce_from_group(out, self.group)
        if self.out_bias is not None:
            out = out + self.out_bias
        return (out, weights) if need_weights else out

    @torch.no_grad()
    def gather_full(self, grads: bool = False) -> dict[str, Tensor | None]:
        """The full layer's ``qkv_weight``, ``qkv_bias``, ``out_proj.weight`` and
        ``out_proj.bias`` (or their gradients with ``grads=True``) gathered from every
        rank of the group, in the single-process layout. Collective: every rank calls it."""
        def get(p: Tensor | None) -> Tensor | None:
            if p is None:
                return None
            t = p.grad if grads else p
            return torch.zeros_like(p) if t is None else t.detach()

        return {
            "qkv_weight": gather_qkv(get(self.local.qkv_weight), self),
            "qkv_bias": None if self.local.qkv_bias is None else gather_qkv(get(self.local.qkv_bias), self),
            "out_proj.weight": gather_out(get(self.local.out_proj.weight), self),
            "out_proj.bias": get(self.out_bias),
        }

    def extra_repr(self) -> str:
        return f"rank={self.rank}, degree={self.degree}, heads {self.n_heads}/{self.degree} per rank"


def _all_gather(t: Tensor, group) -> list[Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def gather_qkv(local: Tensor, hp: HeadParallelAttention) -> Tensor:
    """Full ``((H+2Hkv)*Dh, ...)`` tensor from every rank's ``[its Q | its K | its V]``
    rows (a weight, its bias, a gradient or an optimizer moment)."""
    parts = _all_gather(local, hp.group)
    d = hp.head_dim
    q, kv = hp.n_heads // hp.degree * d, hp.n_kv_heads // hp.degree * d
    split = [p.split([q, kv, kv], dim=0) for p in parts]
    return torch.cat([s[0] for s in split] + [s[1] for s in split] + [s[2] for s in split], dim=0)


def gather_out(local: Tensor, hp: HeadParallelAttention) -> Tensor:
    """Full ``(d_model, H*Dh)`` W_O from every rank's columns."""
    return torch.cat(_all_gather(local, hp.group), dim=1)


# ---------------------------------------------------------------------- whole models
def parallelize_heads(model: nn.Module, group=None) -> nn.Module:
    """Replace, in place, every :class:`MultiHeadAttention` inside ``model`` by its
    :class:`HeadParallelAttention` share for this rank of ``group``; returns ``model``.
    Every rank must call it with identical weights. Raises ValueError (before any
    change) when the group's size does not divide some layer's heads."""
    degree = dist.get_world_size(group)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)]
    for name, m in targets:
        try:
            check_head_parallel(m.n_heads, m.n_kv_heads, degree)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, HeadParallelAttention(m, group))
    return model


def _hp_layers(model: nn.Module) -> dict[str, HeadParallelAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, HeadParallelAttention)}


_LOCAL_TO_FULL = {"local.qkv_weight": "qkv_weight", "local.qkv_bias": "qkv_bias",
                  "local.out_proj.weight": "out_proj.weight", "out_bias": "out_proj.bias"}


def full_parameter_names(model: nn.Module) -> dict[str, nn.Parameter]:
    """``model``'s parameters keyed by the names they have in the unparallelised model
    (``blocks.0.attn.local.qkv_weight`` -> ``blocks.0.attn.qkv_weight``, ``...attn.out_bias``
    -> ``...attn.out_proj.bias``)."""
    layers = _hp_layers(model)
    out = {}
    for name, p in model.named_parameters():
        owner = next((n for n in layers if name.startswith(n + ".")), None)
        if owner is not None:
            name = f"{owner}.{_LOCAL_TO_FULL[name[len(owner) + 1:]]}"
        out[name] = p
    return out


def sharded_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` that is split across its head-parallel group."""
    return [p for m in _hp_layers(model).values() for p in m.sharded_parameters()]


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state dict with every head-parallel layer gathered back to the
    single-process names and layout (``blocks.0.attn.qkv_weight`` ...), so a checkpoint
    made from it loads into an unparallelised model. Collective over each layer's group."""
    layers = _hp_layers(model)
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        owner = next((n for n in layers if key.startswith(n + ".")), None)
        if owner is None:
            out[key] = value
    for name, hp in layers.items():
        for k, v in hp.gather_full().items():
            if v is not None:
                out[f"{name}.{k}"] = v
    return out


def shard_state_dict(model: nn.Module, full: dict[str, Tensor]) -> None:
    """Load a single-process state dict ``full`` into the head-parallel ``model``
    (each rank takes its slices). Strict: a missing or unexpected key is an error."""
    layers = _hp_layers(model)
    plain = {}
    for key, value in full.items():
        if next((n for n in layers if key.startswith(n + ".")), None) is None:
            plain[key] = value
    expected_attn = {f"{n}.{k}" for n, hp in layers.items()
                     for k in ("qkv_weight", "qkv_bias", "out_proj.weight", "out_proj.bias")
                     if k.endswith("weight") or hp.out_bias is not None}
    missing = expected_attn - set(full)
    if missing:
        raise ValueError(f"state dict lacks {sorted(missing)}")
    own = {k for k in model.state_dict() if next((n for n in layers if k.startswith(n + ".")), None) is None}
    if set(plain) != own:
        raise ValueError(f"state dict does not fit the model: missing {sorted(own - set(plain))}, "
                         f"unexpected {sorted(set(plain) - own)}")
    model.load_state_dict(plain, strict=False)
    for n, hp in layers.items():
        hp.load_full_(full[f"{n}.qkv_weight"], full.get(f"{n}.qkv_bias"), full[f"{n}.out_proj.weight"])
        if hp.out_bias is not None:
            with torch.no_grad():
                hp.out_bias.copy_(full[f"{n}.out_proj.bias"])


def clip_grad_norm_(model: nn.Module, max_norm: float, group=None) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a head-parallel model: the squared norm of
    the sharded gradients is summed over ``group`` (each shard counted once), the
    replicated ones are counted once; every rank then scales by the same factor.
    Returns the total norm (a scalar tensor, equal on every rank)."""
    sharded = {id(p) for p in sharded_parameters(model)}
    params = [p for p in model.parameters() if p.grad is not None]
    dev = params[0].grad.device if params else torch.device("cpu")
    local_sq = torch.zeros((), dtype=torch.float32, device=dev)
    repl_sq = torch.zeros((), dtype=torch.float32, device=dev)
    for p in params:
        sq = p.grad.detach().float().pow(2).sum()
        if id(p) in sharded:
            local_sq += sq
        else:
            repl_sq += sq
    dist.all_reduce(local_sq, group=group)
    total = (local_sq + repl_sq).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.detach().mul_(coef.to(p.grad.dtype))
    return total
