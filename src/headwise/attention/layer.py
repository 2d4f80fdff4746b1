"""MultiHeadAttention: H heads, each with its own (W_Q, W_K, W_V), concatenated and
projected back by W_O, with the weights stored fused so one GEMM projects every head.

Storage (PyTorch's ``(out_features, in_features)`` convention):

* self-attention (``kdim == vdim == d_model``): ``qkv_weight`` of shape
  ``((H + 2*Hkv) * Dh, d_model)``: rows ``[0, H*Dh)`` are every head's W_Q, then
  ``Hkv*Dh`` rows of W_K, then ``Hkv*Dh`` rows of W_V; head ``i`` owns rows
  ``i*Dh .. (i+1)*Dh`` of its block.
* otherwise (``kdim`` or ``vdim`` differ): ``q_weight``, ``k_weight``, ``v_weight``.
* ``out_proj``: a ``Linear(H*Dh, d_model)``; head ``i`` owns columns ``i*Dh ..``.

``layer.heads[i]`` shows head ``i`` in the textbook orientation (``x @ W_Q``), as views.

Other projection modules (int8 ones, :class:`headwise.formats.Int8Linear`) can take the
place of these weights: see :class:`Projection` for what the layer asks of them, and
the ``qkv_proj``/``q_proj``/``k_proj``/``v_proj``/``out_proj`` arguments and
:meth:`MultiHeadAttention.with_projections`.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..checks import check_real
from ..kernels.cpu_linear import linear, run_linear
from .backends import AttentionCall, check_backend_name, get_backend
from .functional import attend
from .heads import HeadSequence, HeadView
from .inputs import check_layer_input, layer_sizes
from .kv_cache import KVCache
from .masks import MaskSpec, normalize_mask
from .projection import Projection, check_projection, module_device
from .rope import RotaryEmbedding

__all__ = ["MultiHeadAttention", "HeadHook"]

# fn(layer, z (B, H, Tq, Dh), weights (B, H, Tq, Tk) or None) -> replacement z or None
HeadHook = Callable[["MultiHeadAttention", Tensor, "Tensor | None"], "Tensor | None"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with fused projections and pluggable backends.

    Args:
        d_model: width of the input and output.
        n_heads: number of query heads ``H``.
        head_dim: per-head width ``Dh`` (default ``d_model // n_heads``, which must then
            divide evenly); any positive value is allowed, independent of d_model.
        n_kv_heads: number of key/value heads ``Hkv`` (default ``n_heads``); must divide
            ``n_heads``. ``1`` is multi-query attention, in between grouped-query.
        bias: add biases to the Q/K/V and output projections.
        dropout: dropout on the attention probabilities (training only).
        backend: ``"auto"`` or a registered backend (``"reference"``, ``"math"``,
            ``"sdpa"``, ...).
        rope: apply rotary position embeddings to queries and keys.
        rope_theta: RoPE base.
        kdim, vdim: widths of the keys' and values' source (cross-attention);
            default ``d_model``.
        qkv_proj: a :class:`Projection` ``d_model -> (H + 2*Hkv) * Dh`` to use instead
            of the layer's own fused ``qkv_weight``/``qkv_bias`` (self-attention layers,
            ``kdim == vdim == d_model``).
        q_proj, k_proj, v_proj: the same for a cross-attention layer (``kdim`` or
            ``vdim`` not ``d_model``): all three, ``d_model``/``kdim``/``vdim`` ->
            ``H*Dh``/``Hkv*Dh``/``Hkv*Dh``.
        out_proj: a :class:`Projection` ``H*Dh -> d_model`` instead of a new
            ``nn.Linear``.

    Given projections are used as they are (``bias`` does not apply to them, and
    :meth:`reset_parameters` leaves them alone); the layer then holds no Q/K/V
    parameters of its own, and ``layer.heads`` shows copies read from their
    ``weight`` and ``bias`` rather than views.

    Fully masked query rows give an output of zero (before W_O's bias), never NaN.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int | None = None,
        n_kv_heads: int | None = None,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
        rope: bool = False,
        rope_theta: float = 10000.0,
        kdim: int | None = None,
        vdim: int | None = None,
        device=None,
        dtype=None,
        qkv_proj: Projection | None = None,
        q_proj: Projection | None = None,
        k_proj: Projection | None = None,
        v_proj: Projection | None = None,
        out_proj: Projection | None = None,
    ) -> None:
        super().__init__()
        d_model, n_heads, head_dim, n_kv_heads, kdim, vdim = layer_sizes(
            d_model, n_heads, head_dim, n_kv_heads, kdim, vdim, dtype=dtype
        )
        dropout = check_real("dropout", dropout, minimum=0, maximum=1, max_open=True)
        check_backend_name(backend)

        self.d_model, self.n_heads, self.head_dim, self.n_kv_heads = (
            d_model,
            n_heads,
            head_dim,
            n_kv_heads,
        )
        self.kdim, self.vdim = kdim, vdim
        self.dropout = dropout
        self.backend = backend
        self.fused = kdim == d_model and vdim == d_model
        factory = {"device": device, "dtype": dtype}
        q_out, kv_out = n_heads * head_dim, n_kv_heads * head_dim
        given = {"qkv_proj": qkv_proj, "q_proj": q_proj, "k_proj": k_proj, "v_proj": v_proj}
        wanted = ("qkv_proj",) if self.fused else ("q_proj", "k_proj", "v_proj")
        named = {k for k, v in given.items() if v is not None}
        if named and named != set(wanted):
            raise ValueError(
                f"this layer (kdim={kdim}, vdim={vdim}, d_model={d_model}) takes "
                f"{' and '.join(wanted)} as its input projections (all or none), got {sorted(named)}"
            )
        self._own_qkv = not named
        if named:
            shapes = {"qkv_proj": (q_out + 2 * kv_out, d_model), "q_proj": (q_out, d_model),
                      "k_proj": (kv_out, kdim), "v_proj": (kv_out, vdim)}
            for name in wanted:
                check_projection(name, given[name], shapes[name])
                setattr(self, name, given[name])
        elif self.fused:
            self.qkv_weight = nn.Parameter(torch.empty(q_out + 2 * kv_out, d_model, **factory))
            self.qkv_bias = (
                nn.Parameter(torch.empty(q_out + 2 * kv_out, **factory)) if bias else None
            )
        else:
            self.q_weight = nn.Parameter(torch.empty(q_out, d_model, **factory))
            self.k_weight = nn.Parameter(torch.empty(kv_out, kdim, **factory))
            self.v_weight = nn.Parameter(torch.empty(kv_out, vdim, **factory))
            if bias:
                self.q_bias = nn.Parameter(torch.empty(q_out, **factory))
                self.k_bias = nn.Parameter(torch.empty(kv_out, **factory))
                self.v_bias = nn.Parameter(torch.empty(kv_out, **factory))
            else:
                self.q_bias = self.k_bias = self.v_bias = None
        self._own_out = out_proj is None
        if out_proj is None:
            self.out_proj = nn.Linear(q_out, d_model, bias=bias, **factory)
        else:
            check_projection("out_proj", out_proj, (d_model, q_out))
            self.out_proj = out_proj
        self.rotary = RotaryEmbedding(head_dim, rope_theta) if rope else None
        self._head_hooks: OrderedDict[int, tuple[HeadHook, bool]] = OrderedDict()
        if self._own_qkv or self._own_out:
            self.reset_parameters()

    @classmethod
    def with_projections(
        cls,
        layer: MultiHeadAttention,
        *,
        qkv_proj: Projection | None = None,
        q_proj: Projection | None = None,
        k_proj: Projection | None = None,
        v_proj: Projection | None = None,
        out_proj: Projection | None = None,
    ) -> MultiHeadAttention:
        """A new layer (of this class) shaped as ``layer`` (sizes, dropout, backend,
        training mode), sharing its rotary embedding and head hooks (their handles
        still remove them), whose input projections are the given modules
        (``qkv_proj``, or ``q_proj``/``k_proj``/``v_proj`` for a cross-attention layer)
        and whose output projection is ``out_proj`` (default: ``layer.out_proj``
        itself). ``layer`` is left as it was. Module hooks registered with torch's
        ``register_forward_hook`` and the like are not carried over."""
        new = cls(
            layer.d_model,
            layer.n_heads,
            layer.head_dim,
            layer.n_kv_heads,
            dropout=layer.dropout,
            backend=layer.backend,
            kdim=layer.kdim,
            vdim=layer.vdim,
            qkv_proj=qkv_proj,
            q_proj=q_proj,
            k_proj=k_proj,
            v_proj=v_proj,
            out_proj=layer.out_proj if out_proj is None else out_proj,
        )
        if new._own_qkv:
            raise ValueError("with_projections needs the input projections (qkv_proj, or q_proj, "
                             "k_proj and v_proj)")
        new.rotary = layer.rotary
        new._head_hooks = layer._head_hooks
        return new.train(layer.training)

    # ------------------------------------------------------------------ hooks
    #: the backend to go back to once no hook needs weights (set while hooks registered
    #: with switch_to_auto run a layer whose backend cannot return weights on "auto")
    _backend_before_weight_hooks: str | None = None

    class _HeadHookHandle(RemovableHandle):
        """Removes a head hook, then lets the layer take its backend back."""

        _layer_ref: weakref.ref | None = None

        def __init__(self, layer: MultiHeadAttention) -> None:
            super().__init__(layer._head_hooks)
            self._layer_ref = weakref.ref(layer)

        def remove(self) -> None:
            super().remove()
            layer = None if self._layer_ref is None else self._layer_ref()
            if layer is not None:
                layer._restore_backend_after_weight_hooks()

    def register_head_hook(self, fn: HeadHook, *, need_weights: bool = False,
                           switch_to_auto: bool = False) -> RemovableHandle:
        """Call ``fn(layer, z, weights)`` on every forward, where ``z (B, H, Tq, Dh)`` is
        each head's output before W_O; if ``fn`` returns a tensor it replaces ``z``
        (ablation, head masks). With ``need_weights=True`` the attention weights
        ``(B, H, Tq, Tk)`` are computed and passed too (else ``None``); a backend chosen
        by name that cannot return them (:meth:`can_return_weights`: ``"sdpa"``,
        ``"tiled"``) then refuses the forward, unless ``switch_to_auto=True``: the layer
        then runs on ``"auto"`` while such a hook is registered, and goes back to its
        backend when the last one is removed. Layers without hooks pay nothing.
        Returns a handle whose ``remove()`` undoes it."""
        if need_weights and switch_to_auto and not self.can_return_weights():
            self._backend_before_weight_hooks = self.backend
            self.backend = "auto"
        handle = self._HeadHookHandle(self)
        self._head_hooks[handle.id] = (fn, need_weights)
        return handle

    def can_return_weights(self) -> bool:
        """Whether this layer's backend can return the attention weights. ``"auto"``
        always can (asked for weights, it picks a backend that returns them); a named
        backend is asked, through the registry, about a call that differs from this
        layer's calls only in needing the weights."""
        if self.backend == "auto":
            return True
        w = self.out_proj.weight
        call = AttentionCall(
            dtype=w.dtype,
            device=w.device,
            head_dim=self.head_dim,
            value_dim=self.head_dim,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            mask=MaskSpec(batch=1, q_len=1, k_len=1),
            need_weights=True,
            dropout_p=0.0,
            requires_grad=False,
        )
        try:
            get_backend(self.backend, call)
        except ValueError:
            return False
        return True

    def _restore_backend_after_weight_hooks(self) -> None:
        if self._backend_before_weight_hooks is not None and not any(w for _, w in self._head_hooks.values()):
            self.backend = self._backend_before_weight_hooks
            self._backend_before_weight_hooks = None

    # ------------------------------------------------------------------ weights
    def reset_parameters(self) -> None:
        """Xavier-uniform per projection (as torch.nn.MultiheadAttention), zero biases,
        for the projections the layer made itself (given ones are left alone)."""
        if self._own_qkv:
            for w in self.projection_weights():
                _xavier_(w)
            for b in self.projection_biases():
                if b is not None:
                    with torch.no_grad():
                        b.zero_()
        if self._own_out:
            nn.init.xavier_uniform_(self.out_proj.weight)
            if self.out_proj.bias is not None:
                nn.init.zeros_(self.out_proj.bias)

    def projection_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(W_q, W_k, W_v)`` in ``(out, in)`` layout: views of the layer's own weights
        (of the fused one when fused), or the given projections' ``weight``."""
        if self.fused:
            q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            w = self.qkv_weight if self._own_qkv else self.qkv_proj.weight
            return tuple(w.split([q_out, kv_out, kv_out], dim=0))  # type: ignore
        if self._own_qkv:
            return self.q_weight, self.k_weight, self.v_weight
        return self.q_proj.weight, self.k_proj.weight, self.v_proj.weight

    def projection_biases(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """``(b_q, b_k, b_v)``, as :meth:`projection_weights` (``None`` without bias)."""
        if self.fused:
            b = self.qkv_bias if self._own_qkv else self.qkv_proj.bias
            if b is None:
                return None, None, None
            q_out, kv_out = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return tuple(b.split([q_out, kv_out, kv_out], dim=0))  # type: ignore
        if self._own_qkv:
            return self.q_bias, self.k_bias, self.v_bias
        return self.q_proj.bias, self.k_proj.bias, self.v_proj.bias

    @property
    def heads(self) -> Sequence[HeadView]:
        """``heads[i]``: head ``i``'s W_Q, W_K, W_V, W_O and biases as views (copies
        read from given projections' ``weight``, which may compute a fresh tensor)."""
        return HeadSequence(self)

    def head_view(self, i: int) -> HeadView:
        """Head ``i`` (in ``[0, n_heads)``) as a :class:`HeadView`; ``heads[i]`` checks ``i``."""
        d = self.head_dim
        kv = i // (self.n_heads // self.n_kv_heads)
        wq, wk, wv = self.projection_weights()
        bq, bk, bv = self.projection_biases()
        rows_q, rows_kv = slice(i * d, (i + 1) * d), slice(kv * d, (kv + 1) * d)
        return HeadView(
            index=i,
            kv_index=kv,
            W_Q=wq[rows_q].T,
            W_K=wk[rows_kv].T,
            W_V=wv[rows_kv].T,
            W_O=self.out_proj.weight[:, rows_q].T,
            b_Q=None if bq is None else bq[rows_q],
            b_K=None if bk is None else bk[rows_kv],
            b_V=None if bv is None else bv[rows_kv],
        )

    # ------------------------------------------------------------------ forward
    def project(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Project to per-head ``q (B, H, Tq, Dh)``, ``k, v (B, Hkv, Tk, Dh)``.

        Self-attention runs one GEMM for every head's Q, K and V."""
        b, t, _ = x.shape
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        if not self._own_qkv:
            q, k, v = self._project_given(x, context)
        elif context is None and self.fused:
            qkv = linear(x, self.qkv_weight, self.qkv_bias)
            q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
        else:
            wq, wk, wv = self.projection_weights()
            bq, bk, bv = self.projection_biases()
            src = x if context is None else context
            q = linear(x, wq, bq)
            if self.fused:  # cross-attention with a same-width context: one GEMM for K and V
                kv_w = self.qkv_weight[h * d :]
                kv_b = None if self.qkv_bias is None else self.qkv_bias[h * d :]
                k, v = linear(src, kv_w, kv_b).split([hkv * d, hkv * d], dim=-1)
            else:
                k, v = linear(src, wk, bk), linear(src, wv, bv)
        s = k.shape[1]
        q = q.view(b, t, h, d).transpose(1, 2)
        k = k.view(b, s, hkv, d).transpose(1, 2)
        v = v.view(b, s, hkv, d).transpose(1, 2)
        return q, k, v

    def _project_given(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        h, hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        if not self.fused:
            src = x if context is None else context
            return self.q_proj(x), self.k_proj(src), self.v_proj(src)
        sizes = [h * d, hkv * d, hkv * d]
        q, k, v = self.qkv_proj(x).split(sizes, dim=-1)
        if context is not None:
            # one module holds Q, K and V together: project the context through all of
            # it and keep K and V (cross-attention through a fused projection is rare)
            _, k, v = self.qkv_proj(context).split(sizes, dim=-1)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        key_lengths: Tensor | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x`` to itself (or to ``context``) with every head.

        Args:
            x: ``(B, Tq, d_model)``.
            context: ``(B, Tk, kdim)`` for cross-attention (``kdim == vdim`` then), or None.
            causal: each query sees only keys at or before its own position (bottom-right
                aligned when a cache makes Tk > Tq).
            key_padding_mask: ``(B, Tk)`` bool, True = padding (or additive float).
            key_lengths: ``(B,)`` ints, the number of valid keys per sequence.
            attn_mask: bool (True = masked out) or additive float, broadcastable to
                ``(B, H, Tq, Tk)``: ``(Tq, Tk)``, ``(B, Tq, Tk)`` or 4-D.
            kv_cache: a :class:`KVCache`; this call's keys/values are appended to it and
                attention runs over everything cached (incremental decoding).
            need_weights: also return the attention weights.

        Returns:
            ``out (B, Tq, d_model)``, or ``(out, weights (B, H, Tq, Tk))`` when
            ``need_weights``.
        """
        self._check_input("x", x, self.d_model)
        if context is not None:
            if self.kdim != self.vdim:
                raise ValueError(
                    f"context serves as both key and value source, so kdim ({self.kdim}) and "
                    f"vdim ({self.vdim}) must match; use headwise.nn.MultiheadAttention for "
                    f"separate key and value tensors"
                )
            self._check_input("context", context, self.kdim)
            if context.shape[0] != x.shape[0]:
                raise ValueError(
                    f"context has batch size {context.shape[0]} but x has {x.shape[0]}"
                )
        elif not self.fused:
            raise ValueError(
                f"this layer was built for cross-attention (kdim={self.kdim}, vdim={self.vdim}, "
                f"d_model={self.d_model}); pass context"
            )
        if kv_cache is not None and not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a headwise KVCache, got {type(kv_cache).__name__}")

        q, k, v = self.project(x, context)
        offset = len(kv_cache) if kv_cache is not None else 0
        if self.rotary is not None:
            q = self.rotary(q, offset)
            if context is None:
                k = self.rotary(k, offset)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        b, tq, tk = x.shape[0], q.shape[2], k.shape[2]
        mask = normalize_mask(
            batch=b,
            n_heads=self.n_heads,
            q_len=tq,
            k_len=tk,
            device=x.device,
            causal=causal,
            key_padding_mask=key_padding_mask,
            key_lengths=key_lengths,
            attn_mask=attn_mask,
            float_dtype=q.dtype,
        )
        hooks_want_weights = any(w for _, w in self._head_hooks.values())
        out, weights = attend(
            q,
            k,
            v,
            mask,
            backend=self.backend,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights or hooks_want_weights,
        )
        for fn, wants in list(self._head_hooks.values()):
            replaced = fn(self, out, weights if wants else None)
            if replaced is not None:
                if replaced.shape != out.shape:
                    raise ValueError(
                        f"a head hook must return a tensor of shape {tuple(out.shape)} (B, H, Tq, Dh), "
                        f"got {tuple(replaced.shape)}"
                    )
                out = replaced
        out = run_linear(self.out_proj, out.transpose(1, 2).reshape(b, tq, self.n_heads * self.head_dim))
        return (out, weights) if need_weights else out

    def _check_input(self, name: str, t: Tensor, width: int) -> None:
        if self._own_qkv:  # own Q/K/V weight, not out_proj's: a given one may build .weight (int8)
            w = self.qkv_weight if self.fused else self.q_weight
            check_layer_input(name, t, width, w.dtype, w.device)
        else:  # given projections take any floating-point input (Projection)
            check_layer_input(name, t, width, None, module_device(self.out_proj))

    def extra_repr(self) -> str:
        s = (
            f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"n_kv_heads={self.n_kv_heads}, backend={self.backend!r}"
        )
        if not self.fused:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        return s


def _xavier_(w: Tensor) -> None:
    """Xavier-uniform on a (possibly non-leaf view) weight, in place."""
    fan_out, fan_in = w.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        w.uniform_(-bound, bound)
