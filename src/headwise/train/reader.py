"""Open a finished (or running) run directory for checking, generating or evaluating."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Corpus, TokenBlocks, build_blocks, is_builtin_corpus, load_corpus
from ..devices import resolve_device
from .build import RunParts, build_parts, require_recorded_files
from .checkpoint import CheckpointError, load_checkpoint, newest_intact
from .config import TrainConfig
from .evaluate import evaluate_blocks

__all__ = ["LoadedRun", "load_run", "evaluate_run"]


@dataclass
class LoadedRun:
    cfg: TrainConfig
    parts: RunParts
    device: torch.device
    checkpoint: Path | None

    @property
    def objective(self):
        return self.parts.objective

    @property
    def tokenizer(self):
        return self.parts.tokenizer

    @property
    def train(self) -> TokenBlocks:
        return self._split(self.parts.train, "training")

    @property
    def val(self) -> TokenBlocks:
        return self._split(self.parts.val, "validation")

    @staticmethod
    def _split(blocks: TokenBlocks | None, which: str) -> TokenBlocks:
        if blocks is None:
            raise ValueError(f"this run was loaded without its corpus (load_run(..., data=False)), so it has no "
                             f"{which} split; load it with data=True")
        return blocks


#: what ``load_run`` says reads the run's recorded corpus, when it cannot read it
CORPUS_USE = "the run's training and validation splits come from it: put it back there"


def load_run(run_dir: Path, *, fresh_weights: bool = False, device: str = "auto", data: bool = True,
             corpus_use: str = CORPUS_USE) -> LoadedRun:
    """The run's tokenizer, data and objective with its latest checkpoint's weights
    (or freshly initialised ones with ``fresh_weights``, for the sanity checks).

    ``data=False`` leaves the run's training corpus unread (``train`` and ``val`` are
    then unavailable): the model needs only the tokenizer.json and config.json in
    ``run_dir``, so a run whose corpus has moved still generates and is inspected. With
    ``data``, a recorded corpus that cannot be read (moved, deleted, a relative path
    from another folder) is refused naming run.json; ``corpus_use`` then says what needs
    it and what to do instead ("eval of the validation split reads it: ...")."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a headwise run directory (no run.json)")
    cfg = TrainConfig.from_json(run_dir / "run.json")
    require_recorded_files(run_dir)
    dev = resolve_device(device if device != "auto" else cfg.device)
    corpus = _recorded_corpus(cfg, run_dir, corpus_use) if data else None
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, run_dir, dev, resume=True, data=data, corpus=corpus)
    ckpt = None
    if not fresh_weights:
        ckpt, skipped = newest_intact(run_dir)
        if ckpt is None:
            if skipped:
                raise CheckpointError(f"{run_dir} has no intact checkpoint: " + "; ".join(skipped))
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint yet")
        for line in skipped:
            print(f"note: {line}; using {ckpt.name}", file=sys.stderr)
        load_checkpoint(ckpt, parts.objective, map_location=dev, verify=False)  # newest_intact hashed it
    parts.objective.eval()
    return LoadedRun(cfg, parts, dev, ckpt)


def _recorded_corpus(cfg: TrainConfig, run_dir: Path, use: str) -> Corpus:
    """The run's training corpus, as its run.json records it; a FileNotFoundError or
    ValueError saying it is that one, why it cannot be read, and ``use``."""
    spec = cfg.corpus
    where = f"the run's training corpus {str(spec)!r} (recorded in {run_dir / 'run.json'})"
    builtin = is_builtin_corpus(spec)
    if not builtin and str(spec).strip() and not Path(spec).exists():
        looked = ("" if Path(spec).is_absolute() else
                  f" (a path relative to the folder training ran in; from here it is {Path(spec).absolute()})")
        raise FileNotFoundError(f"{where} is not found{looked}; {use}")
    try:
        return load_corpus(spec)
    except (OSError, ValueError) as e:
        raise (OSError if isinstance(e, OSError) else ValueError)(f"{where} cannot be read: {e}; {use}") from None


def evaluate_run(run: LoadedRun, corpus: str | None = None, max_batches: int = 50) -> dict[str, float]:
    """Metrics on the run's validation split, or on all blocks of another corpus (the
    run may then be one loaded with ``data=False``)."""
    if corpus is not None:
        style = "decoder" if run.cfg.objective == "clm" else "encoder"
        blocks = build_blocks(load_corpus(corpus), run.tokenizer, run.cfg.block_len, style=style)
    else:
        blocks = run.val
    metrics = evaluate_blocks(run.objective, blocks, batch_size=run.cfg.batch_size, max_batches=max_batches,
                              device=run.device)
    # the objectives report a loss of 0 over no target, which would read as a perfect score
    scored = "n_tokens" if "n_tokens" in metrics else "n_selected"
    if metrics.get(scored) == 0:
        source = f"corpus {corpus!r}" if corpus is not None else f"the validation split of {run.cfg.corpus!r}"
        raise ValueError(f"no token was scored on {source}, so there is no loss to report: "
                         + _why_none_scored(run, blocks, max_batches))
    return metrics


def _why_none_scored(run: LoadedRun, blocks: TokenBlocks, max_batches: int) -> str:
    """Why the evaluated blocks gave the objective no target: what their tokens are."""
    tok = run.tokenizer
    special = set(tok.special_ids)
    total = unknown = ordinary = 0
    for i, batch in enumerate(blocks.iter_batches(run.cfg.batch_size)):
        if i >= max_batches:
            break
        ids = batch.flatten().tolist()
        total += len(ids)
        unknown += sum(t == tok.unk_id for t in ids)
        ordinary += sum(t not in special for t in ids)
    if run.cfg.objective == "clm":
        return f"the {total} tokens evaluated are all padding"
    what = (f"{unknown} of the {total} tokens evaluated are [UNK] (text outside the run's vocabulary) and "
            f"{total - unknown - ordinary} other special tokens" if unknown else
            f"{total - ordinary} of the {total} tokens evaluated are special tokens")
    masks = ("mlm scores only the ordinary tokens it masks" if run.cfg.objective == "mlm" else
             "rtd masks and replaces only ordinary tokens, leaving its generator nothing to predict and "
             "its discriminator nothing to detect")
    return (f"{masks}, and {what}; "
            f"evaluate on text the run's tokenizer covers" if ordinary == 0 else
            f"{run.cfg.objective} masked none of the {ordinary} ordinary tokens among the {total} evaluated; "
            f"evaluate on more text (or more --batches)")
