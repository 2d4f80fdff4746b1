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
    ``$HEADWISE_CACHE`` names something other than a folder (a file, say)."""
    env = os.environ.get("HEADWISE_CACHE")
    if env and os.path.exists(env) and not os.path.isdir(env):
        raise ValueError(
            f"HEADWISE_CACHE={env!r} is not a folder; point it at a folder for headwise's "
            "cache (it is created if missing) or unset it to use ~/.cache/headwise"
        )
    return Path(env) if env else Path.home() / ".cache" / "headwise"
