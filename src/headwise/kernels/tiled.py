"""FlashAttention-style tiled attention in Triton: forward and backward.

The forward pass walks the key/value tiles of one query tile with an online
softmax (running max ``m``, running sum ``l``, rescaled accumulator), so the
``Tq x Tk`` score matrix never exists; one launch covers every
``(batch, head, query tile)``. It returns the output and the log-sum-exp of each
query row's scores (natural log, float32), which is all the backward pass needs
to recompute the probabilities tile by tile:

* ``delta_i = sum_d dO_id * O_id`` (one small kernel),
* dK/dV: one program per ``(batch, kv head, key tile)``, looping over the query
  tiles of every query head that shares this K/V head (grouped-query attention
  sums the group's gradients in registers: no repeated K/V),
* dQ: one program per ``(batch, head, query tile)``, looping over key tiles (no
  atomics, a fixed summation order; ``QK^T`` and ``dO V^T`` are computed again, so
  a step costs seven tile products in all). ``HEADWISE_TILED_BWD=fused`` instead adds
  each dK/dV step's ``dS^T K`` atomically to a float32 dQ buffer (five products, as
  FlashAttention-2 does): slower on an H200 from 2k keys on (see ``_fuse_dq``).

On Hopper and later GPUs the kernels move the tiles they stream (the forward's Q,
K, V and output; dK/dV's Q and dO; dQ's K and V) with the tensor memory accelerator
(host-side tensor descriptors of the ``(B, H, T, D)`` views; loads zero-fill past the
sequence and the head dim, stores clip) when the tensors are 16-bit with 16-byte
aligned strides; otherwise, and with ``HEADWISE_TILED_TMA=0``, pointer loads.

Candidates for a GPU to measure against these defaults (bench-only, off unless
selected): ``HEADWISE_TILED_FWD=desc|ws``, the non-causal forward with device-side
descriptors (``tl.make_tensor_descriptor``) and optionally a warp-specialised key
loop; ``HEADWISE_TILED_DKDV=persistent``, the dK/dV pass on one program per SM.

Masks: causal (bottom-right aligned: query ``i`` sees key ``j`` iff
``j <= i + Tk - Tq``) and key lengths (keys ``>= key_lengths[b]`` are padding).
Tiles that are masked out entirely are never visited (the loop bounds exclude
them), tiles that are entirely visible run without mask arithmetic, and only the
tiles on a boundary pay for ``tl.where``. A query row that sees no key gets an
output of exactly 0, a log-sum-exp of ``-inf`` and zero gradients.

Head dims up to 256 of any size: tiles are padded to the next power of two
(at least 16, the smallest ``tl.dot``) with masked loads. Any strides: the
launchers pass every stride, so the ``(B, H, T, D)`` views that the layer makes
by transposing ``(B, T, H, D)`` buffers are read in place.

fp32 inputs use IEEE fp32 ``tl.dot`` unless ``torch.set_float32_matmul_precision``
is ``"high"``/``"medium"``, which selects TF32 (faster on GPUs, ~1e-3 relative).

This module imports Triton and defines the kernels at import time (Triton reads
``TRITON_INTERPRET`` then); :mod:`headwise.kernels` imports it lazily.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

try:  # host-side TMA descriptors (Triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

__all__ = ["tiled_attention", "tiled_attention_lse", "INTERPRET"]

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels run under the Triton interpreter (numpy on the CPU)."""

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------- helpers
@triton.jit
def _load_tile(ptrs, rows, n_rows, cols, N_COLS: tl.constexpr, BLOCK_COLS: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a (rows x cols) tile, zero-filling rows >= n_rows (if CHECK_ROWS) and
    padded columns >= N_COLS (only when the head dim is not a power of two)."""
    if CHECK_ROWS:
        if N_COLS == BLOCK_COLS:
            t = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
        else:
            t = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (cols < N_COLS)[None, :], other=0.0)
    else:
        if N_COLS == BLOCK_COLS:
            t = tl.load(ptrs)
        else:
            t = tl.load(ptrs, mask=(cols < N_COLS)[None, :], other=0.0)
    return t


@triton.jit
def _load_rows(src, b32, h32, r0, stride_r, stride_c, n_rows, N_COLS: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, CHECK_ROWS: tl.constexpr,
               BOUND_IS_EXTENT: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows ``[r0, r0 + BLOCK_R)`` of one (batch, head)'s ``(T, D)`` matrix, zero from
    ``n_rows`` on (if CHECK_ROWS) and past the head dim: from a ``(B, H, T, D)`` tensor
    descriptor (USE_TMA; its loads zero-fill past T and D, so only a bound inside T,
    ``not BOUND_IS_EXTENT``, costs a select) or from the (batch, head)'s base pointer."""
    offs_r = r0 + tl.arange(0, BLOCK_R)
    if USE_TMA:
        t = src.load([b32, h32, r0, 0]).reshape(BLOCK_R, BLOCK_C)
        if CHECK_ROWS and not BOUND_IS_EXTENT:
            t = tl.where((offs_r < n_rows)[:, None], t, 0.0)
    else:
        offs_c = tl.arange(0, BLOCK_C)
        t = _load_tile(src + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
                       offs_r, n_rows, offs_c, N_COLS, BLOCK_C, CHECK_ROWS)
    return t


@triton.jit
def _store_tile(ptrs, value, rows, n_rows, cols, N_COLS: tl.constexpr):
    tl.store(ptrs, value, mask=(rows < n_rows)[:, None] & (cols < N_COLS)[None, :])


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr):
    if DOT_PREC == "upcast":
        # the interpreter (Triton <= 3.9) multiplies bf16 tiles as raw uint16 bits:
        # there, and only there, bf16 operands are widened to fp32 first
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PREC)
    return c


@triton.jit
def _dot_acc(a, b, acc, DOT_PREC: tl.constexpr):
    """acc + a @ b with the accumulator handed to the MMA (wgmma accumulates in
    place instead of a separate tile add after a zero-initialised product)."""
    if DOT_PREC == "upcast":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        c = tl.dot(a, b, acc, input_precision=DOT_PREC)
    return c


# --------------------------------------------------------------------------- forward
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
               start_n, end_n, offs_m, kv_end, causal_off, qk_scale, b32, hkv32,
               MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
               V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr):
    """k_src, v_src: the (batch, kv head)'s base pointers, or (USE_TMA) the (B, Hkv,
    Tk, D) tensor descriptors, whose loads zero-fill past Tk and past the head dim."""
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        # padding keys (from kv_end) are zeroed: p = 0 there must not meet a NaN
        k = _load_rows(k_src, b32, hkv32, n0, stride_kn, stride_kd, kv_end, HEAD_DIM, BLOCK_N,
                       BLOCK_D, MASKED, False, USE_TMA)
        v = _load_rows(v_src, b32, hkv32, n0, stride_vn, stride_vd, kv_end, V_DIM, BLOCK_N,
                       BLOCK_DV, MASKED, False, USE_TMA)
        # scores in log2 units: exp(s * scale) == exp2(s * scale * log2(e)). The
        # launcher makes qk_scale > 0, so max(s) * qk_scale is the scaled row max
        # and s * qk_scale - m is one FMA per score (no separate scaling pass).
        qk = _dot(q, tl.trans(k), DOT_PREC)
        if MASKED:
            ok = offs_n[None, :] < kv_end
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + causal_off)
            qk = tl.where(ok, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Which keys the query tile starting at ``m0`` reads: ``(kv_end, causal_off, full,
    hi)``. Keys ``[0, full)`` come in whole tiles that need no mask, ``[full, hi)`` are
    read with masks, keys from ``hi`` on are skipped (after the sequence's length, or
    in every row's future: bottom-right causal, query i sees j <= i + causal_off)."""
    kv_end = Tk
    if HAS_KLEN:
        kv_end = tl.minimum(tl.load(KLEN + b), Tk)
    causal_off = Tk - Tq
    if CAUSAL:
        hi = tl.minimum(kv_end, tl.maximum(0, tl.minimum(m0 + BLOCK_M, Tq) + causal_off))
        full = tl.minimum(hi, tl.maximum(0, m0 + causal_off + 1))
    else:
        hi = kv_end
        full = kv_end
    full = (full // BLOCK_N) * BLOCK_N
    return kv_end, causal_off, full, hi


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def _attn_fwd(Q, K, V, O, LSE, KLEN,
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
    # one flat grid: consecutive programs are the query tiles of one head, so they
    # share that head's K/V in L2; causal runs the heaviest (last) tiles first.
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // num_m
    tile = pid % num_m
    if CAUSAL:
        tile = num_m - 1 - tile
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hkv = h // GROUP
    m0 = tile * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)

    b32, h32, hkv32 = b.to(tl.int32), h.to(tl.int32), hkv.to(tl.int32)
    if USE_TMA:
        q_src = Q
        k_src = K
        v_src = V
    else:
        q_src = Q + b * stride_qb + h * stride_qh
        k_src = K + b * stride_kb + hkv * stride_kh
        v_src = V + b * stride_vb + hkv * stride_vh
    q = _load_rows(q_src, b32, h32, m0, stride_qm, stride_qd, Tq, HEAD_DIM, BLOCK_M, BLOCK_D,
                   True, True, USE_TMA)

    kv_end, causal_off, full, hi = _query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL, HAS_KLEN,
                                                    BLOCK_M, BLOCK_N)

    # a finite start for the running max keeps exp2(m_old - m_new) NaN-free in
    # rows that have seen only masked keys so far
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd,
                               stride_vn, stride_vd, 0, full, offs_m, kv_end, causal_off,
                               qk_scale, b32, hkv32, False, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D,
                               BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_kn, stride_kd,
                               stride_vn, stride_vd, full, hi, offs_m, kv_end, causal_off,
                               qk_scale, b32, hkv32, True, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D,
                               BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    empty = l_i == 0.0  # rows that saw no key: output 0, lse -inf
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]  # one division per row, not per element
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)

    if USE_TMA:  # the store clips rows past Tq and columns past the head dim
        O.store([b32, h32, m0, 0], out.to(q.dtype).reshape(1, 1, BLOCK_M, BLOCK_DV))
    else:
        o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_dv[None, :] * stride_od
        _store_tile(o_ptrs, out.to(O.dtype.element_ty), offs_m, Tq, offs_dv, V_DIM)
    tl.store(LSE + (b * H + h) * Tq + offs_m, lse, mask=offs_m < Tq)


# ------------------------------------------------- forward variant: device descriptors
# A bench-only candidate (HEADWISE_TILED_FWD=desc|ws; non-causal only): each program
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
        qk = _dot(q, tl.trans(k), DOT_PREC)
        if MASKED:  # keys from kv_end on are padding, which may hold NaN
            key_ok = (n0 + tl.arange(0, BLOCK_N)) < kv_end
            qk = tl.where(key_ok[None, :], qk, float("-inf"))
            v = tl.where(key_ok[:, None], v, 0.0)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def _attn_fwd_desc(Q, K, V, O, LSE, KLEN,
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
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // num_m
    m0 = (pid % num_m) * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hkv = h // GROUP
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
    kv_end, causal_off, full, hi = _query_tile_keys(KLEN, b, Tq, Tk, m0, False, HAS_KLEN,
                                                    BLOCK_M, BLOCK_N)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc, l_i, m_i = _fwd_desc_inner(acc, l_i, m_i, q, k_desc, v_desc, 0, full, offs_m, kv_end,
                                    qk_scale, False, BLOCK_N, DOT_PREC, WS)
    acc, l_i, m_i = _fwd_desc_inner(acc, l_i, m_i, q, k_desc, v_desc, full, hi, offs_m, kv_end,
                                    qk_scale, True, BLOCK_N, DOT_PREC, False)
    empty = l_i == 0.0  # rows that saw no key: output 0, lse -inf
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc * (1.0 / l_safe)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    o_desc.store([m0, 0], out.to(q.dtype))  # clips rows past Tq, columns past the head dim
    tl.store(LSE + (b * H + h) * Tq + offs_m, lse, mask=offs_m < Tq)


# --------------------------------------------------------------------------- backward
@triton.jit(do_not_specialize=["H", "Tq"])
def _bwd_delta(O, DO, DELTA,
               stride_ob, stride_oh, stride_om, stride_od,
               stride_dob, stride_doh, stride_dom, stride_dod,
               H, Tq, V_DIM: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = (pid // num_m).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    o = _load_tile(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
                   + offs_dv[None, :] * stride_od, offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_dv[None, :] * stride_dod, offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32,
                stride_qm, stride_qd, stride_dom, stride_dod, stride_dqm, stride_dqd,
                start_m, end_m, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr, FUSE_DQ: tl.constexpr,
                USE_TMA: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for m0 in range(start_m, end_m, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load_rows(q_src, b32, h32, m0, stride_qm, stride_qd, Tq, HEAD_DIM, BLOCK_M,
                       BLOCK_D, True, True, USE_TMA)
        do = _load_rows(do_src, b32, h32, m0, stride_dom, stride_dod, Tq, V_DIM, BLOCK_M,
                        BLOCK_DV, True, True, USE_TMA)
        # rows past Tq and rows that saw no key (lse = -inf) must give p = 0
        lse = tl.load(lse_base + offs_m, mask=offs_m < Tq, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=offs_m < Tq, other=0.0)
        qk_t = _dot(k, tl.trans(q), DOT_PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(qk_t - lse[None, :])
        if MASKED:
            ok = offs_n[:, None] < kv_end
            if CAUSAL:
                ok = ok & (offs_n[:, None] <= offs_m[None, :] + causal_off)
            p_t = tl.where(ok, p_t, 0.0)
        dv = _dot_acc(p_t.to(do.dtype), do, dv, DOT_PREC)
        dp_t = _dot(v, tl.trans(do), DOT_PREC)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = _dot_acc(ds_t, q, dk, DOT_PREC)
        if FUSE_DQ:  # this key tile's share of dQ, summed over key tiles in float32
            dq = _dot(tl.trans(ds_t), k, DOT_PREC) * sm_scale
            tl.atomic_add(dq_base + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd, dq,
                          mask=(offs_m < Tq)[:, None] & (offs_d < HEAD_DIM)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, h, H,
               stride_qb, stride_qh, stride_qm, stride_qd,
               stride_dob, stride_doh, stride_dom, stride_dod,
               stride_dqb, stride_dqh, stride_dqm, stride_dqd,
               start_m, mask_end, full_from, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
               CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
               DOT_PREC: tl.constexpr, FUSE_DQ: tl.constexpr, USE_TMA: tl.constexpr):
    """One query head's contribution to a key tile's dk, dv (and, FUSE_DQ, to dQ):
    the query tiles on a mask boundary, then those that see every key of the tile.
    Q, DO: tensors, or (USE_TMA) their (B, H, T, D) tensor descriptors."""
    if USE_TMA:
        q_src = Q
        do_src = DO
    else:
        q_src = Q + b * stride_qb + h * stride_qh
        do_src = DO + b * stride_dob + h * stride_doh
    b32, h32 = b.to(tl.int32), h.to(tl.int32)
    dq_base = DQ + b * stride_dqb + h * stride_dqh
    lse_base = LSE + (b * H + h) * Tq
    delta_base = DELTA + (b * H + h) * Tq
    dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32,
                         stride_qm, stride_qd, stride_dom, stride_dod, stride_dqm, stride_dqd,
                         start_m, mask_end, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                         True, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC,
                         FUSE_DQ, USE_TMA)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32,
                         stride_qm, stride_qd, stride_dom, stride_dod, stride_dqm, stride_dqd,
                         full_from, Tq, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                         False, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC,
                         FUSE_DQ, USE_TMA)
    return dk, dv


@triton.jit
def _dkdv_tile(pid, Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN,
               stride_qb, stride_qh, stride_qm, stride_qd,
               stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd,
               stride_dob, stride_doh, stride_dom, stride_dod,
               stride_dkb, stride_dkh, stride_dkn, stride_dkd,
               stride_dvb, stride_dvh, stride_dvn, stride_dvd,
               stride_dqb, stride_dqh, stride_dqm, stride_dqd,
               H, HKV, GROUP, Tq, Tk, qk_scale, sm_scale, SEQ_BUCKET,
               HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
               DOT_PREC: tl.constexpr, GQA: tl.constexpr, FUSE_DQ: tl.constexpr,
               USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of key tile ``pid`` (in the flat (batch, kv head, key tile) order);
    with FUSE_DQ also its float32 share of dQ, added atomically into DQ (five tile
    products per step instead of the seven that a separate dQ pass needs, at the
    price of a run-to-run varying summation order)."""
    num_n = tl.cdiv(Tk, BLOCK_N)
    bhkv = pid // num_n
    n0 = (pid % num_n) * BLOCK_N
    b = (bhkv // HKV).to(tl.int64)
    hkv = (bhkv % HKV).to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    kv_end = Tk
    if HAS_KLEN:
        kv_end = tl.minimum(tl.load(KLEN + b), Tk)
    causal_off = Tk - Tq
    k = _load_tile(K + b * stride_kb + hkv * stride_kh + offs_n[:, None] * stride_kn
                   + offs_d[None, :] * stride_kd, offs_n, kv_end, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_tile(V + b * stride_vb + hkv * stride_vh + offs_n[:, None] * stride_vn
                   + offs_dv[None, :] * stride_vd, offs_n, kv_end, offs_dv, V_DIM, BLOCK_DV, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    # query tiles [start_m, full_from) straddle a mask boundary, [full_from, Tq) see
    # every key of this tile; a key tile past kv_end is skipped (zero gradient)
    start_m = 0
    full_from = 0
    if CAUSAL:
        start_m = (tl.maximum(0, n0 - causal_off) // BLOCK_M) * BLOCK_M
        full_from = tl.cdiv(tl.maximum(0, n0 + BLOCK_N - 1 - causal_off), BLOCK_M) * BLOCK_M
    full_from = tl.where(n0 + BLOCK_N > kv_end, Tq, full_from)
    start_m = tl.where(n0 >= kv_end, Tq, start_m)
    full_from = tl.where(n0 >= kv_end, Tq, full_from)
    mask_end = tl.minimum(full_from, Tq)

    if GQA:  # the whole group's gradients meet in dk, dv
        for g in range(0, GROUP):
            dk, dv = _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, hkv * GROUP + g, H,
                                stride_qb, stride_qh, stride_qm, stride_qd,
                                stride_dob, stride_doh, stride_dom, stride_dod,
                                stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                                start_m, mask_end, full_from, offs_n, kv_end, causal_off, Tq,
                                qk_scale, sm_scale, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV,
                                BLOCK_M, DOT_PREC, FUSE_DQ, USE_TMA)
    else:  # no loop around the pipelined loops: ptxas then keeps it all in registers
        dk, dv = _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, hkv, H,
                            stride_qb, stride_qh, stride_qm, stride_qd,
                            stride_dob, stride_doh, stride_dom, stride_dod,
                            stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                            start_m, mask_end, full_from, offs_n, kv_end, causal_off, Tq,
                            qk_scale, sm_scale, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV,
                            BLOCK_M, DOT_PREC, FUSE_DQ, USE_TMA)

    dk = dk * sm_scale
    _store_tile(DK + b * stride_dkb + hkv * stride_dkh + offs_n[:, None] * stride_dkn
                + offs_d[None, :] * stride_dkd, dk.to(DK.dtype.element_ty), offs_n, Tk, offs_d,
                HEAD_DIM)
    _store_tile(DV + b * stride_dvb + hkv * stride_dvh + offs_n[:, None] * stride_dvn
                + offs_dv[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), offs_n, Tk, offs_dv,
                V_DIM)



@triton.jit(do_not_specialize=["H", "HKV", "GROUP", "Tq", "Tk", "SEQ_BUCKET", "BHKV"])
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN,
                   stride_qb, stride_qh, stride_qm, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_dom, stride_dod,
                   stride_dkb, stride_dkh, stride_dkn, stride_dkd,
                   stride_dvb, stride_dvh, stride_dvn, stride_dvd,
                   stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                   H, HKV, GROUP, Tq, Tk, qk_scale, sm_scale, SEQ_BUCKET, BHKV,
                   HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
                   DOT_PREC: tl.constexpr, GQA: tl.constexpr, FUSE_DQ: tl.constexpr,
                   USE_TMA: tl.constexpr, PERSISTENT: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """dK, dV (and with FUSE_DQ dQ's float32 shares) of every key tile: one program
    per tile, or (PERSISTENT, HEADWISE_TILED_DKDV=persistent: a candidate for the GPU
    to measure) a grid of about one program per SM, each taking every
    ``num_programs``-th of the BHKV * cdiv(Tk, BLOCK_N) tiles in turn."""
    if PERSISTENT:
        n_tiles = BHKV * tl.cdiv(Tk, BLOCK_N)
        for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            _dkdv_tile(tile,
                Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN, stride_qb, stride_qh, stride_qm,
                stride_qd, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh,
                stride_vn, stride_vd, stride_dob, stride_doh, stride_dom, stride_dod,
                stride_dkb, stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh,
                stride_dvn, stride_dvd, stride_dqb, stride_dqh, stride_dqm, stride_dqd, H, HKV,
                GROUP, Tq, Tk, qk_scale, sm_scale, SEQ_BUCKET, HEAD_DIM, V_DIM, BLOCK_D,
                BLOCK_DV, CAUSAL, HAS_KLEN, DOT_PREC, GQA, FUSE_DQ, USE_TMA, BLOCK_M, BLOCK_N)
    else:  # no loop around the tile: the default's code as it was
        _dkdv_tile(tl.program_id(0),
            Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN, stride_qb, stride_qh, stride_qm,
            stride_qd, stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh,
            stride_vn, stride_vd, stride_dob, stride_doh, stride_dom, stride_dod, stride_dkb,
            stride_dkh, stride_dkn, stride_dkd, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
            stride_dqb, stride_dqh, stride_dqm, stride_dqd, H, HKV, GROUP, Tq, Tk, qk_scale,
            sm_scale, SEQ_BUCKET, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, CAUSAL, HAS_KLEN,
            DOT_PREC, GQA, FUSE_DQ, USE_TMA, BLOCK_M, BLOCK_N)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, stride_kn, stride_kd, stride_vn,
              stride_vd, start_n, end_n, offs_m, kv_end, causal_off, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
              V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr):
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_src, b32, hkv32, n0, stride_kn, stride_kd, kv_end, HEAD_DIM, BLOCK_N,
                       BLOCK_D, MASKED, False, USE_TMA)
        v = _load_rows(v_src, b32, hkv32, n0, stride_vn, stride_vd, kv_end, V_DIM, BLOCK_N,
                       BLOCK_DV, MASKED, False, USE_TMA)
        qk = _dot(q, tl.trans(k), DOT_PREC) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if MASKED:
            ok = offs_n[None, :] < kv_end
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None] + causal_off)
            p = tl.where(ok, p, 0.0)
        dp = _dot(do, tl.trans(v), DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = _dot_acc(ds.to(k.dtype), k, dq, DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, KLEN,
                 stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_dom, stride_dod,
                 stride_dqb, stride_dqh, stride_dqm, stride_dqd,
                 H, GROUP, Tq, Tk, qk_scale, sm_scale, SEQ_BUCKET,
                 HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
                 DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """dQ of one query tile; K, V: tensors, or (USE_TMA) their tensor descriptors."""
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // num_m
    tile = pid % num_m
    if CAUSAL:
        tile = num_m - 1 - tile
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hkv = h // GROUP
    m0 = tile * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q = _load_tile(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                   + offs_d[None, :] * stride_qd, offs_m, Tq, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                    + offs_dv[None, :] * stride_dod, offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    lse = tl.load(LSE + (b * H + h) * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + (b * H + h) * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    if USE_TMA:
        k_src = K
        v_src = V
    else:
        k_src = K + b * stride_kb + hkv * stride_kh
        v_src = V + b * stride_vb + hkv * stride_vh
    b32, hkv32 = b.to(tl.int32), hkv.to(tl.int32)

    kv_end, causal_off, full, hi = _query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL, HAS_KLEN,
                                                    BLOCK_M, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, stride_kn, stride_kd,
                   stride_vn, stride_vd, 0, full, offs_m, kv_end, causal_off, qk_scale, False,
                   CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, stride_kn, stride_kd,
                   stride_vn, stride_vd, full, hi, offs_m, kv_end, causal_off, qk_scale, True,
                   CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_N, DOT_PREC, USE_TMA)
    dq = dq * sm_scale
    _store_tile(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm
                + offs_d[None, :] * stride_dqd, dq.to(DQ.dtype.element_ty), offs_m, Tq, offs_d,
                HEAD_DIM)


# --------------------------------------------------------------------------- configs
def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Hopper (H100/H200, 227 KB shared memory per SM). Short lists on purpose: under
# autotuning each config compiles once per head dim/dtype/mask combination, and
# without it (HEADWISE_TILED_AUTOTUNE=0) the first one is used, so each list starts
# with the shape known to work for FlashAttention-style Triton kernels on Hopper
# (Triton's fused-attention tutorial, FA2): forward 128 queries x 64/128 keys,
# 8 warps; dK/dV 128 keys per program stepping 32 queries; dQ 128 queries x
# 32/64 keys. Every config was compiled for sm_90a (bf16, causal and not, key
# lengths, Hkv == H and grouped) and kept only if ptxas reported no register
# spills (at most ~100 bytes in the grouped dK/dV variant, where the loop over the
# group keeps more live); the shared memory of each is under 227 KB (the largest,
# forward 128 x 128 x 3 stages at D=128, needs 224 KB). The last config of each
# list has tiles small enough for fp32 (tried first for fp32 without autotuning).
# Configs that do not fit are discarded by the autotuner (OutOfResources). Added
# later and not spill-checked: the dK/dV tiles of 128 keys x 64 queries (2 stages:
# what the autotuner picked on an H200 from 2k keys; 3 stages), the forward's
# 128 x 64 in 2 stages (96 KB of shared memory at D=128: two programs fit an SM),
# and the TMA and fused-dQ variants, which run the same lists.
_FWD_CONFIGS = {
    "small": [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 4, 3),  # D <= 64
              _cfg(64, 64, 4, 3)],
    "medium": [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 2), _cfg(128, 128, 8, 3),  # D <= 128
               _cfg(128, 64, 8, 4), _cfg(128, 64, 8, 2), _cfg(64, 64, 4, 2)],
    "large": [_cfg(64, 32, 8, 2), _cfg(64, 64, 8, 2), _cfg(32, 32, 4, 1)],  # D <= 256
}
_DKDV_CONFIGS = {  # BLOCK_N: the key tile a program owns; BLOCK_M: its query step
    "small": [_cfg(32, 128, 8, 3), _cfg(64, 128, 8, 3), _cfg(64, 128, 8, 2),
              _cfg(32, 64, 4, 3)],
    "medium": [_cfg(32, 128, 8, 2), _cfg(32, 128, 8, 3), _cfg(64, 128, 8, 2),
               _cfg(64, 128, 8, 3), _cfg(64, 64, 8, 3), _cfg(32, 64, 4, 2)],
    "large": [_cfg(32, 32, 8, 2), _cfg(16, 32, 8, 2), _cfg(16, 32, 4, 1)],
}
_DQ_CONFIGS = {  # 128 x 128 (not spill-checked): a larger dQ tile for the autotuner to try
    "small": [_cfg(128, 64, 8, 3), _cfg(128, 32, 8, 3), _cfg(128, 32, 4, 3),
              _cfg(128, 128, 8, 2), _cfg(64, 32, 4, 3)],
    "medium": [_cfg(128, 64, 8, 3), _cfg(128, 64, 8, 2), _cfg(128, 32, 8, 3),
               _cfg(64, 32, 8, 3), _cfg(128, 128, 8, 2), _cfg(64, 32, 4, 2)],
    "large": [_cfg(32, 16, 4, 2), _cfg(64, 32, 8, 2), _cfg(32, 16, 4, 1)],
}
_CONFIGS = {"fwd": _FWD_CONFIGS, "dkdv": _DKDV_CONFIGS, "dq": _DQ_CONFIGS,
            "fwd_desc": _FWD_CONFIGS}
_KERNELS = {"fwd": "_attn_fwd", "dkdv": "_attn_bwd_dkdv", "dq": "_attn_bwd_dq",
            "fwd_desc": "_attn_fwd_desc"}
# Without autotuning (HEADWISE_TILED_AUTOTUNE=0): the first config that compiles,
# in list order (the last, smallest, first for fp32, whose tiles are twice as big).
_FIXED: dict[tuple, triton.Config] = {}
# The interpreter runs programs one after another in numpy: small tiles keep the
# test shapes multi-tile (so masks and loop bounds are exercised) and fast.
_INTERPRET_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16), "fwd_desc": (32, 16)}
_DELTA_BLOCK_M = 64
_KEYS = ["HEAD_DIM", "V_DIM", "CAUSAL", "HAS_KLEN", "SEQ_BUCKET", "GROUP"]
_EXTRA_KEYS = {"fwd": [], "dkdv": ["FUSE_DQ", "PERSISTENT"], "dq": [], "fwd_desc": ["WS"]}


def _dim_class(d: int) -> str:
    return "small" if d <= 64 else ("medium" if d <= 128 else "large")


def _seq_bucket(tq: int, tk: int) -> int:
    t = max(tq, tk)
    return 0 if t <= 1024 else (1 if t <= 4096 else 2)


_TUNERS: dict[tuple, object] = {}


# which arguments are tensor descriptors (USE_TMA) in each kernel, and their tiles
_TMA_ARGS = {
    "fwd": {"Q": ("BLOCK_M", "BLOCK_D"), "K": ("BLOCK_N", "BLOCK_D"),
            "V": ("BLOCK_N", "BLOCK_DV"), "O": ("BLOCK_M", "BLOCK_DV")},
    "dkdv": {"Q": ("BLOCK_M", "BLOCK_D"), "DO": ("BLOCK_M", "BLOCK_DV")},
    "dq": {"K": ("BLOCK_N", "BLOCK_D"), "V": ("BLOCK_N", "BLOCK_DV")},
}


def _set_tma_blocks(kind: str, nargs: dict) -> None:
    """Give a kernel's tensor descriptors the launch config's tile shapes."""
    for name, (rows, cols) in _TMA_ARGS[kind].items():
        nargs[name].block_shape = [1, 1, nargs[rows], nargs[cols]]


def _with_tma_hook(cfg: triton.Config, kind: str) -> triton.Config:
    return triton.Config(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         pre_hook=functools.partial(_set_tma_blocks, kind))


def _tuned(kind: str, dim_class: str, tma: bool):
    key = (kind, dim_class, tma)
    if key not in _TUNERS:
        configs = _CONFIGS[kind][dim_class]
        if tma:
            configs = [_with_tma_hook(c, kind) for c in configs]
        # the fused backward adds into its dQ buffer: zeroed before each timed config
        reset = ["DQ"] if kind == "dkdv" else None
        fn = globals()[_KERNELS[kind]]
        _TUNERS[key] = triton.autotune(configs=configs, key=_KEYS + _EXTRA_KEYS[kind],
                                       reset_to_zero=reset)(fn)
    return _TUNERS[key]


def _autotune_enabled() -> bool:
    return os.environ.get("HEADWISE_TILED_AUTOTUNE", "1") != "0"


def _launch(kind: str, fn, n_rows: int, n_programs_per_row_tile: int, args: tuple,
            meta: dict, dtype: torch.dtype, max_programs: int | None = None) -> None:
    """Launch ``fn`` on a flat grid of ``cdiv(n_rows, BLOCK) * n_programs_per_row_tile``
    programs (at most ``max_programs``: a persistent kernel loops over the rest) with
    the interpreter's, a fixed or the autotuned config."""
    cap = (lambda n: n) if max_programs is None else (lambda n: min(n, max_programs))
    tile_key = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"
    dim_class = _dim_class(max(meta["BLOCK_D"], meta["BLOCK_DV"]))
    tma = meta.get("USE_TMA", False)

    def set_blocks(blocks: dict) -> None:
        if tma:
            _set_tma_blocks(kind, {**dict(zip(fn.arg_names, args, strict=False)), **meta, **blocks})

    if INTERPRET:
        bm, bn = _INTERPRET_BLOCKS[kind]
        blocks = {"BLOCK_M": bm, "BLOCK_N": bn}
        grid = (cap(triton.cdiv(n_rows, blocks[tile_key]) * n_programs_per_row_tile),)
        set_blocks(blocks)
        fn[grid](*args, **meta, **blocks)
        return
    if _autotune_enabled():
        def grid(m):
            return (cap(triton.cdiv(n_rows, m[tile_key]) * n_programs_per_row_tile),)

        _tuned(kind, dim_class, tma)[grid](*args, **meta)
        return
    key = (kind, dtype, *sorted(meta.items()))
    configs = _CONFIGS[kind][dim_class]
    if key in _FIXED:
        configs = [_FIXED[key]]
    elif dtype == torch.float32:
        configs = configs[::-1]
    for i, cfg in enumerate(configs):
        grid = (cap(triton.cdiv(n_rows, cfg.kwargs[tile_key]) * n_programs_per_row_tile),)
        set_blocks(cfg.kwargs)
        try:
            fn[grid](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps,
                     num_stages=cfg.num_stages)
        except OutOfResources:
            if i == len(configs) - 1:
                raise
            continue
        _FIXED[key] = cfg
        return


def _fuse_dq() -> bool:
    """Backward in one pass with dQ added atomically (``HEADWISE_TILED_BWD=fused``) or
    in two passes, dK/dV then dQ (``split``, the default). Measured on an H200 (bf16,
    D=128, bench/gpu_attention.py, three runs): from 2k keys on the split passes are
    4-12% faster, the atomic adds (which grow with the number of key tiles) costing
    more than the two tile products they save; at 1k keys the runs disagreed.
    Always split under ``torch.use_deterministic_algorithms(True)``: its sums run in
    a fixed order."""
    choice = os.environ.get("HEADWISE_TILED_BWD", "split")
    if choice not in ("fused", "split"):
        raise ValueError(f"HEADWISE_TILED_BWD must be 'fused' or 'split', got {choice!r}")
    return choice == "fused" and not torch.are_deterministic_algorithms_enabled()


def _persistent_dkdv(device: torch.device) -> int | None:
    """``HEADWISE_TILED_DKDV=persistent``: the dK/dV pass on a grid of one program per
    SM (three in the interpreter, so that each program takes several tiles), a
    candidate for the GPU to measure against the default (unset or ``default``: one
    program per key tile). Returns the grid's cap, or None."""
    choice = os.environ.get("HEADWISE_TILED_DKDV", "default")
    if choice not in ("default", "persistent"):
        raise ValueError(f"HEADWISE_TILED_DKDV must be 'default' or 'persistent', got {choice!r}")
    if choice == "default":
        return None
    if INTERPRET or device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def _use_tma(*tensors: Tensor, asked: bool = False) -> bool:
    """Move the kernels' streamed tiles with tensor descriptors (TMA on Hopper and
    later) when every tensor meets TMA's rules: 16-bit floats, 16-byte aligned base
    and strides, contiguous head dim. ``HEADWISE_TILED_TMA=0`` turns it off; the
    interpreter runs it when ``HEADWISE_TILED_TMA=1`` or when a descriptor variant
    was ``asked`` for (``HEADWISE_TILED_FWD``)."""
    choice = os.environ.get("HEADWISE_TILED_TMA", "auto")
    if choice == "0" or TensorDescriptor is None:
        return False
    if INTERPRET:
        if choice != "1" and not asked:
            return False
    elif not torch.cuda.is_available() or torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    for t in tensors:
        size = t.element_size()
        if not INTERPRET and t.dtype not in (torch.float16, torch.bfloat16):
            return False
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((s * size) % 16 for s in t.stride()[:-1]):
            return False
    return True


def _forward_variant(causal: bool, *tensors: Tensor) -> str | None:
    """``HEADWISE_TILED_FWD``: ``desc`` (device-side descriptors) or ``ws`` (those and
    a warp-specialised key loop) for the non-causal forward, a bench-only candidate
    against the default (unset or ``default``); ``None`` where it does not apply
    (causal, or tensors TMA cannot read: same rules as the default's TMA path)."""
    choice = os.environ.get("HEADWISE_TILED_FWD", "default")
    if choice not in ("default", "desc", "ws"):
        raise ValueError(f"HEADWISE_TILED_FWD must be 'default', 'desc' or 'ws', got {choice!r}")
    if choice == "default" or causal or not hasattr(tl, "make_tensor_descriptor"):
        return None
    return choice if _use_tma(*tensors, asked=True) else None


_ALLOCATOR_SET = False


def _device_descriptor_scratch() -> None:
    """Device-side descriptors are written to global scratch memory that Triton asks
    an allocator for; set one (torch's caching allocator) the first time."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET and hasattr(triton, "set_allocator"):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(
            size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu"))
        _ALLOCATOR_SET = True


def _descriptor(t: Tensor):
    """A (B, H, T, D) tensor descriptor; the launcher sets its block shape."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, 16, 16])


def _dot_precision(dtype: torch.dtype) -> str:
    if INTERPRET and dtype == torch.bfloat16:
        return "upcast"
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"  # Triton's default; ignored for fp16/bf16 operands


def _pad_dim(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _empty_bhtd(b: int, h: int, t: int, d: int, like: Tensor) -> Tensor:
    """A ``(B, H, T, D)`` view of a ``(B, T, H, D)`` buffer: the layout the layer
    flattens back to ``(B, T, H * D)`` without a copy."""
    return torch.empty((b, t, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)


def _klen_arg(key_lengths: Tensor | None, q: Tensor) -> Tensor:
    if key_lengths is None:
        return q  # never read: HAS_KLEN is False
    return key_lengths.to(device=q.device, dtype=torch.int32).contiguous()


# --------------------------------------------------------------------------- launchers
def _forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, causal: bool,
             scale: float) -> tuple[Tensor, Tensor]:
    b, h, tq, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    out = _empty_bhtd(b, h, tq, dv, q)
    lse = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    if b * h * tq == 0:
        return out, lse
    if tk == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    if scale <= 0.0:
        # the kernel takes the row max of the raw scores and scales it, which needs
        # scale > 0: q k^T * s == (-q) k^T * (-s), and s == 0 scores every key 0
        q, scale = (-q, -scale) if scale < 0.0 else (torch.zeros_like(q), 1.0)
    meta = dict(HEAD_DIM=d, V_DIM=dv, BLOCK_D=_pad_dim(d), BLOCK_DV=_pad_dim(dv),
                CAUSAL=causal, HAS_KLEN=key_lengths is not None,
                DOT_PREC=_dot_precision(q.dtype))
    rest = (lse, _klen_arg(key_lengths, q), *q.stride(), *k.stride(), *v.stride(),
            *out.stride(), h, h // hkv, tq, tk, scale * _LOG2E, _seq_bucket(tq, tk))
    variant = _forward_variant(causal, q, k, v, out)
    if variant is not None:
        _device_descriptor_scratch()
        _launch("fwd_desc", _attn_fwd_desc, tq, b * h, (q, k, v, out, *rest),
                {**meta, "WS": variant == "ws"}, q.dtype)
        return out, lse
    tma = _use_tma(q, k, v, out)
    tensors = tuple(_descriptor(t) for t in (q, k, v, out)) if tma else (q, k, v, out)
    _launch("fwd", _attn_fwd, tq, b * h, (*tensors, *rest), {**meta, "USE_TMA": tma}, q.dtype)
    return out, lse


def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
              dlse: Tensor | None, key_lengths: Tensor | None, causal: bool,
              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    b, h, tq, d = q.shape
    hkv, tk, dv_dim = k.shape[1], k.shape[2], v.shape[3]
    dq = _empty_bhtd(b, h, tq, d, q)
    dk = _empty_bhtd(b, hkv, tk, d, k)
    dv = _empty_bhtd(b, hkv, tk, dv_dim, v)
    if b * h * tq == 0 or tk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    dout = dout.to(q.dtype)
    delta = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    bdv = _pad_dim(dv_dim)
    grid = (triton.cdiv(tq, _DELTA_BLOCK_M) * b * h,)
    _bwd_delta[grid](out, dout, delta, *out.stride(), *dout.stride(), h, tq,
                     V_DIM=dv_dim, BLOCK_DV=bdv, BLOCK_M=_DELTA_BLOCK_M)
    if dlse is not None:
        # d lse_i / d s_ij = p_ij, so a gradient on the lse shifts delta:
        # dS = P * (dP - (delta - dlse))
        delta = delta - dlse.to(torch.float32)
    klen = _klen_arg(key_lengths, q)
    tma = _use_tma(q, k, v, dout)
    qd, kd, vd, dod = (_descriptor(t) for t in (q, k, v, dout)) if tma else (q, k, v, dout)
    meta = dict(HEAD_DIM=d, V_DIM=dv_dim, BLOCK_D=_pad_dim(d), BLOCK_DV=bdv, CAUSAL=causal,
                HAS_KLEN=key_lengths is not None, DOT_PREC=_dot_precision(q.dtype), USE_TMA=tma)
    bucket = _seq_bucket(tq, tk)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    fuse = _fuse_dq()
    # fused: dQ is summed over key tiles in float32 by the dK/dV kernel; else a
    # placeholder (the autotuner zeroes whatever DQ is between its timing runs)
    dq_acc = torch.zeros((b, h, tq, d) if fuse else (1, 1, 1, 1), dtype=torch.float32, device=q.device)
    persistent = _persistent_dkdv(q.device)
    _launch("dkdv", _attn_bwd_dkdv, tk, b * hkv,
            (qd, k, v, dod, lse, delta, dk, dv, dq_acc, klen, *common, *dk.stride(), *dv.stride(),
             *(dq_acc.stride() if fuse else (0, 0, 0, 0)),
             h, hkv, h // hkv, tq, tk, scale * _LOG2E, scale, bucket, b * hkv),
            {**meta, "GQA": h > hkv, "FUSE_DQ": fuse, "PERSISTENT": persistent is not None},
            q.dtype, max_programs=persistent)
    if fuse:
        dq.copy_(dq_acc)
    else:
        _launch("dq", _attn_bwd_dq, tq, b * h,
                (q, kd, vd, dout, lse, delta, dq, klen, *common, *dq.stride(),
                 h, h // hkv, tq, tk, scale * _LOG2E, scale, bucket), meta, q.dtype)
    return dq, dk, dv


# --------------------------------------------------------------------------- custom ops
@torch.library.custom_op("headwise::tiled_attention_fwd", mutates_args=())
def _tiled_attention_fwd(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None,
                         causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    return _forward(q, k, v, key_lengths, causal, scale)


@_tiled_attention_fwd.register_fake
def _(q, k, v, key_lengths, causal, scale):
    b, h, tq, _ = q.shape
    out = _empty_bhtd(b, h, tq, v.shape[3], q)
    return out, q.new_empty((b, h, tq), dtype=torch.float32)


@torch.library.custom_op("headwise::tiled_attention_bwd", mutates_args=())
def _tiled_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                         lse: Tensor, dlse: Tensor | None, key_lengths: Tensor | None,
                         causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _backward(dout, q, k, v, out, lse, dlse, key_lengths, causal, scale)


@_tiled_attention_bwd.register_fake
def _(dout, q, k, v, out, lse, dlse, key_lengths, causal, scale):
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    return (_empty_bhtd(b, h, tq, d, q), _empty_bhtd(b, hkv, tk, d, k),
            _empty_bhtd(b, hkv, tk, v.shape[3], v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_lengths, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths)
    ctx.causal, ctx.scale = causal, scale


def _backward_rule(ctx, dout, dlse):
    q, k, v, out, lse, key_lengths = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _tiled_attention_bwd(dout, q, k, v, out, lse, dlse, key_lengths,
                                      ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_tiled_attention_fwd.register_autograd(_backward_rule, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def _check_inputs(q: object, k: object, v: object, key_lengths: object, causal: object,
                  scale: object) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(t.shape)}"
            )
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} must be float16, bfloat16 or float32, got dtype {t.dtype}"
            )
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    b, h, _, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(
            f"q, k, v must share the batch size, got shapes {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must have the same (heads, seq), got shapes {tuple(k.shape)} and "
            f"{tuple(v.shape)}"
        )
    if k.shape[1] == 0 or h % k.shape[1] != 0:
        raise ValueError(
            f"the number of query heads ({h}) must be a multiple of the number of key/value "
            f"heads ({k.shape[1]})"
        )
    if k.shape[3] != d:
        raise ValueError(f"q and k must share head_dim, got {d} and {k.shape[3]}")
    for name, dim in (("head_dim", d), ("value head_dim", v.shape[3])):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be in [1, {MAX_HEAD_DIM}], got {dim}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if key_lengths is not None:
        if not isinstance(key_lengths, Tensor):
            raise TypeError(
                f"key_lengths must be a ({b},) integer torch.Tensor or None, "
                f"got {type(key_lengths).__name__}"
            )
        if key_lengths.dtype.is_floating_point or key_lengths.dtype in (torch.bool,) or (
            key_lengths.dtype.is_complex
        ):
            raise TypeError(f"key_lengths must be an integer tensor, got dtype {key_lengths.dtype}")
        if tuple(key_lengths.shape) != (b,):
            raise ValueError(
                f"key_lengths must have shape ({b},) (one length per sequence), "
                f"got {tuple(key_lengths.shape)}"
            )
        if key_lengths.device != q.device:
            raise ValueError(f"key_lengths is on {key_lengths.device} but q is on {q.device}")
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def tiled_attention_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v with the tiled Triton kernels, plus the
    log-sum-exp of each query row's masked, scaled scores.

    Args:
        q: ``(B, H, Tq, D)``; k: ``(B, Hkv, Tk, D)``; v: ``(B, Hkv, Tk, Dv)``, with
            ``H`` a multiple of ``Hkv`` (query head ``h`` reads K/V head
            ``h // (H // Hkv)``); float16, bfloat16 or float32; any strides;
            ``D, Dv <= 256``.
        causal: query ``i`` sees key ``j`` iff ``j <= i + Tk - Tq``.
        key_lengths: ``(B,)`` integers; keys at positions ``>= key_lengths[b]`` are
            padding (values are clamped to ``[0, Tk]``).
        scale: score scale, default ``1 / sqrt(D)``.

    Returns:
        ``out (B, H, Tq, Dv)`` in the inputs' dtype (a view of a ``(B, Tq, H, Dv)``
        buffer) and ``lse (B, H, Tq)`` float32, natural log; rows that see no key
        give ``out = 0`` and ``lse = -inf``. Both are differentiable.
    """
    scale_f = _check_inputs(q, k, v, key_lengths, causal, scale)
    return torch.ops.headwise.tiled_attention_fwd(q, k, v, key_lengths, causal, scale_f)


def tiled_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v for every head at once with the tiled Triton
    kernels; returns ``out (B, H, Tq, Dv)``. Arguments as in
    :func:`tiled_attention_lse`."""
    return tiled_attention_lse(q, k, v, causal=causal, key_lengths=key_lengths, scale=scale)[0]
