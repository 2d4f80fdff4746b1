"""Attention maps with a known answer, for the inspect tests."""

import torch


def shifted(t: int, offset: int) -> torch.Tensor:
    """(T, T) one-hot map: query i attends to key i + offset (itself where that is outside)."""
    m = torch.zeros(t, t)
    for i in range(t):
        j = i + offset
        m[i, j if 0 <= j < t else i] = 1.0
    return m
