"""The Triton helpers that the attention kernels share: which (batch, head, query tile) a
program computes, tile addresses, loads (pointers or tensor descriptors) and stores, the
tile products, and which keys a query tile reads and sees. The strides of a
``(B, H, T, D)`` tensor travel as one tuple ``(batch, head, row, column)``.

Importing this module imports Triton, and Triton reads ``TRITON_INTERPRET`` when a
kernel is defined, so :data:`INTERPRET` is read here too, at the same moment. The kernel
modules import it; :mod:`headwise.kernels` itself does not, so that ``import
headwise.kernels`` never touches Triton.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # host-side TMA descriptors (Triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: pointer loads only
    TensorDescriptor = None

__all__ = ["INTERPRET", "TensorDescriptor", "LOG2E", "query_tile_program", "head_src", "tile_ptrs",
           "load_tile", "load_rows", "load_row_pair", "store_tile", "dot", "dot_acc", "key_end",
           "query_tile_keys", "visible"]

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels run under the Triton interpreter (numpy on the CPU)."""

LOG2E = 1.4426950408889634


@triton.jit
def query_tile_program(H, GROUP, Tq, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """``(b, h, hkv, m0)`` of this program in a flat grid over (batch, head, query
    tile): consecutive programs are the query tiles of one head, so they share that
    head's K/V in L2; causal runs the heaviest (last) tiles first. ``b, h, hkv`` (the
    K/V head of a group of ``GROUP`` query heads) are int64, for the address math."""
    num_m = tl.cdiv(Tq, BLOCK_M)
    pid = tl.program_id(0)
    bh = pid // num_m
    tile = pid % num_m
    if CAUSAL:
        tile = num_m - 1 - tile
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    hkv = h // GROUP
    return b, h, hkv, tile * BLOCK_M


@triton.jit
def head_src(X, b, h, strides, USE_TMA: tl.constexpr):
    """What :func:`load_rows` reads (batch ``b``, head ``h``) from: the ``(B, H, T, D)``
    tensor descriptor itself (USE_TMA; the load takes ``b, h``) or the head's base pointer."""
    if USE_TMA:
        src = X
    else:
        src = X + b * strides[0] + h * strides[1]
    return src


@triton.jit
def tile_ptrs(X, b, h, strides, rows, cols):
    """The (rows x cols) pointers into (batch ``b``, head ``h``) of a ``(B, H, T, D)`` tensor."""
    return X + b * strides[0] + h * strides[1] + rows[:, None] * strides[2] + cols[None, :] * strides[3]


@triton.jit
def load_tile(ptrs, rows, n_rows, cols, N_COLS: tl.constexpr, BLOCK_COLS: tl.constexpr,
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
def load_rows(src, b32, h32, r0, strides, n_rows, N_COLS: tl.constexpr,
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
        t = load_tile(src + offs_r[:, None] * strides[2] + offs_c[None, :] * strides[3],
                      offs_r, n_rows, offs_c, N_COLS, BLOCK_C, CHECK_ROWS)
    return t


@triton.jit
def load_row_pair(a_src, b_src, b32, h32, r0, a_strides, b_strides, n_rows, A_COLS: tl.constexpr,
                  B_COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_A: tl.constexpr,
                  BLOCK_B: tl.constexpr, CHECK_ROWS: tl.constexpr, BOUND_IS_EXTENT: tl.constexpr,
                  USE_TMA: tl.constexpr):
    """The same rows of two matrices of one (batch, head), as :func:`load_rows` loads
    them: the K and V tiles of a key step, or the Q and dO tiles of a query step."""
    a = load_rows(a_src, b32, h32, r0, a_strides, n_rows, A_COLS, BLOCK_R, BLOCK_A, CHECK_ROWS,
                  BOUND_IS_EXTENT, USE_TMA)
    b = load_rows(b_src, b32, h32, r0, b_strides, n_rows, B_COLS, BLOCK_R, BLOCK_B, CHECK_ROWS,
                  BOUND_IS_EXTENT, USE_TMA)
    return a, b


@triton.jit
def store_tile(ptrs, value, rows, n_rows, cols, N_COLS: tl.constexpr):
    tl.store(ptrs, value, mask=(rows < n_rows)[:, None] & (cols < N_COLS)[None, :])


@triton.jit
def dot(a, b, DOT_PREC: tl.constexpr):
    if DOT_PREC == "upcast":
        # the interpreter (Triton <= 3.9) multiplies bf16 tiles as raw uint16 bits:
        # there, and only there, bf16 operands are widened to fp32 first
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PREC)
    return c


@triton.jit
def dot_acc(a, b, acc, DOT_PREC: tl.constexpr):
    """acc + a @ b with the accumulator handed to the MMA (wgmma accumulates in
    place instead of a separate tile add after a zero-initialised product)."""
    if DOT_PREC == "upcast":
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        c = tl.dot(a, b, acc, input_precision=DOT_PREC)
    return c


@triton.jit
def key_end(KLEN, b, Tk, HAS_KLEN: tl.constexpr):
    """Where batch ``b``'s keys end: its key length (clamped to Tk) or Tk."""
    kv_end = Tk
    if HAS_KLEN:
        kv_end = tl.minimum(tl.load(KLEN + b), Tk)
    return kv_end


@triton.jit
def query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Which keys the query tile starting at ``m0`` reads: ``(kv_end, causal_off, full,
    hi)``. Keys ``[0, full)`` come in whole tiles that need no mask, ``[full, hi)`` are
    read with masks, keys from ``hi`` on are skipped (after the sequence's length, or
    in every row's future: bottom-right causal, query i sees j <= i + causal_off)."""
    kv_end = key_end(KLEN, b, Tk, HAS_KLEN)
    causal_off = Tk - Tq
    if CAUSAL:
        hi = tl.minimum(kv_end, tl.maximum(0, tl.minimum(m0 + BLOCK_M, Tq) + causal_off))
        full = tl.minimum(hi, tl.maximum(0, m0 + causal_off + 1))
    else:
        hi = kv_end
        full = kv_end
    full = (full // BLOCK_N) * BLOCK_N
    return kv_end, causal_off, full, hi


@triton.jit
def visible(k_idx, q_idx, kv_end, causal_off, CAUSAL: tl.constexpr):
    """Which (query, key) pairs of a tile on a mask boundary count: keys before
    ``kv_end`` and (causal) not after ``q + causal_off``. ``k_idx``, ``q_idx``: key and
    query positions as broadcastable tiles (``offs_n[None, :]``, ``offs_m[:, None]``)."""
    ok = k_idx < kv_end
    if CAUSAL:
        ok = ok & (k_idx <= q_idx + causal_off)
    return ok
