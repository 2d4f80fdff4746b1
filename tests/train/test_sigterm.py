"""SIGTERM (what a job scheduler sends a job it stops) ends a run as Ctrl-C does: one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.helpers.tiny_runs import tiny_cli_args, write_corpus


def test_sigterm_is_one_line_naming_the_last_checkpoint_and_the_resume(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", docs=60)
    out = tmp_path / "run"
    args = tiny_cli_args(corpus, out, "--steps", "100000", "--checkpoint-every", "2", "--eval-every", "50",
                         "--no-report")
    env = {**os.environ, "HEADWISE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "headwise", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "latest").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("headwise train: terminated (SIGTERM); its last checkpoint is step-"), err
    assert last.endswith(f"continue the run with headwise train --out {out} --resume"), err
