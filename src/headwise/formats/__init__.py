"""Number formats: run a model in bf16 or int8, save and load it, and measure how far it
is from float32.

* :func:`quantize` — ``quantize(model, "bf16" | "int8")``.
* :class:`Int8Linear`, :class:`Int8MultiHeadAttention` — the int8 modules.
* :func:`compare_formats` — per-layer cosine / relative L1 and the task metric.
* :func:`save_quantized`, :func:`load_quantized` — one ``.safetensors`` file.
* :func:`bf16_math_support` — whether a device computes bf16 natively.

The int8 attention kernel (int8 ``Q K^T``) is the ``"int8"`` attention backend
(:mod:`headwise.kernels.int8_attention`); ``quantize(..., attention="int8")`` selects it.
"""

from .compare import compare_formats, default_layers
from .convert import FORMATS, bf16_math_support, load_quantized, model_format, quantize, save_quantized
from .int8 import Int8Linear, Int8MultiHeadAttention, quantize_per_channel, quantize_per_token

__all__ = [
    "FORMATS",
    "quantize",
    "model_format",
    "bf16_math_support",
    "save_quantized",
    "load_quantized",
    "compare_formats",
    "default_layers",
    "Int8Linear",
    "Int8MultiHeadAttention",
    "quantize_per_channel",
    "quantize_per_token",
]
