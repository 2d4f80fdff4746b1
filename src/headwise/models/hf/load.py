"""Import: a local Hugging Face (or sentence-transformers) folder as a headwise model,
returned with what came with it (:class:`Pretrained`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as RawTokenizer
from torch import Tensor, nn

from ..config import ModelConfig
from ..decoder import Decoder
from ..encoder import Encoder, EncoderForMLM
from . import bert
from .common import Link
from .configs import FAMILIES, config_from_hf
from .files import PACKAGED_MODELS, packaged_model_path, read_hf_weights, resolve_model_folder
from .tokenizer import HFTokenizer, load_tokenizer

__all__ = ["Pretrained", "from_pretrained"]


@dataclass(frozen=True)
class Pretrained:
    """What :func:`from_pretrained` read from a folder.

    ``model``: the headwise model, in eval mode. ``tokenizer``: the folder's tokenizer
    (:func:`load_tokenizer`; None when the folder has none or it was not asked for).
    ``hf_config``: the folder's config.json as a dict (export keeps its token ids).
    ``extras``: checkpoint tensors headwise has no module for but that
    :func:`save_pretrained` writes back, e.g. BERT's pooler.
    """

    model: nn.Module
    tokenizer: HFTokenizer | RawTokenizer | None = None
    hf_config: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    tokenizer: bool = True,
    strict: bool = True,
) -> Pretrained:
    """Load a local Hugging Face (or sentence-transformers) folder as a headwise model.

    Args:
        path: the folder, or a packaged model's name (``"minilm"``, see
            :data:`PACKAGED_MODELS`).
        dtype: dtype of the returned model; None keeps the checkpoint's (that of its
            token embedding).
        tokenizer: also load the folder's tokenizer (see :func:`load_tokenizer`) into
            the result's ``tokenizer``; False leaves it None.
        strict: raise ValueError when the checkpoint holds tensors headwise would not
            use (a classification head, say). False drops them instead.

    Returns:
        a :class:`Pretrained`: its ``model`` is an :class:`Encoder` (BertModel and
        sentence-transformers folders; ``(B, T) -> hidden (B, T, d_model)``), an
        :class:`EncoderForMLM` (when the checkpoint has ``cls.predictions`` weights;
        ``-> logits (B, T, V)``), or a :class:`Decoder` (GPT-2, Llama; ``-> logits
        (B, T, V)``), in eval mode; with it the ``tokenizer``, ``hf_config`` and
        ``extras``.

    Raises:
        FileNotFoundError: ``path`` is not a folder, or holds no config.json or weights.
        ValueError: unsupported ``model_type`` or feature; a tensor with the wrong shape
            (named) or missing; unexpected tensors with ``strict=True``.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        # (was: "Invalid device string: 'bfloat16'", or load_state_dict's error for an integer dtype)
        named = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        hint = f" (a str: give torch.{dtype})" if isinstance(named, torch.dtype) and named.is_floating_point else ""
        raise TypeError(f"dtype must be None or a floating-point torch.dtype such as torch.float32, "
                        f"torch.bfloat16 or torch.float16, got {dtype!r}{hint}")
    if isinstance(path, str) and path in PACKAGED_MODELS and not Path(path).exists():
        path = packaged_model_path(path)
    folder = resolve_model_folder(path)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder} (expected a Hugging Face model folder)")
    with open(cfg_file, encoding="utf-8") as f:
        try:
            hf_cfg = json.load(f)
        except json.JSONDecodeError as e:  # (still one: callers may catch it to name the file)
            raise json.JSONDecodeError(f"{cfg_file} is not a JSON config ({e.msg})", e.doc, e.pos) from None
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
        links = bert.links(cfg, "encoder." if mlm else "", mlm, prefix)
        cls: type[nn.Module] = EncoderForMLM if mlm else Encoder
        for name in bert.EXTRAS:
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
            cfg = dataclasses.replace(cfg, tied_embeddings=True)
        links = FAMILIES[family].links(cfg, prefix)
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
    return Pretrained(
        model=model,
        tokenizer=load_tokenizer(path) if tokenizer else None,
        hf_config=hf_cfg,
        extras={k: v.to(target) for k, v in extras.items()},
    )


def _retie(model: nn.Module, cfg: ModelConfig) -> None:
    """``load_state_dict(assign=True)`` gives each name its own Parameter: tie again."""
    if not cfg.tied_embeddings:
        return
    if isinstance(model, Decoder):
        model.lm_head.weight = model.embeddings.tok.weight
    elif isinstance(model, EncoderForMLM):
        model.head.decoder.weight = model.encoder.embeddings.tok.weight


def _from_hf_state(
    theirs: dict[str, Tensor], links: list[Link], shapes: dict[str, torch.Size], folder: Path
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


# HF tensors that are not weights (old checkpoints saved some buffers) or that duplicate
# a tied weight: dropped on import.
def _ignorable(name: str) -> bool:
    return (
        name.endswith(("position_ids", ".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))
        or name.startswith("cls.seq_relationship.")
    )
