"""Open a finished (or running) run directory for checking, generating or evaluating."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import TokenBlocks, build_blocks, load_corpus
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
        return self.parts.train

    @property
    def val(self) -> TokenBlocks:
        return self.parts.val


def load_run(run_dir: Path, *, fresh_weights: bool = False, device: str = "auto") -> LoadedRun:
    """The run's tokenizer, data and objective with its latest checkpoint's weights
    (or freshly initialised ones with ``fresh_weights``, for the sanity checks)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a headwise run directory (no run.json)")
    cfg = TrainConfig.from_json(run_dir / "run.json")
    require_recorded_files(run_dir)
    dev = resolve_device(device if device != "auto" else cfg.device)
    torch.manual_seed(cfg.seed)
    parts = build_parts(cfg, run_dir, dev, resume=True)
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


def evaluate_run(run: LoadedRun, corpus: str | None = None, max_batches: int = 50) -> dict[str, float]:
    """Metrics on the run's validation split, or on all blocks of another corpus."""
    blocks = run.val
    if corpus is not None:
        style = "decoder" if run.cfg.objective == "clm" else "encoder"
        blocks = build_blocks(load_corpus(corpus), run.tokenizer, run.cfg.block_len, style=style)
    return evaluate_blocks(run.objective, blocks, batch_size=run.cfg.batch_size, max_batches=max_batches,
                           device=run.device)
