"""headwise.hardware.memory: keeping freed memory in the process stops the page faults of
allocating the same blocks again, leaves a user's own malloc settings alone, and says
what it did. Each case runs in a fresh process: mallopt cannot be taken back."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from headwise.hardware import memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# one 30 MiB block allocated (straight from the C library: nothing else allocates in
# between), touched and freed, four times. glibc's defaults serve the first with its own
# pages and the second from a heap grown for it, so both are faulted in; kept memory is
# faulted in once. The later rounds also show that the kept heap is not trimmed (once the
# mmap threshold is set, glibc's trim threshold no longer follows it).
SCRIPT = """
import ctypes, ctypes.util, json, resource
from headwise.hardware.memory import keep_freed_memory
said = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 30 << 20
per_round = []
for _ in range(4):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
    per_round.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"said": said, "faults": per_round}))
"""
PAGES = (30 << 20) // 4096


def _run(**env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in (memory.ENV, *memory.GLIBC_VARIABLES)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_kept_memory_is_not_faulted_in_again():
    kept, default = _run(), _run(**{memory.ENV: "default"})
    assert kept["said"]["applied"] and kept["said"]["setting"] == "keep"
    assert "32 MiB" in kept["said"]["why"]
    assert not default["said"]["applied"] and "default" in default["said"]["why"]
    assert default["faults"][1] > PAGES // 2  # faulted in again
    assert all(f < PAGES // 50 for f in kept["faults"][1:]), kept["faults"]


def test_a_users_glibc_variables_are_left_to_them():
    got = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not got["said"]["applied"] and "MALLOC_TRIM_THRESHOLD_" in got["said"]["why"]


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv(memory.ENV, "sometimes")
    with pytest.raises(ValueError, match="HEADWISE_MALLOC must be keep or default; got 'sometimes'"):
        memory.keep_freed_memory()
