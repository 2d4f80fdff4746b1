"""The command line and the HEADWISE_* environment variables under odd circumstances:
a reader that goes away, bad variable values, output paths that cannot be written.
Each is refused in one line with status 2 (never a traceback), or handled quietly."""

from __future__ import annotations

import os
import subprocess
import sys

from headwise.cli import OUTPUT_CLOSED


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
