"""Where data keeps what it computes once: trained tokenizers and token-block files.

Its own module so that both :mod:`headwise.data.tokenizer` and
:mod:`headwise.data.blocks` can name the folder without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$HEADWISE_CACHE`` if set, else ``~/.cache/headwise``. ValueError when
    ``$HEADWISE_CACHE`` names something other than a folder (a file, say), or a path
    inside a file, where no folder can be created."""
    env = os.environ.get("HEADWISE_CACHE")
    if env:
        # the path itself, or the nearest part of it that exists, must be a folder
        existing = next((p for p in (Path(env), *Path(env).parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            inside = "" if existing == Path(env) else f" (inside the file {str(existing)!r})"
            raise ValueError(
                f"HEADWISE_CACHE={env!r} is not a folder{inside}; point it at a folder for headwise's "
                "cache (it is created if missing) or unset it to use ~/.cache/headwise"
            )
    return Path(env) if env else Path.home() / ".cache" / "headwise"
