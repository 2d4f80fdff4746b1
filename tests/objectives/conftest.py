"""Shared tokenizer facts and batches for the objective tests (via the ``tok`` and
``kit`` fixtures)."""

from types import SimpleNamespace

import pytest
import torch

from headwise.models import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded: the models are tiny, and on a shared 2-core machine a second
    OpenMP thread competing with other processes made steps ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


V = 1000
PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = [PAD, CLS, SEP, MASK]


def continuation_table() -> torch.Tensor:
    """Every fourth ordinary id is a continuation piece (like WordPiece's ##x)."""
    ids = torch.arange(V)
    return (ids % 4 == 0) & (ids >= 8)


@pytest.fixture
def tok():
    """A stand-in with the tokenizer wrapper's attribute names."""
    return SimpleNamespace(
        vocab_size=V, pad_id=PAD, mask_id=MASK, cls_id=CLS, sep_id=SEP,
        special_ids=SPECIALS, is_continuation=continuation_table(),
    )


@pytest.fixture
def kit():
    """The constants and helpers of this file (test modules cannot import conftest
    under --import-mode=importlib)."""
    return SimpleNamespace(
        V=V, PAD=PAD, CLS=CLS, SEP=SEP, MASK=MASK, SPECIALS=SPECIALS,
        continuation_table=continuation_table, make_batch=make_batch, tiny_config=tiny_config,
    )


def make_batch(b: int, t: int, seed: int = 0, pad_tail: int = 0) -> torch.Tensor:
    """Random ordinary tokens framed by [CLS] ... [SEP], the last ``pad_tail`` positions of
    every other row padded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(len(SPECIALS), V, (b, t), generator=g)
    x[:, 0] = CLS
    x[:, t // 2] = SEP
    x[:, -1] = SEP
    if pad_tail:
        x[::2, t - pad_tail :] = PAD
    return x


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=64)
    return ModelConfig(**{**base, **kw})
