"""Where data keeps what it computes once: trained tokenizers and token-block files.

Its own module so that both :mod:`headwise.data.tokenizer` and
:mod:`headwise.data.blocks` can name the folder without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$HEADWISE_CACHE`` if set, else ``~/.cache/headwise``."""
    env = os.environ.get("HEADWISE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "headwise"
