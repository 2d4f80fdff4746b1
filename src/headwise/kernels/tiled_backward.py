"""The backward kernels of the tiled attention (see :mod:`headwise.kernels.tiled`).

From the forward's output and log-sum-exp the probabilities are recomputed tile by tile:

* ``delta_i = sum_d dO_id * O_id`` (:func:`bwd_delta`, one small kernel),
* dK/dV (:func:`attn_bwd_dkdv`): one program per ``(batch, kv head, key tile)``,
  looping over the query tiles of every query head that shares this K/V head
  (grouped-query attention sums the group's gradients in registers: no repeated K/V),
* dQ (:func:`attn_bwd_dq`): one program per ``(batch, head, query tile)``, looping over
  key tiles (no atomics, a fixed summation order; ``QK^T`` and ``dO V^T`` are computed
  again, so a step costs seven tile products in all). ``TiledOptions(bwd="fused")``
  instead adds each dK/dV step's ``dS^T K`` atomically to a float32 dQ buffer (five
  products, as FlashAttention-2 does): slower on an H200 from 2k keys on.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiled_helpers import (
    dot,
    dot_acc,
    head_src,
    key_end,
    load_row_pair,
    load_tile,
    query_tile_keys,
    query_tile_program,
    store_tile,
    tile_ptrs,
    visible,
)

__all__ = ["bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq"]


@triton.jit(do_not_specialize=["H", "Tq"])
def bwd_delta(O, DO, DELTA,
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
    o = load_tile(tile_ptrs(O, b, h, (stride_ob, stride_oh, stride_om, stride_od), offs_m, offs_dv),
                  offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    do = load_tile(tile_ptrs(DO, b, h, (stride_dob, stride_doh, stride_dom, stride_dod), offs_m, offs_dv),
                   offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _row_stats(lse_base, delta_base, offs_m, Tq):
    """The forward's log-sum-exp (in log2 units) and delta of query rows ``offs_m``.
    Rows past Tq and rows that saw no key (lse = -inf) get lse = +inf, so p = 0."""
    lse = tl.load(lse_base + offs_m, mask=offs_m < Tq, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(delta_base + offs_m, mask=offs_m < Tq, other=0.0)
    return lse, delta


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32, sq, sdo, sdq,
                start_m, end_m, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr, FUSE_DQ: tl.constexpr,
                USE_TMA: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for m0 in range(start_m, end_m, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q, do = load_row_pair(q_src, do_src, b32, h32, m0, sq, sdo, Tq, HEAD_DIM, V_DIM, BLOCK_M,
                              BLOCK_D, BLOCK_DV, True, True, USE_TMA)
        lse, delta = _row_stats(lse_base, delta_base, offs_m, Tq)
        qk_t = dot(k, tl.trans(q), DOT_PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(qk_t - lse[None, :])
        if MASKED:
            p_t = tl.where(visible(offs_n[:, None], offs_m[None, :], kv_end, causal_off, CAUSAL), p_t, 0.0)
        dv = dot_acc(p_t.to(do.dtype), do, dv, DOT_PREC)
        dp_t = dot(v, tl.trans(do), DOT_PREC)
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
        dk = dot_acc(ds_t, q, dk, DOT_PREC)
        if FUSE_DQ:  # this key tile's share of dQ, summed over key tiles in float32
            dq = dot(tl.trans(ds_t), k, DOT_PREC) * sm_scale
            tl.atomic_add(dq_base + offs_m[:, None] * sdq[2] + offs_d[None, :] * sdq[3], dq,
                          mask=(offs_m < Tq)[:, None] & (offs_d < HEAD_DIM)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, h, H, sq, sdo, sdq, start_m, mask_end,
               full_from, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale, CAUSAL: tl.constexpr,
               HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr,
               FUSE_DQ: tl.constexpr, USE_TMA: tl.constexpr):
    """One query head's contribution to a key tile's dk, dv (and, FUSE_DQ, to dQ):
    the query tiles on a mask boundary, then those that see every key of the tile.
    Q, DO: tensors, or (USE_TMA) their (B, H, T, D) tensor descriptors; sq, sdo, sdq:
    the strides of Q, dO and DQ."""
    q_src = head_src(Q, b, h, sq, USE_TMA)
    do_src = head_src(DO, b, h, sdo, USE_TMA)
    b32, h32 = b.to(tl.int32), h.to(tl.int32)
    dq_base = DQ + b * sdq[0] + h * sdq[1]
    lse_base = LSE + (b * H + h) * Tq
    delta_base = DELTA + (b * H + h) * Tq
    dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32, sq, sdo,
                         sdq, start_m, mask_end, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                         True, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC,
                         FUSE_DQ, USE_TMA)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_src, do_src, lse_base, delta_base, dq_base, b32, h32, sq, sdo,
                         sdq, full_from, Tq, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                         False, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC,
                         FUSE_DQ, USE_TMA)
    return dk, dv


@triton.jit
def _dkdv_tile(pid, Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN, sq, sk, sv, sdo, sdk, sdv, sdq,
               H, HKV, GROUP, Tq, Tk, qk_scale, sm_scale, HEAD_DIM: tl.constexpr,
               V_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr, DOT_PREC: tl.constexpr,
               GQA: tl.constexpr, FUSE_DQ: tl.constexpr, USE_TMA: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV of key tile ``pid`` (in the flat (batch, kv head, key tile) order);
    with FUSE_DQ also its float32 share of dQ, added atomically into DQ (five tile
    products per step instead of the seven that a separate dQ pass needs, at the
    price of a run-to-run varying summation order). sq ... sdq: the strides of Q ... DQ."""
    num_n = tl.cdiv(Tk, BLOCK_N)
    bhkv = pid // num_n
    n0 = (pid % num_n) * BLOCK_N
    b = (bhkv // HKV).to(tl.int64)
    hkv = (bhkv % HKV).to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    kv_end = key_end(KLEN, b, Tk, HAS_KLEN)
    causal_off = Tk - Tq
    k = load_tile(tile_ptrs(K, b, hkv, sk, offs_n, offs_d), offs_n, kv_end, offs_d, HEAD_DIM, BLOCK_D, True)
    v = load_tile(tile_ptrs(V, b, hkv, sv, offs_n, offs_dv), offs_n, kv_end, offs_dv, V_DIM, BLOCK_DV, True)
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
            dk, dv = _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, hkv * GROUP + g, H, sq, sdo, sdq,
                                start_m, mask_end, full_from, offs_n, kv_end, causal_off, Tq, qk_scale,
                                sm_scale, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC,
                                FUSE_DQ, USE_TMA)
    else:  # no loop around the pipelined loops: ptxas then keeps it all in registers
        dk, dv = _dkdv_head(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, b, hkv, H, sq, sdo, sdq, start_m,
                            mask_end, full_from, offs_n, kv_end, causal_off, Tq, qk_scale, sm_scale,
                            CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_M, DOT_PREC, FUSE_DQ,
                            USE_TMA)

    dk = dk * sm_scale
    store_tile(tile_ptrs(DK, b, hkv, sdk, offs_n, offs_d), dk.to(DK.dtype.element_ty), offs_n, Tk, offs_d,
               HEAD_DIM)
    store_tile(tile_ptrs(DV, b, hkv, sdv, offs_n, offs_dv), dv.to(DV.dtype.element_ty), offs_n, Tk, offs_dv,
               V_DIM)


@triton.jit(do_not_specialize=["H", "HKV", "GROUP", "Tq", "Tk", "SEQ_BUCKET", "BHKV"])
def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN,
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
    per tile, or (PERSISTENT, TiledOptions(dkdv="persistent"): a candidate for the GPU
    to measure) a grid of about one program per SM, each taking every
    ``num_programs``-th of the BHKV * cdiv(Tk, BLOCK_N) tiles in turn."""
    sq = (stride_qb, stride_qh, stride_qm, stride_qd)
    sk = (stride_kb, stride_kh, stride_kn, stride_kd)
    sv = (stride_vb, stride_vh, stride_vn, stride_vd)
    sdo = (stride_dob, stride_doh, stride_dom, stride_dod)
    sdk = (stride_dkb, stride_dkh, stride_dkn, stride_dkd)
    sdv = (stride_dvb, stride_dvh, stride_dvn, stride_dvd)
    sdq = (stride_dqb, stride_dqh, stride_dqm, stride_dqd)
    if PERSISTENT:
        n_tiles = BHKV * tl.cdiv(Tk, BLOCK_N)
        for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
            _dkdv_tile(tile, Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN, sq, sk, sv, sdo, sdk, sdv, sdq, H, HKV,
                       GROUP, Tq, Tk, qk_scale, sm_scale, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, CAUSAL,
                       HAS_KLEN, DOT_PREC, GQA, FUSE_DQ, USE_TMA, BLOCK_M, BLOCK_N)
    else:  # no loop around the tile: the default's code as it was
        _dkdv_tile(tl.program_id(0), Q, K, V, DO, LSE, DELTA, DK, DV, DQ, KLEN, sq, sk, sv, sdo, sdk, sdv,
                   sdq, H, HKV, GROUP, Tq, Tk, qk_scale, sm_scale, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV,
                   CAUSAL, HAS_KLEN, DOT_PREC, GQA, FUSE_DQ, USE_TMA, BLOCK_M, BLOCK_N)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, sk, sv, start_n, end_n, offs_m, kv_end,
              causal_off, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
              HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
              USE_TMA: tl.constexpr):
    for n0 in range(start_n, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k, v = load_row_pair(k_src, v_src, b32, hkv32, n0, sk, sv, kv_end, HEAD_DIM, V_DIM, BLOCK_N,
                             BLOCK_D, BLOCK_DV, MASKED, False, USE_TMA)
        qk = dot(q, tl.trans(k), DOT_PREC) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        if MASKED:
            p = tl.where(visible(offs_n[None, :], offs_m[:, None], kv_end, causal_off, CAUSAL), p, 0.0)
        dp = dot(do, tl.trans(v), DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq = dot_acc(ds.to(k.dtype), k, dq, DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["H", "GROUP", "Tq", "Tk", "SEQ_BUCKET"])
def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, KLEN,
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
    sk = (stride_kb, stride_kh, stride_kn, stride_kd)
    sv = (stride_vb, stride_vh, stride_vn, stride_vd)
    b, h, hkv, m0 = query_tile_program(H, GROUP, Tq, CAUSAL, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q = load_tile(tile_ptrs(Q, b, h, (stride_qb, stride_qh, stride_qm, stride_qd), offs_m, offs_d),
                  offs_m, Tq, offs_d, HEAD_DIM, BLOCK_D, True)
    do = load_tile(tile_ptrs(DO, b, h, (stride_dob, stride_doh, stride_dom, stride_dod), offs_m, offs_dv),
                   offs_m, Tq, offs_dv, V_DIM, BLOCK_DV, True)
    lse, delta = _row_stats(LSE + (b * H + h) * Tq, DELTA + (b * H + h) * Tq, offs_m, Tq)
    k_src = head_src(K, b, hkv, sk, USE_TMA)
    v_src = head_src(V, b, hkv, sv, USE_TMA)
    b32, hkv32 = b.to(tl.int32), hkv.to(tl.int32)

    kv_end, causal_off, full, hi = query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL, HAS_KLEN,
                                                   BLOCK_M, BLOCK_N)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, sk, sv, 0, full, offs_m, kv_end,
                   causal_off, qk_scale, False, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_N,
                   DOT_PREC, USE_TMA)
    dq = _dq_inner(dq, q, do, lse, delta, k_src, v_src, b32, hkv32, sk, sv, full, hi, offs_m, kv_end,
                   causal_off, qk_scale, True, CAUSAL, HEAD_DIM, V_DIM, BLOCK_D, BLOCK_DV, BLOCK_N,
                   DOT_PREC, USE_TMA)
    dq = dq * sm_scale
    sdq = (stride_dqb, stride_dqh, stride_dqm, stride_dqd)
    store_tile(tile_ptrs(DQ, b, h, sdq, offs_m, offs_d), dq.to(DQ.dtype.element_ty), offs_m, Tq, offs_d,
               HEAD_DIM)

