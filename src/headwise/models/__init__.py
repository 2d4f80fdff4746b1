"""Models built from headwise attention: config, blocks, Encoder (BERT/ELECTRA-like),
Decoder (GPT-like), heads, and named presets."""

from .blocks import MLP, Block, Embeddings, RMSNorm, count_parameters, init_weights, norm_module
from .config import ACTIVATIONS, CONFIG_NAME, NORM_TYPES, NORMS, POSITIONS, ModelConfig
from .decoder import Decoder
from .encoder import (
    Encoder,
    EncoderForMLM,
    EncoderForRTD,
    MLMHead,
    RTDHead,
    build_electra,
)
from .hf import from_pretrained, load_minilm, save_pretrained
from .presets import PRESETS, generator_config, get_preset

__all__ = [
    "ModelConfig",
    "ACTIVATIONS",
    "POSITIONS",
    "NORMS",
    "NORM_TYPES",
    "CONFIG_NAME",
    "Embeddings",
    "MLP",
    "Block",
    "RMSNorm",
    "norm_module",
    "init_weights",
    "Encoder",
    "MLMHead",
    "RTDHead",
    "EncoderForMLM",
    "EncoderForRTD",
    "build_electra",
    "Decoder",
    "PRESETS",
    "get_preset",
    "generator_config",
    "count_parameters",
    "from_pretrained",
    "save_pretrained",
    "load_minilm",
]
