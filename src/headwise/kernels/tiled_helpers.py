"""The Triton helpers that the attention kernels share: tile loads (pointers or tensor
descriptors) and stores, the tile products, and which keys a query tile reads.

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

__all__ = ["INTERPRET", "TensorDescriptor", "LOG2E", "load_tile", "load_rows", "store_tile", "dot",
           "dot_acc", "query_tile_keys"]

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""True when the kernels run under the Triton interpreter (numpy on the CPU)."""

LOG2E = 1.4426950408889634


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
def load_rows(src, b32, h32, r0, stride_r, stride_c, n_rows, N_COLS: tl.constexpr,
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
        t = load_tile(src + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c,
                      offs_r, n_rows, offs_c, N_COLS, BLOCK_C, CHECK_ROWS)
    return t


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
def query_tile_keys(KLEN, b, Tq, Tk, m0, CAUSAL: tl.constexpr, HAS_KLEN: tl.constexpr,
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
