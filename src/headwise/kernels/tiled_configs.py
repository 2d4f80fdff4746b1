"""The tiled kernels' launch configs: the tile shapes and warps per kernel and head-dim
class, what the interpreter runs, and the ``triton.autotune`` wrappers.

The wrappers and the configs found without autotuning are cached in
:mod:`headwise.kernels.runtime` (``reset_autotune_cache()`` empties both).
"""

from __future__ import annotations

import functools

import triton

from .runtime import TUNERS
from .tiled_backward import attn_bwd_dkdv, attn_bwd_dq
from .tiled_forward import attn_fwd, attn_fwd_desc

__all__ = ["FWD_CONFIGS", "DKDV_CONFIGS", "DQ_CONFIGS", "CONFIGS", "KERNELS", "INTERPRET_BLOCKS",
           "DELTA_BLOCK_M", "dim_class", "seq_bucket", "pad_dim", "set_tma_blocks", "tuned"]


def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Hopper (H100/H200, 227 KB shared memory per SM). Short lists on purpose: under
# autotuning each config compiles once per head dim/dtype/mask combination, and
# without it (TiledOptions(autotune=False)) the first one is used, so each list starts
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
FWD_CONFIGS = {
    "small": [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 4, 3),  # D <= 64
              _cfg(64, 64, 4, 3)],
    "medium": [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 2), _cfg(128, 128, 8, 3),  # D <= 128
               _cfg(128, 64, 8, 4), _cfg(128, 64, 8, 2), _cfg(64, 64, 4, 2)],
    "large": [_cfg(64, 32, 8, 2), _cfg(64, 64, 8, 2), _cfg(32, 32, 4, 1)],  # D <= 256
}
DKDV_CONFIGS = {  # BLOCK_N: the key tile a program owns; BLOCK_M: its query step
    "small": [_cfg(32, 128, 8, 3), _cfg(64, 128, 8, 3), _cfg(64, 128, 8, 2),
              _cfg(32, 64, 4, 3)],
    "medium": [_cfg(32, 128, 8, 2), _cfg(32, 128, 8, 3), _cfg(64, 128, 8, 2),
               _cfg(64, 128, 8, 3), _cfg(64, 64, 8, 3), _cfg(32, 64, 4, 2)],
    "large": [_cfg(32, 32, 8, 2), _cfg(16, 32, 8, 2), _cfg(16, 32, 4, 1)],
}
DQ_CONFIGS = {  # 128 x 128 (not spill-checked): a larger dQ tile for the autotuner to try
    "small": [_cfg(128, 64, 8, 3), _cfg(128, 32, 8, 3), _cfg(128, 32, 4, 3),
              _cfg(128, 128, 8, 2), _cfg(64, 32, 4, 3)],
    "medium": [_cfg(128, 64, 8, 3), _cfg(128, 64, 8, 2), _cfg(128, 32, 8, 3),
               _cfg(64, 32, 8, 3), _cfg(128, 128, 8, 2), _cfg(64, 32, 4, 2)],
    "large": [_cfg(32, 16, 4, 2), _cfg(64, 32, 8, 2), _cfg(32, 16, 4, 1)],
}
CONFIGS = {"fwd": FWD_CONFIGS, "dkdv": DKDV_CONFIGS, "dq": DQ_CONFIGS, "fwd_desc": FWD_CONFIGS}
KERNELS = {"fwd": attn_fwd, "dkdv": attn_bwd_dkdv, "dq": attn_bwd_dq, "fwd_desc": attn_fwd_desc}
# The interpreter runs programs one after another in numpy: small tiles keep the
# test shapes multi-tile (so masks and loop bounds are exercised) and fast.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16), "fwd_desc": (32, 16)}
DELTA_BLOCK_M = 64
_KEYS = ["HEAD_DIM", "V_DIM", "CAUSAL", "HAS_KLEN", "SEQ_BUCKET", "GROUP"]
_EXTRA_KEYS = {"fwd": [], "dkdv": ["FUSE_DQ", "PERSISTENT"], "dq": [], "fwd_desc": ["WS"]}


def dim_class(d: int) -> str:
    """The config list of a (padded) head dim: ``small`` to 64, ``medium`` to 128, ``large``."""
    return "small" if d <= 64 else ("medium" if d <= 128 else "large")


def seq_bucket(tq: int, tk: int) -> int:
    """A key of the autotuner: up to 1k, 4k, or longer (a config is timed again per bucket)."""
    t = max(tq, tk)
    return 0 if t <= 1024 else (1 if t <= 4096 else 2)


def pad_dim(d: int) -> int:
    """The tile width of a head dim: the next power of two, at least 16 (the smallest
    ``tl.dot``); the columns past ``d`` are masked."""
    return max(16, triton.next_power_of_2(d))


# which arguments are tensor descriptors (USE_TMA) in each kernel, and their tiles
_TMA_ARGS = {
    "fwd": {"Q": ("BLOCK_M", "BLOCK_D"), "K": ("BLOCK_N", "BLOCK_D"),
            "V": ("BLOCK_N", "BLOCK_DV"), "O": ("BLOCK_M", "BLOCK_DV")},
    "dkdv": {"Q": ("BLOCK_M", "BLOCK_D"), "DO": ("BLOCK_M", "BLOCK_DV")},
    "dq": {"K": ("BLOCK_N", "BLOCK_D"), "V": ("BLOCK_N", "BLOCK_DV")},
}


def set_tma_blocks(kind: str, nargs: dict) -> None:
    """Give a kernel's tensor descriptors the launch config's tile shapes."""
    for name, (rows, cols) in _TMA_ARGS[kind].items():
        nargs[name].block_shape = [1, 1, nargs[rows], nargs[cols]]


def _with_tma_hook(cfg: triton.Config, kind: str) -> triton.Config:
    return triton.Config(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                         pre_hook=functools.partial(set_tma_blocks, kind))


def tuned(kind: str, d_class: str, tma: bool):
    """The ``triton.autotune`` wrapper of kernel ``kind`` over its configs for
    ``d_class`` (with the TMA tile hook when ``tma``), made once and cached."""
    key = (kind, d_class, tma)
    if key not in TUNERS:
        configs = CONFIGS[kind][d_class]
        if tma:
            configs = [_with_tma_hook(c, kind) for c in configs]
        # the fused backward adds into its dQ buffer: zeroed before each timed config
        reset = ["DQ"] if kind == "dkdv" else None
        TUNERS[key] = triton.autotune(configs=configs, key=_KEYS + _EXTRA_KEYS[kind],
                                      reset_to_zero=reset)(KERNELS[kind])
    return TUNERS[key]
