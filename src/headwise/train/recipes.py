"""Named training recipes: ``headwise train --recipe NAME`` sets the objective, model
preset, tokenizer, batch shape, optimizer and schedule at once.

A recipe fills only the settings not given on the command line, so
``headwise train --recipe shakespeare-char --steps 600`` keeps the rest of the recipe
and changes its length. The recipe's name is saved in run.json (``recipe``), for the
record; the run itself is described by the settings it set.

``shakespeare-char``: a character-level GPT for tinyshakespeare-sized text on the
CPU (measured against nanoGPT's CPU configuration in ``bench/shakespeare.py``; see
docs/training.md, "Beating nanoGPT on tinyshakespeare").
"""

from __future__ import annotations

from typing import Any

__all__ = ["RECIPES", "apply_recipe"]

RECIPES: dict[str, dict[str, Any]] = {
    "shakespeare-char": {
        "objective": "clm",
        "preset": "shakespeare-char",
        "tokenizer_kind": "char",
        "block_len": 65,  # 64 inputs and their 64 next-character targets
        "batch_size": 12,
        "steps": 1100,  # measured 0.885x the wall time of nanoGPT's 2000 iterations (1200 steps: 1.008x)
        "optimizer": "muon",
        "lr": 2e-3,  # AdamW's: embeddings (tied with the output head), norms
        "muon_lr": 0.04,
        "betas": (0.9, 0.99),
        "weight_decay": 0.1,
        "warmup": 50,
        "decay": "linear",
        "min_lr_ratio": 0.0,
        "val_fraction": 0.002,  # ~2k characters to follow the run by; bench/shakespeare.py scores
        "eval_every": 500,
        "eval_batches": 3,
        "checkpoint_every": 500,
        "log_every": 50,
    },
}


def apply_recipe(name: str, fields: dict[str, Any], given: set[str] | dict[str, Any]) -> dict[str, Any]:
    """``fields`` (TrainConfig settings) with recipe ``name``'s value for every setting
    that is not in ``given`` (those given explicitly win); ``recipe`` is set to ``name``."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    out = dict(fields)
    for key, value in RECIPES[name].items():
        if key not in given:
            out[key] = value
    out["recipe"] = name
    return out
