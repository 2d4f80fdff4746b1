"""The multi-head attention layer, its masks, RoPE, KV cache and backends."""

from .backends import available_backends, get_backend, register_backend
from .backends.dispatch import BackendChoice
from .explain import (
    clear_dispatch_cache,
    explain_backend,
    pin_backend,
    set_backend_autotune,
    set_dispatch_cache,
)
from .functional import attend
from .heads import HeadView
from .kv_cache import KVCache
from .layer import MultiHeadAttention
from .masks import MaskSpec, normalize_mask
from .projection import Projection
from .rope import RotaryEmbedding

__all__ = [
    "MultiHeadAttention",
    "HeadView",
    "Projection",
    "KVCache",
    "RotaryEmbedding",
    "MaskSpec",
    "normalize_mask",
    "attend",
    "available_backends",
    "get_backend",
    "register_backend",
    "explain_backend",
    "pin_backend",
    "set_backend_autotune",
    "set_dispatch_cache",
    "clear_dispatch_cache",
    "BackendChoice",
]
