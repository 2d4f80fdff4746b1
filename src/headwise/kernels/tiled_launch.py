"""The tiled kernels' launchers: :func:`forward` and :func:`backward` pick each
kernel's variant from a :class:`~headwise.kernels.options.TiledOptions` and the
tensors, then :func:`launch` runs it with the interpreter's, the autotuned or a fixed
config. The options come in as an argument; nothing here reads the environment.

On Hopper and later GPUs the kernels move the tiles they stream (the forward's Q,
K, V and output; dK/dV's Q and dO; dQ's K and V) with the tensor memory accelerator
(host-side tensor descriptors of the ``(B, H, T, D)`` views; loads zero-fill past the
sequence and the head dim, stores clip) when the tensors are 16-bit with 16-byte
aligned strides; otherwise, and with ``tma=False``, pointer loads.

Candidates for a GPU to measure against these defaults (bench-only, off unless
selected): ``fwd="desc" | "ws"``, the non-causal forward with device-side descriptors
(``tl.make_tensor_descriptor``) and optionally a warp-specialised key loop;
``dkdv="persistent"``, the dK/dV pass on one program per SM.

fp32 inputs use IEEE fp32 ``tl.dot`` unless ``torch.set_float32_matmul_precision``
is ``"high"``/``"medium"``, which selects TF32 (faster on GPUs, ~1e-3 relative).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

from .options import TiledOptions
from .runtime import FIXED
from .tiled_backward import attn_bwd_dkdv, attn_bwd_dq, bwd_delta
from .tiled_configs import (
    CONFIGS,
    DELTA_BLOCK_M,
    INTERPRET_BLOCKS,
    dim_class,
    pad_dim,
    seq_bucket,
    set_tma_blocks,
    tuned,
)
from .tiled_forward import attn_fwd, attn_fwd_desc
from .tiled_helpers import INTERPRET, LOG2E, TensorDescriptor

__all__ = ["forward", "backward", "launch", "fuse_dq", "persistent_dkdv", "use_tma",
           "forward_variant", "empty_bhtd"]


def launch(kind: str, fn, n_rows: int, n_programs_per_row_tile: int, args: tuple,
           meta: dict, dtype: torch.dtype, *, autotune: bool, max_programs: int | None = None) -> None:
    """Launch ``fn`` on a flat grid of ``cdiv(n_rows, BLOCK) * n_programs_per_row_tile``
    programs (at most ``max_programs``: a persistent kernel loops over the rest) with
    the interpreter's config, the autotuned one (``autotune``) or the first of the list
    that compiles (cached in :data:`headwise.kernels.runtime.FIXED`)."""
    cap = (lambda n: n) if max_programs is None else (lambda n: min(n, max_programs))
    tile_key = "BLOCK_N" if kind == "dkdv" else "BLOCK_M"
    d_class = dim_class(max(meta["BLOCK_D"], meta["BLOCK_DV"]))
    tma = meta.get("USE_TMA", False)

    def set_blocks(blocks: dict) -> None:
        if tma:
            set_tma_blocks(kind, {**dict(zip(fn.arg_names, args, strict=False)), **meta, **blocks})

    if INTERPRET:
        bm, bn = INTERPRET_BLOCKS[kind]
        blocks = {"BLOCK_M": bm, "BLOCK_N": bn}
        grid = (cap(triton.cdiv(n_rows, blocks[tile_key]) * n_programs_per_row_tile),)
        set_blocks(blocks)
        fn[grid](*args, **meta, **blocks)
        return
    if autotune:
        def grid(m):
            return (cap(triton.cdiv(n_rows, m[tile_key]) * n_programs_per_row_tile),)

        tuned(kind, d_class, tma)[grid](*args, **meta)
        return
    key = (kind, dtype, *sorted(meta.items()))
    configs = CONFIGS[kind][d_class]
    if key in FIXED:
        configs = [FIXED[key]]
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
        FIXED[key] = cfg
        return


def fuse_dq(options: TiledOptions) -> bool:
    """Backward in one pass with dQ added atomically (``options.bwd == "fused"``) or
    in two passes, dK/dV then dQ (``split``, the default). Measured on an H200 (bf16,
    D=128, bench/gpu_attention.py, three runs): from 2k keys on the split passes are
    4-12% faster, the atomic adds (which grow with the number of key tiles) costing
    more than the two tile products they save; at 1k keys the runs disagreed.
    Always split under ``torch.use_deterministic_algorithms(True)``: its sums run in
    a fixed order."""
    return options.bwd == "fused" and not torch.are_deterministic_algorithms_enabled()


def persistent_dkdv(options: TiledOptions, device: torch.device) -> int | None:
    """``options.dkdv == "persistent"``: the dK/dV pass on a grid of one program per
    SM (three in the interpreter, so that each program takes several tiles), a
    candidate for the GPU to measure against the default (one program per key tile).
    Returns the grid's cap, or None."""
    if options.dkdv == "default":
        return None
    if INTERPRET or device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def use_tma(options: TiledOptions, *tensors: Tensor, asked: bool = False) -> bool:
    """Move the kernels' streamed tiles with tensor descriptors (TMA on Hopper and
    later) when every tensor meets TMA's rules: 16-bit floats, 16-byte aligned base
    and strides, contiguous head dim. ``options.tma`` False turns it off; the
    interpreter runs it when ``options.tma`` is True or when a descriptor variant was
    ``asked`` for (``options.fwd``)."""
    if options.tma is False or TensorDescriptor is None:
        return False
    if INTERPRET:
        if options.tma is not True and not asked:
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


def forward_variant(options: TiledOptions, causal: bool, *tensors: Tensor) -> str | None:
    """``options.fwd``: ``desc`` (device-side descriptors) or ``ws`` (those and a
    warp-specialised key loop) for the non-causal forward, a bench-only candidate
    against the default; ``None`` where it does not apply (the default, causal, or
    tensors TMA cannot read: same rules as the default's TMA path)."""
    if options.fwd == "default" or causal or not hasattr(tl, "make_tensor_descriptor"):
        return None
    return options.fwd if use_tma(options, *tensors, asked=True) else None


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


def empty_bhtd(b: int, h: int, t: int, d: int, like: Tensor) -> Tensor:
    """A ``(B, H, T, D)`` view of a ``(B, T, H, D)`` buffer: the layout the layer
    flattens back to ``(B, T, H * D)`` without a copy."""
    return torch.empty((b, t, h, d), dtype=like.dtype, device=like.device).transpose(1, 2)


def _klen_arg(key_lengths: Tensor | None, q: Tensor) -> Tensor:
    if key_lengths is None:
        return q  # never read: HAS_KLEN is False
    return key_lengths.to(device=q.device, dtype=torch.int32).contiguous()


# --------------------------------------------------------------------------- launchers
def forward(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None, causal: bool,
            scale: float, options: TiledOptions) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of checked inputs (see :func:`headwise.kernels.tiled_attention_lse`)."""
    b, h, tq, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    out = empty_bhtd(b, h, tq, dv, q)
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
    meta = dict(HEAD_DIM=d, V_DIM=dv, BLOCK_D=pad_dim(d), BLOCK_DV=pad_dim(dv),
                CAUSAL=causal, HAS_KLEN=key_lengths is not None,
                DOT_PREC=_dot_precision(q.dtype))
    rest = (lse, _klen_arg(key_lengths, q), *q.stride(), *k.stride(), *v.stride(),
            *out.stride(), h, h // hkv, tq, tk, scale * LOG2E, seq_bucket(tq, tk))
    variant = forward_variant(options, causal, q, k, v, out)
    if variant is not None:
        _device_descriptor_scratch()
        launch("fwd_desc", attn_fwd_desc, tq, b * h, (q, k, v, out, *rest),
               {**meta, "WS": variant == "ws"}, q.dtype, autotune=options.autotune)
        return out, lse
    tma = use_tma(options, q, k, v, out)
    tensors = tuple(_descriptor(t) for t in (q, k, v, out)) if tma else (q, k, v, out)
    launch("fwd", attn_fwd, tq, b * h, (*tensors, *rest), {**meta, "USE_TMA": tma}, q.dtype,
           autotune=options.autotune)
    return out, lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
             dlse: Tensor | None, key_lengths: Tensor | None, causal: bool,
             scale: float, options: TiledOptions) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` from the forward's ``out`` and ``lse`` and the gradients on them."""
    b, h, tq, d = q.shape
    hkv, tk, dv_dim = k.shape[1], k.shape[2], v.shape[3]
    dq = empty_bhtd(b, h, tq, d, q)
    dk = empty_bhtd(b, hkv, tk, d, k)
    dv = empty_bhtd(b, hkv, tk, dv_dim, v)
    if b * h * tq == 0 or tk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    dout = dout.to(q.dtype)
    delta = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    bdv = pad_dim(dv_dim)
    grid = (triton.cdiv(tq, DELTA_BLOCK_M) * b * h,)
    bwd_delta[grid](out, dout, delta, *out.stride(), *dout.stride(), h, tq,
                    V_DIM=dv_dim, BLOCK_DV=bdv, BLOCK_M=DELTA_BLOCK_M)
    if dlse is not None:
        # d lse_i / d s_ij = p_ij, so a gradient on the lse shifts delta:
        # dS = P * (dP - (delta - dlse))
        delta = delta - dlse.to(torch.float32)
    klen = _klen_arg(key_lengths, q)
    tma = use_tma(options, q, k, v, dout)
    qd, kd, vd, dod = (_descriptor(t) for t in (q, k, v, dout)) if tma else (q, k, v, dout)
    meta = dict(HEAD_DIM=d, V_DIM=dv_dim, BLOCK_D=pad_dim(d), BLOCK_DV=bdv, CAUSAL=causal,
                HAS_KLEN=key_lengths is not None, DOT_PREC=_dot_precision(q.dtype), USE_TMA=tma)
    bucket = seq_bucket(tq, tk)
    common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride())
    fuse = fuse_dq(options)
    # fused: dQ is summed over key tiles in float32 by the dK/dV kernel; else a
    # placeholder (the autotuner zeroes whatever DQ is between its timing runs)
    dq_acc = torch.zeros((b, h, tq, d) if fuse else (1, 1, 1, 1), dtype=torch.float32, device=q.device)
    persistent = persistent_dkdv(options, q.device)
    launch("dkdv", attn_bwd_dkdv, tk, b * hkv,
           (qd, k, v, dod, lse, delta, dk, dv, dq_acc, klen, *common, *dk.stride(), *dv.stride(),
            *(dq_acc.stride() if fuse else (0, 0, 0, 0)),
            h, hkv, h // hkv, tq, tk, scale * LOG2E, scale, bucket, b * hkv),
           {**meta, "GQA": h > hkv, "FUSE_DQ": fuse, "PERSISTENT": persistent is not None},
           q.dtype, autotune=options.autotune, max_programs=persistent)
    if fuse:
        dq.copy_(dq_acc)
    else:
        launch("dq", attn_bwd_dq, tq, b * h,
               (q, kd, vd, dout, lse, delta, dq, klen, *common, *dq.stride(),
                h, h // hkv, tq, tk, scale * LOG2E, scale, bucket), meta, q.dtype,
               autotune=options.autotune)
    return dq, dk, dv
