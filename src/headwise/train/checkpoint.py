"""Checkpoints, written so that a run killed at any moment loses nothing beyond
its last complete checkpoint.

Layout inside a run directory::

    checkpoints/step-00001000/model.safetensors   weights (safetensors)
    checkpoints/step-00001000/trainer.pt          optimizer, scheduler, RNG states, step
    checkpoints/latest                            name of the newest complete checkpoint

A checkpoint is written into a temporary folder, flushed, and renamed into place;
only then is ``latest`` replaced (``os.replace`` is atomic). A reader trusts only
what ``latest`` names.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "rng_state", "set_rng_state"]


def rng_state(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every random state a training step touches: Python, NumPy, torch (CPU and
    CUDA) and any named ``torch.Generator``s."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the legacy global state is what code uses)
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in (extra or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (extra or {}).items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` of them."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        # save_model handles tied (shared) tensors, which save_file refuses
        save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        torch.save({**trainer_state, "step": step}, tmp / "trainer.pt")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        pointer = root / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, root / "latest")
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "model.safetensors").is_file() else None


def load_checkpoint(path: Path, model: nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load weights into ``model`` (strictly) and return the trainer state."""
    path = Path(path)
    state = torch.load(path / "trainer.pt", map_location=map_location, weights_only=False)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(map_location))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return state
