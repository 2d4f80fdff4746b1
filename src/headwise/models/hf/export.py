"""Export: a headwise model as a Hugging Face folder (``config.json`` +
``model.safetensors``) that transformers loads and that computes the same outputs."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import uuid
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from ...checks import check_choice
from ...protocols import Tokenizer
from ..config import ModelConfig
from ..decoder import Decoder
from ..encoder import Encoder, EncoderForMLM
from . import bert
from .common import ACT_HF
from .configs import FAMILIES, SUPPORTED_MODEL_TYPES, config_to_hf
from .files import SAFETENSORS, WEIGHT_FILES
from .load import Pretrained

__all__ = ["save_pretrained"]


def _infer_family(model: nn.Module) -> str:
    if isinstance(model, (Encoder, EncoderForMLM)):
        return "bert"
    if isinstance(model, Decoder):
        return "llama" if model.cfg.positions == "rope" else "gpt2"
    raise TypeError(
        f"model must be an Encoder, EncoderForMLM or Decoder, got {type(model).__name__}"
    )


def save_pretrained(
    model: nn.Module | Pretrained,
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
        model: the headwise model, or a :class:`Pretrained` from :func:`from_pretrained`,
            whose tokenizer, config token ids and extras (BERT's pooler) are written
            back too.
        path: destination folder; created if needed.
        family: ``"bert"``, ``"gpt2"`` or ``"llama"``; None infers it from the model.
        overwrite: allow writing into an existing non-empty folder (old weight files
            there are removed so they cannot shadow the new ones).
        tokenizer: saved beside the weights: a :class:`~headwise.protocols.Tokenizer`
            (its ``save``), a transformers tokenizer (``save_pretrained``) or a raw
            ``tokenizers.Tokenizer``; default the :class:`Pretrained`'s.

    Raises:
        FileExistsError: ``path`` is a non-empty folder (or a file) and not ``overwrite``.
        ValueError: the model has a setting ``family`` cannot represent (all are listed).
    """
    loaded = model if isinstance(model, Pretrained) else Pretrained(model)
    model = loaded.model
    if family is None:
        family = _infer_family(model)
    check_choice("family", family, SUPPORTED_MODEL_TYPES)
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
        for name in WEIGHT_FILES:
            (out / name).unlink(missing_ok=True)
        for shard in list(out.glob("model-*-of-*.safetensors")) + list(out.glob("pytorch_model-*-of-*.bin")):
            shard.unlink()
    out.mkdir(parents=True, exist_ok=True)

    mlm = isinstance(model, EncoderForMLM)
    theirs = _to_hf_state(model, family, mlm, loaded.extras)
    hf_cfg = config_to_hf(cfg, family, mlm=mlm, base=loaded.hf_config)
    hf_cfg["dtype"] = str(next(iter(theirs.values())).dtype).removeprefix("torch.")

    # Write to temporary names, then rename: an interrupted export never leaves a
    # config.json beside half a weights file.
    # The names are new ones of our own (never a file already there), removed if the export fails.
    tag = uuid.uuid4().hex
    tmp_w, tmp_c = out / f".{SAFETENSORS}.{tag}.tmp", out / f".config.json.{tag}.tmp"
    try:
        save_file(theirs, str(tmp_w), metadata={"format": "pt"})
        with open(tmp_c, "w", encoding="utf-8") as f:
            json.dump(hf_cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp_w, out / SAFETENSORS)
        os.replace(tmp_c, out / "config.json")
    finally:
        for tmp in (tmp_w, tmp_c):
            tmp.unlink(missing_ok=True)

    tok = tokenizer if tokenizer is not None else loaded.tokenizer
    if tok is not None:
        if isinstance(tok, Tokenizer):
            # headwise's own replaces an old tokenizer.json only with overwrite
            # (headwise.data's Tokenizer takes it; models may not import data)
            takes = "overwrite" in inspect.signature(tok.save).parameters
            kw = {"overwrite": overwrite} if takes else {}
            tok.save(out, **kw)  # headwise's (out/tokenizer.json) or an HFTokenizer (save_pretrained)
        elif hasattr(tok, "save_pretrained"):  # a transformers tokenizer
            tok.save_pretrained(str(out))
        elif hasattr(tok, "save"):  # a raw tokenizers.Tokenizer takes the file path
            tok.save(str(out / "tokenizer.json"))
    return out


def _check_exportable(cfg: ModelConfig, family: str, model: nn.Module) -> None:
    """Raise ValueError listing every setting the ``family`` cannot represent."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    default_head = cfg.d_model % cfg.n_heads == 0 and cfg.head_dim == cfg.d_model // cfg.n_heads
    if family in ("bert", "gpt2"):
        need(isinstance(model, (Encoder, EncoderForMLM)) == (family == "bert"), f"model class {type(model).__name__}")
        need(cfg.positions == "learned", f"positions={cfg.positions!r} (needs 'learned')")
        need(cfg.norm_type == "layernorm", f"norm_type={cfg.norm_type!r} (needs 'layernorm')")
        need(cfg.bias, "bias=False (needs True)")
        need(cfg.n_kv_heads == cfg.n_heads, f"n_kv_heads={cfg.n_kv_heads} (needs n_heads={cfg.n_heads})")
        need(default_head, f"head_dim={cfg.head_dim} (needs d_model // n_heads)")
        need(cfg.activation in ACT_HF, f"activation={cfg.activation!r} (needs one of {sorted(ACT_HF)})")
    if family == "bert":
        need(cfg.norm == "post", f"norm={cfg.norm!r} (needs 'post')")
        need(cfg.embedding_size == cfg.d_model, f"embedding_size={cfg.embedding_size} (needs None or d_model)")
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


def _to_hf_state(model: nn.Module, family: str, mlm: bool, extras: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF-named, contiguous, non-aliasing tensors (safetensors refuses shared storage);
    for BERT, with the ``extras`` of an imported model that fit (its pooler)."""
    cfg: ModelConfig = model.cfg
    ours = model.state_dict()
    if family == "bert":
        export_cfg = cfg if cfg.type_vocab_size > 0 else dataclasses.replace(cfg, type_vocab_size=1)
        links = bert.links(export_cfg, "encoder." if mlm else "", mlm, "bert." if mlm else "")
        if cfg.type_vocab_size == 0:
            # An all-zero single-row table: BERT adds row 0 to every token, i.e. nothing.
            tok = ours[("encoder." if mlm else "") + "embeddings.tok.weight"]
            ours[("encoder." if mlm else "") + "embeddings.tok_type.weight"] = tok.new_zeros(1, cfg.d_model)
    else:
        links = FAMILIES[family].links(cfg, "transformer." if family == "gpt2" else "model.")
    theirs: dict[str, Tensor] = {}
    for link in links:
        t = ours[link.ours].detach()
        parts = t.split(list(link.sizes), dim=0) if link.sizes else (t,)
        for name, part in zip(link.theirs, parts, strict=True):
            part = part.t() if link.conv1d else part
            theirs[name] = part.contiguous().clone().cpu()
    if family != "bert":
        return theirs
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
