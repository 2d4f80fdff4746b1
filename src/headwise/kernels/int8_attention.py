"""Attention with int8 ``Q K^T`` in Triton (forward only, for inference), after
SageAttention (Zhang et al., 2024).

1. Smooth K: subtract each head's mean key ``mean_j k_j`` (over the sequence). Every
   score of query ``i`` then drops by the same ``q_i . mean``, which softmax ignores,
   but the keys' shared offset (large in trained models) no longer eats the int8
   range.
2. Quantise per tile (one small kernel, :func:`_quant_tiles`): each ``BLOCK_M`` rows
   of Q (pre-multiplied by ``scale * log2(e)``, so scores come out in log2 units) and
   each ``BLOCK_N`` rows of the smoothed K get one scale ``max|tile| / 127`` and
   become int8.
3. The attention kernel walks key tiles as the tiled kernel does (online softmax,
   causal and key-length tiles skipped, GQA read in place) but computes
   ``S = (Q_int8 K_int8^T)`` with ``tl.dot`` on int8 into int32, dequantises it with
   ``scale_q * scale_k`` of the two tiles, and keeps the softmax in fp32 and
   ``P V`` in the input's fp16/bf16 with fp32 accumulation.

Error: per-tile int8 keeps about 2 significant digits of each score term; after the
softmax the output differs from exact attention by ~1e-2 relative (see tests).

Inputs ``q (B, H, Tq, D)``, ``k, v (B, Hkv, Tk, D|Dv)`` in float16/bfloat16, any
strides; output ``(B, H, Tq, Dv)`` in their dtype. Head dims up to 256.
Triton is imported and the kernels are defined when this module is imported (Triton
reads ``TRITON_INTERPRET`` then); :mod:`headwise.kernels` does not import it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

from .inputs import MAX_HEAD_DIM, check_int8_inputs
from .tiled_helpers import INTERPRET, LOG2E, query_tile_keys, visible

__all__ = ["int8_attention", "INTERPRET", "MAX_HEAD_DIM"]


# --------------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["T"])
def _quant_tiles(X, MEAN, XQ, SCALE,
                 stride_xb, stride_xh, stride_xt, stride_xd,
                 H, T, mult,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
                 HAS_MEAN: tl.constexpr):
    """One program per (tile, batch*head): XQ[b, h, rows, :] = round((X - mean) * mult
    / s) as int8, SCALE[b, h, tile] = s = max|(X - mean) * mult| / 127. Padded rows and
    columns of XQ are written as 0."""
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = tile * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    ok = (rows < T)[:, None] & (cols < HEAD_DIM)[None, :]
    x = tl.load(X + b * stride_xb + h * stride_xh + rows[:, None] * stride_xt + cols[None, :] * stride_xd,
                mask=ok, other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(MEAN + bh * HEAD_DIM + cols, mask=cols < HEAD_DIM, other=0.0)
        x = x - mean[None, :]
    x = tl.where(ok, x * mult, 0.0)
    scale = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), 1e-30) / 127.0
    y = x / scale
    # round half away from zero; |y| <= 127 so the int8 cast (a truncation) cannot wrap
    xq = (y + tl.where(y >= 0, 0.5, -0.5)).to(tl.int8)
    n_tiles = tl.cdiv(T, BLOCK)
    tl.store(XQ + (bh * n_tiles * BLOCK + rows[:, None]) * BLOCK_D + cols[None, :], xq)
    tl.store(SCALE + bh * n_tiles + tile, scale)


@triton.jit
def _pv_dot(p, v, UPCAST: tl.constexpr):
    if UPCAST:
        # the interpreter (Triton <= 3.9) multiplies bf16 as raw bits: widen first there
        c = tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(p.to(v.dtype), v)
    return c


@triton.jit
def _int8_inner(acc, l_i, m_i, q, q_scale, kq_base, ks_base, v_base, stride_vn, stride_vd,
                start_n, end_n, offs_m, kv_end, causal_off,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, V_DIM: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
                UPCAST: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        # quantised K is padded to whole tiles and BLOCK_D columns: no mask needed
        k = tl.load(kq_base + offs_n[:, None] * BLOCK_D + offs_d[None, :])
        k_scale = tl.load(ks_base + n0 // BLOCK_N)
        if MASKED:
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        mask=(offs_n < kv_end)[:, None] & (offs_dv < V_DIM)[None, :], other=0.0)
        else:
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_dv[None, :] * stride_vd,
                        mask=(offs_dv < V_DIM)[None, :], other=0.0)
        # int8 x int8 -> int32 on the tensor cores; one dequantisation per tile pair
        qk = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32) * (q_scale * k_scale)
        if MASKED:
            ok = visible(offs_n[None, :], offs_m[:, None], kv_end, causal_off, CAUSAL)
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _pv_dot(p, v, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk"])
def _int8_attn_fwd(QQ, QS, KQ, KS, V, O, KLEN,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_ob, stride_oh, stride_om, stride_od,
                   H, GROUP, Tq, Tk,
                   V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                   CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    num_m = tl.cdiv(Tq, BLOCK_M)
    num_n = tl.cdiv(Tk, BLOCK_N)
    pid = tl.program_id(0)
    bh = pid // num_m
    tile = pid % num_m
    if CAUSAL:
        tile = num_m - 1 - tile  # the heaviest query tiles first
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    bkv = b * (H // GROUP) + h // GROUP
    m0 = tile * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q = tl.load(QQ + ((b * H + h) * num_m * BLOCK_M + offs_m[:, None]) * BLOCK_D + offs_d[None, :])
    q_scale = tl.load(QS + (b * H + h) * num_m + tile)
    kq_base = KQ + bkv * num_n * BLOCK_N * BLOCK_D
    ks_base = KS + bkv * num_n
    v_base = V + b * stride_vb + (h // GROUP) * stride_vh

    kv_end, causal_off, full, hi = query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL, HAS_KLEN,
                                                   BLOCK_M, BLOCK_N)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc, l_i, m_i = _int8_inner(acc, l_i, m_i, q, q_scale, kq_base, ks_base, v_base, stride_vn, stride_vd,
                                0, full, offs_m, kv_end, causal_off, False, CAUSAL, V_DIM, BLOCK_D,
                                BLOCK_DV, BLOCK_N, UPCAST)
    acc, l_i, m_i = _int8_inner(acc, l_i, m_i, q, q_scale, kq_base, ks_base, v_base, stride_vn, stride_vd,
                                full, hi, offs_m, kv_end, causal_off, True, CAUSAL, V_DIM, BLOCK_D,
                                BLOCK_DV, BLOCK_N, UPCAST)
    empty = l_i == 0.0  # rows that saw no key: output 0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m < Tq)[:, None] & (offs_dv < V_DIM)[None, :])


# --------------------------------------------------------------------------- launchers
# (BLOCK_M, BLOCK_N, num_warps, num_stages) by padded head dim, largest first; the
# quantisation tiles are the kernel's tiles, so a config change re-quantises
_GPU_CONFIGS = {
    64: [(128, 64, 4, 4), (64, 64, 4, 3)],
    128: [(128, 64, 8, 3), (64, 64, 4, 3)],
    256: [(64, 64, 8, 2), (64, 32, 4, 2)],
}
_INTERPRET_CONFIG = (16, 16, 1, 1)


def _pad_dim(d: int, minimum: int) -> int:
    return max(minimum, triton.next_power_of_2(d))


def _quantize(x: Tensor, mean: Tensor | None, mult: float, block: int, block_d: int) -> tuple[Tensor, Tensor]:
    """``x (B, H, T, D)`` -> int8 tiles ``(B, H, n*block, block_d)`` and scales ``(B, H, n)``."""
    b, h, t, d = x.shape
    n = triton.cdiv(t, block)
    xq = torch.empty((b, h, n * block, block_d), dtype=torch.int8, device=x.device)
    scale = torch.empty((b, h, n), dtype=torch.float32, device=x.device)
    if b * h * n:
        _quant_tiles[(n, b * h)](x, x if mean is None else mean, xq, scale, *x.stride(), h, t, mult,
                                 HEAD_DIM=d, BLOCK_D=block_d, BLOCK=block, HAS_MEAN=mean is not None)
    return xq, scale


def _run(q, k, v, key_lengths, causal, scale, smooth_k, cfg) -> Tensor:
    block_m, block_n, warps, stages = cfg
    b, h, tq, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    block_d = _pad_dim(d, 32)  # int8 MMA takes K in steps of 32
    mean = k.float().mean(dim=2).contiguous() if smooth_k else None  # (B, Hkv, D)
    qq, qs = _quantize(q, None, scale * LOG2E, block_m, block_d)
    kq, ks = _quantize(k, mean, 1.0, block_n, block_d)
    out = torch.empty((b, tq, h, dv), dtype=q.dtype, device=q.device).transpose(1, 2)
    klen = q if key_lengths is None else key_lengths.to(device=q.device, dtype=torch.int32).contiguous()
    grid = (triton.cdiv(tq, block_m) * b * h,)
    extra = {} if INTERPRET else {"num_warps": warps, "num_stages": stages}
    _int8_attn_fwd[grid](qq, qs, kq, ks, v, out, klen, *v.stride(), *out.stride(), h, h // hkv, tq, tk,
                         V_DIM=dv, BLOCK_D=block_d, BLOCK_DV=_pad_dim(dv, 16), CAUSAL=causal,
                         HAS_KLEN=key_lengths is not None, UPCAST=INTERPRET and q.dtype == torch.bfloat16,
                         BLOCK_M=block_m, BLOCK_N=block_n, **extra)
    return out


@torch.no_grad()
def int8_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
    smooth_k: bool = True,
) -> Tensor:
    """softmax(q k^T * scale + mask) v with int8 ``q k^T`` (see the module docstring).

    Args:
        q: ``(B, H, Tq, D)`` float16/bfloat16.
        k, v: ``(B, Hkv, Tk, D)``, ``(B, Hkv, Tk, Dv)``; ``H`` a multiple of ``Hkv``.
        causal: query ``i`` sees keys ``j <= i + Tk - Tq`` (bottom-right aligned).
        key_lengths: ``(B,)`` ints; keys at positions ``>= key_lengths[b]`` are padding.
        scale: score scale, default ``1 / sqrt(D)``.
        smooth_k: subtract the mean key before quantising (exact for the softmax; turn
            off only to measure what it buys).

    Returns ``(B, H, Tq, Dv)`` in the inputs' dtype; rows that see no key are 0.
    Forward only: the result carries no gradient.
    """
    check_int8_inputs(q, k, v, key_lengths)
    b, h, tq, d = q.shape
    tk, dv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if b * h * tq == 0 or tk == 0:
        return torch.zeros((b, tq, h, dv), dtype=q.dtype, device=q.device).transpose(1, 2)
    if INTERPRET:
        return _run(q, k, v, key_lengths, causal, scale, smooth_k, _INTERPRET_CONFIG)
    configs = _GPU_CONFIGS[_pad_dim(max(d, dv), 64)]
    for i, cfg in enumerate(configs):
        try:
            return _run(q, k, v, key_lengths, causal, scale, smooth_k, cfg)
        except OutOfResources:
            if i == len(configs) - 1:
                raise
    raise AssertionError("unreachable")
