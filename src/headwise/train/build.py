"""Assemble a run's parts from its TrainConfig: corpus -> tokenizer -> token blocks
-> model config -> objective (which holds the model). Data flows one way."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..attention.backends import (
    AttentionCall,
    available_backends,
    backend_refusal,
    backends_serving,
    check_backend_name,
)
from ..attention.masks import MaskSpec
from ..data import (
    BlockSampler,
    Corpus,
    TokenBlocks,
    Tokenizer,
    build_blocks,
    is_builtin_corpus,
    load_corpus,
    load_or_train_tokenizer,
)
from ..hardware.precision import Precision
from ..models import CONFIG_NAME, Decoder, EncoderForMLM, ModelConfig, build_electra, get_preset
from ..models.presets import PRESETS
from ..objectives import CausalLM, MaskedLM, ReplacedTokenDetection
from .config import TrainConfig
from .rundir import replace_file

__all__ = ["RunParts", "build_parts", "require_recorded_files", "check_corpus_record", "check_out_outside_corpus",
           "build_objective", "default_tokenizer_kind", "model_config_for", "attention_calls",
           "check_attention_backend"]

#: what the corpus of a training run held when it started (its content hash), so that
#: a resume on a corpus changed since is refused rather than trained on other blocks
CORPUS_RECORD = "corpus.json"

TOKENIZER_KIND = {"mlm": "wordpiece", "rtd": "wordpiece", "clm": "bpe"}


def default_tokenizer_kind(objective: str) -> str:
    return TOKENIZER_KIND[objective]


@dataclass
class RunParts:
    """A run's parts; ``train``, ``val`` and ``sampler`` are None when they were built
    without the data (``build_parts(..., data=False)``)."""
    tokenizer: Tokenizer
    model_config: ModelConfig
    objective: nn.Module
    train: TokenBlocks | None
    val: TokenBlocks | None
    sampler: BlockSampler | None


def build_objective(objective: str, model_cfg: ModelConfig, tok: Tokenizer, cfg: TrainConfig) -> nn.Module:
    """The objective module (it owns the model or models) for ``objective``."""
    if objective == "mlm":
        return MaskedLM.from_tokenizer(tok, EncoderForMLM(model_cfg), whole_word=cfg.whole_word_masking)
    if objective == "rtd":
        generator, discriminator = build_electra(model_cfg)
        return ReplacedTokenDetection.from_tokenizer(
            tok, discriminator, generator if cfg.rtd_generator == "model" else "uniform",
            disc_weight=cfg.rtd_disc_weight, whole_word=cfg.whole_word_masking,
        )
    return CausalLM.from_tokenizer(tok, Decoder(model_cfg))


def model_config_for(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    """The model config of a new run: preset ``cfg.preset`` with the ``--model``
    overrides, ``--dropout`` and the tokenizer's ``vocab_size``. Raises ValueError
    naming the setting at fault: an unknown ``--model`` field (with the valid ones), a
    bad value, or a ``--block-len`` longer than the model's ``max_len``."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"--preset {cfg.preset!r}: unknown preset; accepted: {', '.join(sorted(PRESETS))}")
    known = sorted(set(ModelConfig.field_names()) - {"vocab_size"})  # that one is the tokenizer's
    unknown = sorted(set(cfg.model) - set(known) - {"vocab_size"})
    if unknown:
        raise ValueError(f"--model: unknown field(s) {', '.join(unknown)}; the fields are: {', '.join(known)}")
    if "vocab_size" in cfg.model:
        raise ValueError(f"--model vocab_size={cfg.model['vocab_size']!r}: the vocabulary size comes from "
                         "the tokenizer; use --vocab-size (or --tokenizer) instead")
    overrides = {**cfg.model, "vocab_size": vocab_size}
    if cfg.dropout is not None:
        if "dropout" in cfg.model and cfg.model["dropout"] != cfg.dropout:
            raise ValueError(f"--dropout {cfg.dropout} and --model dropout={cfg.model['dropout']} disagree; "
                             "give one of them")
        overrides["dropout"] = cfg.dropout
    try:
        model_cfg = get_preset(cfg.preset, **overrides)
    except ValueError as e:
        given = ",".join(f"{k}={v}" for k, v in cfg.model.items())
        raise ValueError(f"preset {cfg.preset!r}" + (f" with --model {given}" if given else "") + f": {e}") from None
    # the shortest block: [CLS] token [SEP] for an encoder, two tokens (one input, one target) for clm
    shortest = 2 if cfg.objective == "clm" else 3
    if cfg.block_len < shortest:
        held = "one input and one target token" if cfg.objective == "clm" else "[CLS], one token and [SEP]"
        raise ValueError(f"--block-len {cfg.block_len} is too short for --objective {cfg.objective}: a block "
                         f"holds {held}; use --block-len {shortest} or more")
    # a CLM block of L tokens feeds L-1 to the model (the last one is only a target)
    seen = cfg.block_len - 1 if cfg.objective == "clm" else cfg.block_len
    if model_cfg.max_len < seen:
        where = (f"--model max_len={model_cfg.max_len}" if "max_len" in cfg.model
                 else f"the max_len {model_cfg.max_len} of preset {cfg.preset!r}")
        fed = f" (a clm block of {cfg.block_len} tokens feeds {seen} to the model)" if seen != cfg.block_len else ""
        raise ValueError(f"--block-len {cfg.block_len} exceeds {where}{fed}; use --block-len <= "
                         f"{model_cfg.max_len + (cfg.block_len - seen)} or a larger max_len (--model max_len=N)")
    return model_cfg


def attention_calls(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device,
                    precision: Precision) -> list[AttentionCall]:
    """The kinds of attention call a run of ``model_cfg`` makes on ``device``: a training
    forward (gradients, the attention dropout, in the autocast dtype) and an evaluation
    one (no gradients, no dropout). Decoders are causal; blocks are never padded, so
    there is no other mask."""
    t = cfg.block_len - 1 if cfg.objective == "clm" else cfg.block_len
    mask = MaskSpec(batch=cfg.batch_size, q_len=t, k_len=t, causal=cfg.objective == "clm")
    shape = dict(dtype=precision.autocast_dtype or torch.float32, device=torch.device(device),
                 head_dim=model_cfg.head_dim, value_dim=model_cfg.head_dim, n_heads=model_cfg.n_heads,
                 n_kv_heads=model_cfg.n_kv_heads, mask=mask, need_weights=False)
    return [AttentionCall(**shape, dropout_p=model_cfg.attn_dropout, requires_grad=True),
            AttentionCall(**shape, dropout_p=0.0, requires_grad=False)]


def check_attention_backend(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device,
                            precision: Precision, *, saved: bool = False) -> None:
    """Refuse an attention backend (``attn_backend``) that is unknown or cannot serve
    the run's calls (:func:`attention_calls`) on ``device``: one without a backward, one
    that needs a GPU or Triton, a dtype or head size it lacks... Raises ValueError naming
    where the setting comes from (``--model``, the preset, or the run's config.json when
    ``saved``), why it cannot serve, and the backends that can."""
    name = model_cfg.attn_backend
    if saved:
        where = f"the run's attn_backend {name!r} (its {CONFIG_NAME})"
    elif "attn_backend" in cfg.model:
        where = f"--model attn_backend={name}"
    else:
        where = f"the attn_backend {name!r} of preset {cfg.preset!r}"
    try:
        check_backend_name(name)
    except ValueError:
        raise ValueError(f"{where}: no such attention backend; accepted: "
                         + ", ".join(["auto", *available_backends()])) from None
    calls = attention_calls(cfg, model_cfg, device, precision)
    reason = backend_refusal(name, calls)
    if reason is not None:
        dtype = str(calls[0].dtype).removeprefix("torch.")
        raise ValueError(f"{where} cannot train this model on {calls[0].device} ({dtype}): {reason}; "
                         f"backends that can: {', '.join(['auto', *backends_serving(calls)])}")


def require_recorded_files(run_dir: Path) -> None:
    """Refuse a trained run that lacks ``tokenizer.json`` or ``config.json``. Training wrote
    both before its first checkpoint; rebuilt from the corpus now, they could number the
    tokens or shape the model otherwise than the weights were trained with."""
    for name in ("tokenizer.json", CONFIG_NAME):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: it records what the run was "
                                    f"trained with, and one rebuilt from the corpus now might not "
                                    f"match; restore it from a copy of the run")


def check_corpus_record(run_dir: Path, corpus: Corpus) -> None:
    """Compare ``corpus`` with what the run's ``corpus.json`` recorded when training
    started, or record it there (a new run, or one from before the record existed). A
    file or folder whose text has changed since is refused: the run would go on with
    other blocks and another validation split. A built-in or Hugging Face corpus (whose
    fingerprint also follows the Python or the dataset's version) is warned about."""
    path = Path(run_dir) / CORPUS_RECORD
    now = {"corpus": corpus.name, "content_hash": corpus.content_hash}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        replace_file(path, json.dumps(now, indent=1) + "\n")
        return
    except ValueError:
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("content_hash"), str):
        raise ValueError(f"{path} is damaged: it should record the content hash of the run's corpus; "
                         f"restore it from a copy of the run")
    if saved["content_hash"] == corpus.content_hash:
        return
    what = (f"the corpus {corpus.name!r} has changed since this run started (its content differs from the "
            f"one recorded in {path})")
    if is_builtin_corpus(corpus.name):
        print(f"warning: {what}: it now yields other text, so the run goes on with other blocks", file=sys.stderr)
        return
    raise ValueError(f"{what}: the run would go on with other blocks and another validation split. "
                     f"Restore the corpus as it was, or start a new run (another --out) on it")


def check_out_outside_corpus(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse a run directory inside its corpus folder: the folder is read recursively,
    so the run's own files (metrics.jsonl, summary.txt) would become corpus text once
    written, and a resume or an evaluation would read other data, or fail on them. A
    hidden folder inside it is fine (the corpus skips hidden folders)."""
    if not str(cfg.corpus).strip():  # not a folder (Path("") is "."): load_corpus refuses it
        return
    folder = Path(str(cfg.corpus))
    if not folder.is_dir():
        return
    try:
        inside = Path(run_dir).resolve().relative_to(folder.resolve())
    except ValueError:
        return
    if not any(part.startswith(".") for part in inside.parts):
        raise ValueError(f"--out {str(run_dir)!r} is inside the --corpus folder {str(cfg.corpus)!r}, which is read "
                         f"with its subfolders: the run's own files (metrics.jsonl, summary.txt) would become "
                         f"corpus text; choose an --out outside it (or a hidden folder in it)")


def build_parts(cfg: TrainConfig, run_dir: Path, device: torch.device, *, resume: bool,
                precision: Precision | None = None, data: bool = True,
                corpus: Corpus | None = None) -> RunParts:
    """Build (or, on resume, reload) tokenizer, data, model config and objective. With
    ``precision`` (a training run), the model's attention backend is checked first
    (:func:`check_attention_backend`) and the corpus is checked against the run's record
    of it (:func:`check_corpus_record`). ``corpus``: the run's corpus already loaded
    (default: ``load_corpus(cfg.corpus)``). With ``data=False`` the corpus is not read
    at all (``train``, ``val`` and ``sampler`` are None): the run directory must then
    hold its tokenizer.json and config.json (:func:`require_recorded_files`)."""
    run_dir = Path(run_dir)
    if data:
        check_out_outside_corpus(cfg, run_dir)
        corpus = load_corpus(cfg.corpus if corpus is None else corpus)
        if precision is not None:
            check_corpus_record(run_dir, corpus)
    else:  # without the corpus, neither file could be rebuilt
        require_recorded_files(run_dir)
    tok_path = run_dir / "tokenizer.json"
    kind = cfg.tokenizer_kind or default_tokenizer_kind(cfg.objective)
    if tok_path.is_file():  # resume, or a tokenizer given earlier: the run's own copy rules
        tok = Tokenizer.load(tok_path)
    elif cfg.tokenizer is not None:
        tok = Tokenizer.load(cfg.tokenizer)
        tok.save(run_dir)
    else:
        tok = load_or_train_tokenizer(corpus, kind, cfg.vocab_size)
        tok.save(run_dir)
    if cfg.objective in ("mlm", "rtd") and tok.mask_id is None:
        raise ValueError(
            f"objective {cfg.objective!r} needs a tokenizer with a [MASK] token; "
            f"the {tok.kind} tokenizer has none (use --tokenizer-kind wordpiece or char)"
        )
    train = val = None
    if data:
        style = "decoder" if cfg.objective == "clm" else "encoder"
        blocks = build_blocks(corpus, tok, cfg.block_len, style=style, val_fraction=cfg.val_fraction,
                              seed=cfg.seed)
        train, val = blocks.split("train"), blocks.split("val")
        if len(train) < cfg.batch_size:
            raise ValueError(
                f"corpus {cfg.corpus!r} gives {len(train)} training blocks of {cfg.block_len} tokens, "
                f"fewer than one batch of {cfg.batch_size}; use a larger corpus or smaller "
                f"--batch-size/--block-len"
            )
    config_path = run_dir / CONFIG_NAME
    if resume and config_path.is_file():
        try:
            model_cfg = ModelConfig.from_json(config_path)
        except (TypeError, ValueError) as e:  # not JSON, not a dict, an unknown or bad field
            raise ValueError(f"{config_path} is damaged: {e}") from None
        if model_cfg.vocab_size != tok.vocab_size:
            raise ValueError(f"{config_path} has vocab_size={model_cfg.vocab_size} but the run's "
                             f"tokenizer ({tok_path}) has {tok.vocab_size} tokens; the two files "
                             f"do not belong to one run")
        saved = True
    else:
        model_cfg, saved = model_config_for(cfg, tok.vocab_size), False
    if precision is not None:  # a training run: before the model is built
        check_attention_backend(cfg, model_cfg, device, precision, saved=saved)
    if not saved:
        model_cfg.to_json(config_path)
    objective = build_objective(cfg.objective, model_cfg, tok, cfg).to(device)
    sampler = train.sampler(cfg.batch_size, seed=cfg.seed) if train is not None else None
    return RunParts(tok, model_cfg, objective, train, val, sampler)
