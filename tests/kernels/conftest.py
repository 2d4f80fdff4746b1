"""Fixtures of the kernel tests: the tiled kernels' options and autotune cache, set
through their public functions and put back after each test."""

from __future__ import annotations

import pytest

from headwise.kernels import get_tiled_options, reset_autotune_cache, set_tiled_options


@pytest.fixture
def use_options():
    """``use_options(bwd="fused", ...)``: change the process default TiledOptions for
    this test; the default it found is put back afterwards."""
    previous = get_tiled_options()

    def use(**changes):
        set_tiled_options(**changes)

    yield use
    set_tiled_options(previous)


@pytest.fixture
def fresh_autotune_cache():
    """No launch config cached before the test, and none of its own left after."""
    reset_autotune_cache()
    yield
    reset_autotune_cache()
