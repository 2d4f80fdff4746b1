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

# three 24 MiB blocks allocated, touched and freed, six times: glibc trims its heap after
# each round and faults the blocks in afresh in the next one, unless it keeps them
SCRIPT = """
import json, resource, torch
from headwise.hardware.memory import keep_freed_memory
said = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_round = []
for _ in range(6):
    f0 = faults()
    blocks = [torch.ones((24 << 20) // 4) for _ in range(3)]
    del blocks
    per_round.append(faults() - f0)
print(json.dumps({"said": said, "faults": per_round}))
"""


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
    # after the first rounds, glibc's defaults fault the blocks in every round; kept, not
    assert sum(default["faults"][-3:]) > 10 * max(1, sum(kept["faults"][-3:]))


def test_a_users_glibc_variables_are_left_to_them():
    got = _run(MALLOC_TRIM_THRESHOLD_="1000000")
    assert not got["said"]["applied"] and "MALLOC_TRIM_THRESHOLD_" in got["said"]["why"]


def test_an_unknown_setting_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv(memory.ENV, "sometimes")
    with pytest.raises(ValueError, match="HEADWISE_MALLOC must be keep or default; got 'sometimes'"):
        memory.keep_freed_memory()
