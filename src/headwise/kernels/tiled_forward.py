"""The forward kernels of the tiled attention (see :mod:`headwise.kernels.tiled`).

The forward pass walks the key/value tiles of one query tile with an online softmax
(running max ``m``, running sum ``l``, rescaled accumulator), so the ``Tq x Tk`` score
matrix never exists; one launch covers every ``(batch, head, query tile)``. It writes
the output and the log-sum-exp of each query row's scores (natural log, float32),
which is all the backward pass needs.

:func:`attn_fwd` is the default; :func:`attn_fwd_desc` a bench-only candidate for the
non-causal forward (``TiledOptions(fwd="desc" | "ws")``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiled_helpers import (
    dot,
    dot_acc,
    head_src,
    load_row_pair,
    load_rows,
    query_tile_keys,
    query_tile_program,
    store_tile,
    tile_ptrs,
    visible,
)

__all__ = ["attn_fwd", "attn_fwd_desc"]


@triton.jit
def _softmax_start(BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    """``(acc, l, m)`` before the first key tile. A finite start for the running max
    keeps exp2(m_old - m_new) NaN-free in rows that have seen only masked keys so far."""
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    return acc, l_i, m_i


@triton.jit
def _softmax_step(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC: tl.constexpr):
    """The online softmax over one key tile: ``qk`` its raw scores (``-inf`` where
    masked), ``v`` its values. Scores in log2 units: exp(s * scale) == exp2(s * scale *
    log2(e)). The launcher makes qk_scale > 0, so max(s) * qk_scale is the scaled row
    max and s * qk_scale - m is one FMA per score (no separate scaling pass)."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _softmax_finish(acc, l_i, m_i):
    """``(out, lse)`` after the last key tile; lse in natural log. Rows that saw no key
    get output 0 and lse -inf."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]  # one division per row, not per element
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    return out, lse


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, sk, sv, start_n, end_n, offs_m, kv_end, causal_off,
               qk_scale, b32, hkv32, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
               V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr):
    """k_src, v_src: the (batch, kv head)'s base pointers, or (USE_TMA) the (B, Hkv,
    Tk, D) tensor descriptors, whose loads zero-fill past Tk and past the head dim;
    sk, sv: K's and V's strides."""
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        # padding keys (from kv_end) are zeroed: p = 0 there must not meet a NaN
        k, v = load_row_pair(k_src, v_src, b32, hkv32, n0, sk, sv, kv_end, HEAD_DIM, V_DIM, BLOCK_N,
                             BLOCK_D, BLOCK_DV, MASKED, False, USE_TMA)
        qk = dot(q, tl.trans(k), DOT_PREC)
        if MASKED:
            ok = visible(offs_n[None, :], offs_m[:, None], kv_end, causal_off, CAUSAL)
            qk = tl.where(ok, qk, float("-inf"))
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def attn_fwd(Q, K, V, O, LSE, KLEN,
             stride_qb, stride_qh, stride_qm, stride_qd,
             stride_kb, stride_kh, stride_kn, stride_kd,
             stride_vb, stride_vh, stride_vn, stride_vd,
             stride_ob, stride_oh, stride_om, stride_od,
             H, GROUP, Tq, Tk, qk_scale, SEQ_BUCKET,
             HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
             DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """Q, K, V, O: tensors, or (USE_TMA: Hopper's tensor memory accelerator) tensor
    descriptors of the (B, H, T, D) views with blocks (1, 1, BLOCK_M or BLOCK_N, BLOCK_D)."""
    sq = (stride_qb, stride_qh, stride_qm, stride_qd)
    sk = (stride_kb, stride_kh, stride_kn, stride_kd)
    sv = (stride_vb, stride_vh, stride_vn, stride_vd)
    b, h, hkv, m0 = query_tile_program(H, GROUP, Tq, CAUSAL, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)

    b32, h32, hkv32 = b.to(tl.int32), h.to(tl.int32), hkv.to(tl.int32)
    q_src = head_src(Q, b, h, sq, USE_TMA)
    k_src = head_src(K, b, hkv, sk, USE_TMA)
    v_src = head_src(V, b, hkv, sv, USE_TMA)
    q = load_rows(q_src, b32, h32, m0, sq, Tq, HEAD_DIM, BLOCK_M, BLOCK_D, True, True, USE_TMA)

    kv_end, causal_off, full, hi = query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL, HAS_KLEN,
                                                   BLOCK_M, BLOCK_N)

    acc, l_i, m_i = _softmax_start(BLOCK_M, BLOCK_DV)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, sk, sv, 0, full, offs_m, kv_end,
                               causal_off, qk_scale, b32, hkv32, False, CAUSAL, HEAD_DIM, V_DIM,
                               BLOCK_D, BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, sk, sv, full, hi, offs_m, kv_end,
                               causal_off, qk_scale, b32, hkv32, True, CAUSAL, HEAD_DIM, V_DIM,
                               BLOCK_D, BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    out, lse = _softmax_finish(acc, l_i, m_i)

    if USE_TMA:  # the store clips rows past Tq and columns past the head dim
        O.store([b32, h32, m0, 0], out.to(q.dtype).reshape(1, 1, BLOCK_M, BLOCK_DV))
    else:
        o_ptrs = tile_ptrs(O, b, h, (stride_ob, stride_oh, stride_om, stride_od), offs_m, offs_dv)
        store_tile(o_ptrs, out.to(O.dtype.element_ty), offs_m, Tq, offs_dv, V_DIM)
    tl.store(LSE + (b * H + h) * Tq + offs_m, lse, mask=offs_m < Tq)


# ------------------------------------------------- forward variant: device descriptors
# A bench-only candidate (TiledOptions(fwd="desc"|"ws"); non-causal only): each program
# builds 2-D tensor descriptors of its (batch, head)'s (T, D) matrices on the device
# (tl.make_tensor_descriptor) instead of receiving host-side 4-D ones, and the loop
# over whole key tiles may be warp-specialised (tl.range(..., warp_specialize=True):
# producer warps issue the TMA loads, consumer warps the matrix products and softmax).
# The masked last tile runs in a plain loop. Kept only if measured faster on the GPU
# (bench/gpu_attention.py --variants desc ws).
@triton.jit
def _fwd_desc_inner(acc, l_i, m_i, q, k_desc, v_desc, start_n, end_n, offs_m, kv_end, qk_scale,
                    MASKED: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
                    WS: tl.constexpr):
    for n0 in tl.range(start_n, end_n, BLOCK_N, warp_specialize=WS):
        k = k_desc.load([n0, 0])  # zero past Tk and past the head dim
        v = v_desc.load([n0, 0])
        qk = dot(q, tl.trans(k), DOT_PREC)
        if MASKED:  # keys from kv_end on are padding, which may hold NaN
            key_ok = (n0 + tl.arange(0, BLOCK_N)) < kv_end
            qk = tl.where(key_ok[None, :], qk, float("-inf"))
            v = tl.where(key_ok[:, None], v, 0.0)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qk, v, qk_scale, DOT_PREC)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def attn_fwd_desc(Q, K, V, O, LSE, KLEN,
                  stride_qb, stride_qh, stride_qm, stride_qd,
                  stride_kb, stride_kh, stride_kn, stride_kd,
                  stride_vb, stride_vh, stride_vn, stride_vd,
                  stride_ob, stride_oh, stride_om, stride_od,
                  H, GROUP, Tq, Tk, qk_scale, SEQ_BUCKET,
                  HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
                  DOT_PREC: tl.constexpr, WS: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """The non-causal forward (CAUSAL is False; it is a parameter for the autotuner's
    key) with device-side descriptors; the head dim must be contiguous."""
    b, h, hkv, m0 = query_tile_program(H, GROUP, Tq, False, BLOCK_M)
    q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + h * stride_qh, shape=[Tq, HEAD_DIM],
                                       strides=[stride_qm, 1], block_shape=[BLOCK_M, BLOCK_D])
    k_desc = tl.make_tensor_descriptor(K + b * stride_kb + hkv * stride_kh, shape=[Tk, HEAD_DIM],
                                       strides=[stride_kn, 1], block_shape=[BLOCK_N, BLOCK_D])
    v_desc = tl.make_tensor_descriptor(V + b * stride_vb + hkv * stride_vh, shape=[Tk, V_DIM],
                                       strides=[stride_vn, 1], block_shape=[BLOCK_N, BLOCK_DV])
    o_desc = tl.make_tensor_descriptor(O + b * stride_ob + h * stride_oh, shape=[Tq, V_DIM],
                                       strides=[stride_om, 1], block_shape=[BLOCK_M, BLOCK_DV])
    q = q_desc.load([m0, 0])
    offs_m = m0 + tl.arange(0, BLOCK_M)
    kv_end, causal_off, full, hi = query_tile_keys(KLEN, b, Tq, Tk, m0, False, HAS_KLEN,
                                                   BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _softmax_start(BLOCK_M, BLOCK_DV)
    acc, l_i, m_i = _fwd_desc_inner(acc, l_i, m_i, q, k_desc, v_desc, 0, full, offs_m, kv_end,
                                    qk_scale, False, BLOCK_N, DOT_PREC, WS)
    acc, l_i, m_i = _fwd_desc_inner(acc, l_i, m_i, q, k_desc, v_desc, full, hi, offs_m, kv_end,
                                    qk_scale, True, BLOCK_N, DOT_PREC, False)
    out, lse = _softmax_finish(acc, l_i, m_i)
    o_desc.store([m0, 0], out.to(q.dtype))  # clips rows past Tq, columns past the head dim
    tl.store(LSE + (b * H + h) * Tq + offs_m, lse, mask=offs_m < Tq)

