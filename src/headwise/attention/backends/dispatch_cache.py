"""The dispatch cache file: ``backend="auto"``'s measured choices kept on disk (opt-in,
:func:`headwise.attention.set_dispatch_cache` or ``HEADWISE_DISPATCH_CACHE``), read and
written here for :mod:`.dispatch`. Headwise never replaces a file it did not write."""

from __future__ import annotations

import json
import os
import threading
from importlib.metadata import version
from pathlib import Path

import torch

__all__ = ["CACHE_VERSION", "check_cache_file", "environment_key", "read_cache", "write_cache"]

CACHE_VERSION = 1


def _triton_version() -> str:
    try:
        return version("triton")
    except Exception:  # not installed
        return "none"


def environment_key(device_name: str, torch_version: str | None = None,
                    triton_version: str | None = None) -> str:
    """What a measurement holds for: the device's name and the library versions."""
    tv = torch.__version__ if torch_version is None else torch_version
    trv = _triton_version() if triton_version is None else triton_version
    return f"{device_name} | torch {tv} | triton {trv}"


def check_cache_file(path: Path, named: str) -> None:
    """ValueError (saying ``named``: where the path came from) when ``path`` cannot be
    the dispatch cache: a folder, or a file that is not one headwise wrote (which
    writing measurements would replace). A missing or empty file, or one of another
    cache version, is fine."""
    if path.is_dir():
        raise ValueError(f"the dispatch cache {named} is a folder; give the path of a JSON file in it")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        text = None
    if text is not None and not text.strip():
        return
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        data = None
    if not (isinstance(data, dict) and "version" in data and isinstance(data.get("environments"), dict)):
        raise ValueError(f"the dispatch cache {named} is a file headwise did not write (not its JSON of "
                         "measurements), and would be replaced; give a new or empty file")


def read_cache(path: Path) -> dict:
    """The cache's JSON, or ``{}`` when it is missing, unreadable or of another version."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data


def write_cache(path: Path, data: dict) -> None:
    """Replace the cache with ``data`` atomically, after checking it is still headwise's."""
    path = Path(path)
    check_cache_file(path, repr(str(path)))  # it may have been replaced since it was set
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)
