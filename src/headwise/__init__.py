"""headwise: multi-head attention you can train, look inside, and run fast."""

from .attention import KVCache, MultiHeadAttention
from .formats import load_quantized, quantize, save_quantized

__version__ = "0.1.0"
__all__ = ["MultiHeadAttention", "KVCache", "quantize", "save_quantized", "load_quantized", "__version__"]
