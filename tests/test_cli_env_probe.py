"""The command line and the HEADWISE_* environment variables under odd circumstances:
a reader that goes away, bad variable values, output paths that cannot be written.
Each is refused in one line with status 2 (never a traceback), or handled quietly."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from tiny_runs import refused_line

from headwise.attention.backends.dispatch import Dispatcher
from headwise.cli import OUTPUT_CLOSED, main
from headwise.kernels import get_tiled_options, set_tiled_options


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """``headwise ARGV`` with its standard output a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "headwise", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


# ------------------------------------------------------------------ a closed output
def test_output_whose_reader_went_away_ends_quietly():
    """``headwise plan ... | head -c 5``: no 'error: [Errno 32] Broken pipe', no traceback."""
    done = _run_into_closed_pipe("plan", "--preset", "tiny")
    assert done.returncode == OUTPUT_CLOSED, done.stderr
    assert done.stderr == ""


# ------------------------------------------------------------------ on/off variables
@pytest.fixture
def tiled_default():
    """The process's kernel options, put back after a test that runs ``main``."""
    start = get_tiled_options()
    yield
    set_tiled_options(start)


@pytest.mark.parametrize("name, value, field, want", [
    ("HEADWISE_TILED_AUTOTUNE", "false", "autotune", False),
    ("HEADWISE_TILED_AUTOTUNE", "OFF", "autotune", False),
    ("HEADWISE_TILED_AUTOTUNE", "0", "autotune", False),
    ("HEADWISE_TILED_TMA", "off", "tma", False),
    ("HEADWISE_TILED_TMA", "no", "tma", False),
    ("HEADWISE_TILED_TMA", "auto", "tma", None),
])
def test_tiled_switch_words_that_mean_off_turn_it_off(tiled_default, monkeypatch, capsys, name, value, field,
                                                      want):
    """``HEADWISE_TILED_AUTOTUNE=false`` left autotuning on (only ``0`` was off), and
    ``HEADWISE_TILED_TMA=off`` left TMA on auto."""
    monkeypatch.setenv(name, value)
    main(["plan", "--preset", "tiny"])
    capsys.readouterr()
    assert getattr(get_tiled_options(), field) is want


@pytest.mark.parametrize("name, value", [("HEADWISE_TILED_AUTOTUNE", "maybe"), ("HEADWISE_TILED_TMA", "of")])
def test_tiled_switch_that_is_no_on_off_word_is_refused_naming_it(tiled_default, monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith(f"headwise: error: {name} must be 1, true, yes or on")
    assert f"got {value!r}" in line


# ------------------------------------------------------------------ backend="auto"'s variables
def test_autotune_backend_that_is_no_on_off_word_is_refused_not_taken_for_on(monkeypatch, capsys):
    """``HEADWISE_AUTOTUNE_BACKEND=maybe`` (anything but 0/false/no/off) meant timing on."""
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BACKEND", "maybe")
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith("headwise: error: HEADWISE_AUTOTUNE_BACKEND must be 1, true, yes or on")
    assert "got 'maybe'" in line


@pytest.mark.parametrize("value", ["abc", "-5", "nan"])
def test_autotune_budget_that_is_not_milliseconds_is_refused_naming_it(monkeypatch, capsys, value):
    """``HEADWISE_AUTOTUNE_BUDGET_MS=abc`` failed on a GPU at the first attention call as
    'could not convert string to float'; nan meant no budget at all, -5 none left."""
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BUDGET_MS", value)
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith("headwise: error: HEADWISE_AUTOTUNE_BUDGET_MS must be a number of milliseconds >= 0")
    assert f"got {value!r}" in line
    with pytest.raises(ValueError, match="HEADWISE_AUTOTUNE_BUDGET_MS must be"):
        Dispatcher(lambda: []).budget()  # the dispatcher reads it at each use, too


@pytest.mark.parametrize("value, want", [("", 500.0), ("0", 0.0), ("inf", math.inf), ("20", 20.0)])
def test_autotune_budget_values_that_are_milliseconds_are_taken(monkeypatch, value, want):
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BUDGET_MS", value)
    assert Dispatcher(lambda: []).budget() == want
