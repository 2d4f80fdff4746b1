"""headwise: multi-head attention you can train, look inside, and run fast."""

from .attention import KVCache, MultiHeadAttention

__version__ = "0.1.0"
__all__ = ["MultiHeadAttention", "KVCache", "__version__"]
