"""A drop-in replacement for ``torch.nn.MultiheadAttention``.

Same constructor, same ``forward`` signature and return values, same parameter
names (so a torch module's ``state_dict`` loads as is), computed through headwise's
backends. Swap one import::

    from headwise.nn import MultiheadAttention   # was: from torch.nn import ...

``is_causal=True`` is taken as torch takes it: when no key padding mask is given and no
weights are asked for, the causal mask replaces ``attn_mask`` (whose content is then not
read), so the backends run their causal kernels.

Differences from torch, all deliberate: query rows that can see no key give zeros
(output and weights) instead of NaN; ``backend=`` picks how attention runs; and with
``is_causal=True`` plus ``add_zero_attn``/``add_bias_kv``, headwise applies the mask it
was given (every query also sees the appended key) where torch, taking the hint, applies
a top-left causal mask to the extended keys and so hides the appended key from every query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention.backends import check_backend_name
from .attention.functional import attend
from .attention.masks import normalize_mask
from .checks import check_int, is_int, is_real

__all__ = ["MultiheadAttention", "ShapeError", "ShapeRuntimeError", "DtypeError", "DtypeRuntimeError"]


class ShapeError(ValueError, AssertionError):
    """An input of the wrong shape, where ``torch.nn.MultiheadAttention`` raises an
    AssertionError. Both ``except ValueError`` (headwise's convention) and
    ``except AssertionError`` (code written against torch) catch it, and the message
    holds torch's own sentence after headwise's."""


class ShapeRuntimeError(ValueError, RuntimeError):
    """An input of the wrong shape (or a missing mask), where torch raises a
    RuntimeError; caught by ``except ValueError`` and ``except RuntimeError``, with
    torch's sentence in the message."""


class DtypeError(TypeError, AssertionError):
    """A mask of a dtype torch refuses with an AssertionError (neither bool nor
    floating point); caught by ``except TypeError`` and ``except AssertionError``, with
    torch's sentence in the message."""


class DtypeRuntimeError(TypeError, RuntimeError):
    """An input whose dtype does not match the module's weights (or a float mask whose
    dtype does not match the query's), where torch raises a RuntimeError; caught by
    ``except TypeError`` and ``except RuntimeError``, with torch's sentence in the message."""


def _both(ours: str, theirs: str) -> str:
    return f"{ours} [torch: {theirs}]"


class MultiheadAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` with headwise backends.

    Args: as torch's (``embed_dim``, ``num_heads``, ``dropout``, ``bias``,
    ``add_bias_kv``, ``add_zero_attn``, ``kdim``, ``vdim``, ``batch_first``), plus
    ``backend`` (``"auto"`` or a registered backend name).

    Shapes: ``query (L, N, E)`` (``(N, L, E)`` with ``batch_first``, or ``(L, E)``
    unbatched), ``key (S, N, kdim)``, ``value (S, N, vdim)``. Returns
    ``(attn_output, attn_weights)`` with weights ``(N, L, S)`` averaged over heads,
    ``(N, H, L, S)`` with ``average_attn_weights=False``, or ``None``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if not is_int(value):  # torch: a TypeError from torch.empty (or from the % check)
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            check_int(name, value)
        if embed_dim % num_heads != 0:
            raise ShapeError(_both(
                f"num_heads ({num_heads}) must divide embed_dim ({embed_dim}); for heads of "
                f"another width use headwise.attention.MultiHeadAttention(head_dim=...)",
                "embed_dim must be divisible by num_heads",
            ))
        for name, value in (("kdim", kdim), ("vdim", vdim)):
            if value is None:
                continue
            if not is_int(value):  # torch: a TypeError from torch.empty
                raise TypeError(f"{name} must be None or an int, got {type(value).__name__} {value!r}")
            if value < 0:  # torch: a RuntimeError from torch.empty
                raise ShapeRuntimeError(_both(f"{name} must be None or an int >= 0, got {value}",
                                              "Trying to create tensor with negative dimension"))
        if not is_real(dropout):  # torch's module fails only in training, inside F.dropout
            raise TypeError(f"dropout must be a float in [0, 1), got {type(dropout).__name__} {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise DtypeRuntimeError(_both(f"dtype must be None or a floating-point dtype, got {dtype}",
                                          "Only Tensors of floating point and complex dtype can require "
                                          "gradients"))
        check_backend_name(backend)
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.backend = backend

        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention as ``torch.nn.MultiheadAttention.forward`` (see the class docstring).

        ``attn_mask``: ``(L, S)`` or ``(N*num_heads, L, S)``, bool (True = not allowed)
        or additive float. ``key_padding_mask``: ``(N, S)``, bool (True = padding) or
        float. ``is_causal`` is a hint, as in torch: it needs ``attn_mask`` and, when
        set, the mask is taken to be the causal one.
        """
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        for name, t in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            _check_mask_type(name, t)
        batched = query.dim() == 3
        self._check_ranks(query, key, value, key_padding_mask, attn_mask)
        if is_causal and attn_mask is None:
            raise ShapeRuntimeError(_both(
                "is_causal=True is a hint that attn_mask is the causal mask; pass attn_mask too",
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                "method `generate_square_subsequent_mask` to create this mask.",
            ))
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # from here: (L, N, E) as in torch's functional implementation
        tgt_len, bsz, e = query.shape
        src_len = key.shape[0]
        if e != self.embed_dim:
            raise ShapeError(_both(f"query must have last dimension {self.embed_dim}, got {e}",
                                   f"was expecting embedding dimension of {self.embed_dim}, but got {e}"))
        if self._qkv_same_embed_dim and key.shape != value.shape:
            raise ShapeError(_both(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same shape",
                f"key shape {key.shape} does not match value shape {value.shape}",
            ))
        if key.shape[:2] != value.shape[:2]:
            raise ShapeError(_both(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} must share sequence length and "
                f"batch size",
                f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}",
            ))
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            ours = (f"key and value must have last dimensions kdim={self.kdim} and "
                    f"vdim={self.vdim}, got {key.shape[-1]} and {value.shape[-1]}")
            if self._qkv_same_embed_dim:  # torch: the packed projection's matmul fails
                raise ShapeRuntimeError(ours)
            # torch asserts the separate projections' shapes, key's first
            name, t, w = (("key", key, self.k_proj_weight) if key.shape[-1] != self.kdim
                          else ("value", value, self.v_proj_weight))
            raise ShapeError(_both(ours, f"expecting {name} weights shape of {(self.embed_dim, t.shape[-1])}, "
                                         f"but got {w.shape}"))
        if key.shape[1] != bsz:
            raise ShapeRuntimeError(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the batch size of "
                f"query ({bsz})"
            )
        w = self.out_proj.weight
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dtype != w.dtype and not _autocast_casts(t):  # autocast casts inputs and weights itself
                raise DtypeRuntimeError(_both(
                    f"{name} has dtype {t.dtype} but the module's weights are {w.dtype}",
                    f"mat1 and mat2 must have the same dtype, but got {_dtype_name(t.dtype)} and "
                    f"{_dtype_name(w.dtype)}",
                ))
            if t.device != w.device:
                raise ValueError(f"{name} is on {t.device} but the module's weights are on {w.device}")

        h, d = self.num_heads, self.head_dim
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        if self._qkv_same_embed_dim:
            if query is key and key is value:
                q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            else:
                w_q, w_k, w_v = self.in_proj_weight.chunk(3)
                q, k, v = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        else:
            q = F.linear(query, self.q_proj_weight, b_q)
            k = F.linear(key, self.k_proj_weight, b_k)
            v = F.linear(value, self.v_proj_weight, b_v)

        attn_mask = self._canonical_attn_mask(attn_mask, bsz, tgt_len, src_len)
        # torch's rule for the hint (F.multi_head_attention_forward): the causal mask
        # replaces attn_mask unless a key padding mask or the weights are involved
        causal = (is_causal and key_padding_mask is None and not need_weights
                  and self.bias_k is None and not self.add_zero_attn)
        if not torch.is_autocast_enabled(query.device.type):  # (autocast decides the dtypes itself)
            for name, m in (("attn_mask", None if causal else attn_mask), ("key_padding_mask", key_padding_mask)):
                if m is not None and m.is_floating_point() and m.dtype != query.dtype:
                    raise DtypeRuntimeError(
                        f"{name} has dtype {m.dtype} but query has {query.dtype}: a float mask must have the "
                        f"query's dtype (or give a bool mask) [torch: Expected attn_mask dtype to be bool or "
                        f"float or to match query dtype]")
        if causal:
            # torch's hint means sdpa's is_causal: the top-left triangle, which for L != S
            # is not headwise's bottom-right causal flag, so that case gets it as a mask
            attn_mask = None if tgt_len == src_len else torch.ones(
                tgt_len, src_len, dtype=torch.bool, device=query.device).triu(1)[None, None]
            causal = tgt_len == src_len
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(1, bsz, -1)])
            v = torch.cat([v, self.bias_v.expand(1, bsz, -1)])
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        # (T, N, H*D) -> (N, H, T, D)
        q = q.view(tgt_len, bsz, h, d).permute(1, 2, 0, 3)
        k = k.view(k.shape[0], bsz, h, d).permute(1, 2, 0, 3)
        v = v.view(v.shape[0], bsz, h, d).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(bsz, h, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(bsz, h, 1, d)], dim=2)
            attn_mask, key_padding_mask = _pad_masks(attn_mask, key_padding_mask)
        if key_padding_mask is not None:
            _check_key_padding_mask(key_padding_mask, bsz, k.shape[2])

        mask = normalize_mask(
            batch=bsz,
            n_heads=h,
            q_len=tgt_len,
            k_len=k.shape[2],
            device=q.device,
            causal=causal,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            float_dtype=q.dtype,
        )
        dropout_p = self.dropout if self.training else 0.0
        if need_weights and dropout_p > 0.0:
            # torch returns the weights after dropout, the ones the output was made with:
            # drop them here and apply them (a backend returns its weights before dropout)
            _, weights = attend(q, k, v, mask, backend=self.backend, need_weights=True)
            weights = F.dropout(weights, p=dropout_p)
            out = weights @ v
        else:
            out, weights = attend(q, k, v, mask, backend=self.backend, dropout_p=dropout_p,
                                  need_weights=need_weights)
        out = out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, self.embed_dim)
        out = self.out_proj(out)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            out = out.squeeze(1)
            if weights is not None:
                weights = weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def merge_masks(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                    query: Tensor) -> tuple[Tensor | None, int | None]:
        """torch's ``merge_masks``, which ``torch.nn.TransformerEncoderLayer`` calls on its
        ``self_attn`` in its inference fast path (it then computes the layer itself from
        this module's weights, as it does with torch's own module): ``(None, None)``
        without masks, ``(key_padding_mask, 1)`` with that alone, else ``(mask, 2)``, the
        ``(N, L, L)`` mask(s) expanded to ``(N, num_heads, L, L)`` and added."""
        if attn_mask is None:
            return (None, None) if key_padding_mask is None else (key_padding_mask, 1)
        n, length = query.shape[0], query.shape[1]
        h = self.num_heads
        if attn_mask.dim() == 3:  # (N*num_heads, L, L)
            merged = attn_mask.view(n, -1, length, length)
        else:  # (L, L)
            merged = attn_mask.view(1, 1, length, length).expand(n, h, length, length)
        if key_padding_mask is not None:
            merged = merged + key_padding_mask.view(n, 1, 1, length).expand(n, h, 1, length)
        return merged, 2

    def _canonical_attn_mask(
        self, attn_mask: Tensor | None, bsz: int, tgt_len: int, src_len: int
    ) -> Tensor | None:
        """torch's (L, S) or (N*H, L, S) attn_mask as (1|N, 1|H, L, S)."""
        if attn_mask is None:
            return None
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise ShapeRuntimeError(_both(
                    f"2-D attn_mask must have shape (L, S) = ({tgt_len}, {src_len}), got "
                    f"{tuple(attn_mask.shape)}",
                    f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be {(tgt_len, src_len)}.",
                ))
            return attn_mask[None, None]
        if attn_mask.dim() == 3:
            want = (bsz * self.num_heads, tgt_len, src_len)
            if tuple(attn_mask.shape) != want:
                raise ShapeRuntimeError(_both(
                    f"3-D attn_mask must have shape (N*num_heads, L, S) = {want}, got "
                    f"{tuple(attn_mask.shape)}",
                    f"The shape of the 3D attn_mask is {attn_mask.shape}, but should be {want}.",
                ))
            return attn_mask.view(bsz, self.num_heads, tgt_len, src_len)
        raise ShapeRuntimeError(  # _check_ranks refused other ranks already
            f"attn_mask must be 2-D (L, S) or 3-D (N*num_heads, L, S), got shape "
            f"{tuple(attn_mask.shape)}"
        )

    def _check_ranks(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None,
                     attn_mask: Tensor | None) -> None:
        """torch's _mha_shape_check: the ranks of the inputs and masks (raises ShapeError)."""
        layout = "N, L" if self.batch_first else "L, N"
        if query.dim() not in (2, 3):
            raise ShapeError(_both(
                f"query must be 2-D (L, E) or 3-D ({layout}, E), got shape {tuple(query.shape)}",
                f"query should be unbatched 2D or batched 3D tensor but received {query.dim()}-D query tensor",
            ))
        batched = query.dim() == 3
        which = "For batched (3-D) `query`" if batched else "For unbatched (2-D) `query`"
        if key.dim() != query.dim() or value.dim() != query.dim():
            name, t = ("key", key) if key.dim() != query.dim() else ("value", value)
            raise ShapeError(_both(
                f"{name} must have the same rank as query ({query.dim()}-D), got shape {tuple(t.shape)}",
                f"{which}, expected `key` and `value` to be {query.dim()}-D but found {key.dim()}-D and "
                f"{value.dim()}-D tensors respectively",
            ))
        kpm_dim = 2 if batched else 1
        if key_padding_mask is not None and key_padding_mask.dim() != kpm_dim:
            raise ShapeError(_both(
                f"key_padding_mask must be {kpm_dim}-D ({'N, S' if batched else 'S'}), got shape "
                f"{tuple(key_padding_mask.shape)}",
                f"{which}, expected `key_padding_mask` to be `None` or {kpm_dim}-D but found "
                f"{key_padding_mask.dim()}-D tensor instead",
            ))
        if attn_mask is not None:
            if attn_mask.dim() not in (2, 3):
                raise ShapeError(_both(
                    f"attn_mask must be 2-D (L, S) or 3-D (N*num_heads, L, S), got shape "
                    f"{tuple(attn_mask.shape)}",
                    f"{which}, expected `attn_mask` to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D "
                    f"tensor instead",
                ))
            if not batched and attn_mask.dim() == 3:
                want = (self.num_heads, query.shape[0], key.shape[0])
                if attn_mask.shape != want:
                    raise ShapeError(_both(
                        f"an unbatched query's 3-D attn_mask must have shape (num_heads, L, S) = {want}, got "
                        f"{tuple(attn_mask.shape)}",
                        f"Expected `attn_mask` shape to be {want} but got {attn_mask.shape}",
                    ))


def _check_mask_type(name: str, mask: object) -> None:
    """``mask`` is None or a bool or floating-point tensor, as torch's ``_canonical_mask``
    requires (TypeError for a non-tensor, :class:`DtypeError` for another dtype)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be None or a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise DtypeError(_both(
            f"{name} must be a bool tensor (True = masked out) or a floating additive tensor, got dtype "
            f"{mask.dtype}",
            f"only bool and floating types of {name} are supported",
        ))


def _autocast_casts(t: Tensor) -> bool:
    """Whether an active ``torch.autocast`` on ``t``'s device casts ``t`` (and the
    weights) for the projections, as it does for every float tensor but float64."""
    return torch.is_autocast_enabled(t.device.type) and t.dtype in (torch.float16, torch.bfloat16, torch.float32)


def _dtype_name(dtype: torch.dtype) -> str:
    """torch's C++ name of ``dtype`` as its matmul errors write it (``Float``, ``Double``, ...)."""
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
            torch.uint8: "Byte", torch.bool: "Bool"}.get(dtype, str(dtype).removeprefix("torch."))


def _check_key_padding_mask(key_padding_mask: Tensor, bsz: int, src_len: int) -> None:
    """``(N, S)``, S counting an appended bias_k/zero key (raises ShapeError, as torch asserts)."""
    got = tuple(key_padding_mask.shape)
    for axis, want, what in ((0, bsz, "N (batch)"), (1, src_len, "S (keys)")):
        if got[axis] != want:
            raise ShapeError(_both(
                f"key_padding_mask must have shape (N, S) = ({bsz}, {src_len}), got {got}: its {what} "
                f"size is {got[axis]}",
                f"Expected key_padded_mask.shape[{axis}] to be {want}, but got {got[axis]}",
            ))


def _pad_masks(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Let every query see one appended key (bias_kv or zero_attn)."""
    if attn_mask is not None:
        attn_mask = F.pad(attn_mask, (0, 1))
    if key_padding_mask is not None:
        key_padding_mask = F.pad(key_padding_mask, (0, 1))
    return attn_mask, key_padding_mask
