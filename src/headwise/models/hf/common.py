"""What the three Hugging Face families share: the names of the families, the
activation names on each side, refusing a setting headwise does not implement, and
:class:`Link`, one entry of a weight map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HF_ACT", "ACT_HF", "Link", "read_act", "refuse"]

# HF activation names -> headwise ``activation``.
HF_ACT = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}
# headwise -> the HF name that means the same function.
ACT_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def read_act(hf: dict, key: str, default: str) -> str:
    value = hf.get(key, default)
    if value not in HF_ACT:
        raise ValueError(f"{key}={value!r} is not supported; accepted: {sorted(HF_ACT)}")
    return HF_ACT[value]


def refuse(hf: dict, key: str, default: Any, accepted: tuple, why: str) -> None:
    value = hf.get(key, default)
    if value not in accepted:
        raise ValueError(f"{key}={value!r} is not supported ({why}); accepted: {list(accepted)}")


@dataclass(frozen=True)
class Link:
    """One headwise tensor and the HF tensor(s) it is made of.

    ``theirs`` are concatenated along dim 0 (output rows) in order, ``sizes`` rows each;
    ``conv1d`` marks GPT-2 Conv1D weights, stored ``(in, out)`` and so transposed.
    """

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] | None = None
    conv1d: bool = False
