"""``config.json`` <-> :class:`~headwise.models.ModelConfig` for every supported
family, dispatching to :mod:`.bert`, :mod:`.gpt2` and :mod:`.llama`."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..config import ModelConfig
from . import bert, gpt2, llama

__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "config_from_hf", "config_to_hf"]

#: ``model_type`` -> the module holding its config translation and weight map.
FAMILIES: dict[str, ModuleType] = {"bert": bert, "gpt2": gpt2, "llama": llama}
#: HF ``model_type`` values :func:`from_pretrained` reads (and ``family`` values for export)
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


def config_from_hf(hf: dict[str, Any]) -> tuple[str, ModelConfig]:
    """``(model_type, ModelConfig)`` for a Hugging Face ``config.json`` dict.

    Raises ValueError for an unsupported ``model_type`` (naming the supported ones) or
    for a feature headwise does not implement (naming the field and its value), rather
    than importing a model that would silently compute something else.
    """
    if not isinstance(hf, dict):
        raise TypeError(f"config.json must hold a JSON object, got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type is None:
        raise ValueError(f"config.json has no model_type; supported: {list(SUPPORTED_MODEL_TYPES)}")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r} in config.json is not supported; supported: "
            f"{list(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        return model_type, FAMILIES[model_type].config_from_hf(hf)
    except KeyError as e:  # a field every config.json of the family has
        raise MissingFieldError(
            e.args[0],
            f"config.json (model_type={model_type!r}) has no {e.args[0]!r}, which every "
            f"{model_type} config.json holds; is it damaged or hand-written?",
        ) from None


class MissingFieldError(KeyError, ValueError):
    """A field config.json lacks: a ValueError with a readable message, and still the
    KeyError (``args[0]`` the field's name) a family's ``hf[name]`` raised."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name)
        self.message = message

    def __str__(self) -> str:
        return self.message


def config_to_hf(cfg: ModelConfig, family: str, *, mlm: bool = False, base: dict | None = None) -> dict[str, Any]:
    """The ``config.json`` dict for ``cfg`` exported as ``family``.

    Args:
        cfg: the headwise config (assumed exportable; :func:`save_pretrained` checks).
        family: ``"bert"``, ``"gpt2"`` or ``"llama"``.
        mlm: BERT only: the model has an MLM head (``BertForMaskedLM``).
        base: an imported model's original config; its token ids (pad/bos/eos) are kept.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(SUPPORTED_MODEL_TYPES)}, got {family!r}")
    base = base or {}
    ids = {k: base.get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    if family == "bert":
        ids["pad_token_id"] = base.get("pad_token_id", 0)
    out = FAMILIES[family].config_to_hf(cfg, mlm=mlm)
    out.update(ids)
    return out
