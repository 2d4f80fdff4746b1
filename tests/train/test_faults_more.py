"""More faults a careful user meets: a run killed while a resume rewrites run.json.
After each the run still resumes, and ends where an uninterrupted run ends."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_cfg, write_corpus

from headwise.cli import main
from headwise.train import Trainer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus and a finished run of 8 steps (checkpoints at 4 and 8)."""
    root = tmp_path_factory.mktemp("faults-more")
    os.environ["HEADWISE_CACHE"] = str(root / "cache")
    corpus = write_corpus(root / "corpus.txt")
    ref = root / "reference"
    Trainer(tiny_cfg(corpus, ref), progress=False).run()
    return {"root": root, "corpus": corpus, "ref": ref}


def _copy(world, name: str) -> Path:
    run = world["root"] / name
    shutil.copytree(world["ref"], run)
    return run


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _rows(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]


# the process kills itself halfway through writing run.json (whatever writes it, under any name)
_KILL_WRITING_RUN_JSON = """
    import builtins, io, os, signal
    from pathlib import Path
    real_open = io.open
    def killing_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if isinstance(file, (str, os.PathLike)) and Path(file).name.startswith("run.json") and "w" in mode:
            write = f.write
            def half_then_die(data):
                write(data[: len(data) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            f.write = half_then_die
        return f
    io.open = builtins.open = killing_open
"""


def test_a_kill_while_a_resume_rewrites_run_json_leaves_the_run_resumable(world, capsys):
    """``--resume --steps 12`` rewrites run.json; killed meanwhile, it used to leave a
    truncated run.json, and every later ``--resume`` stopped with "run.json is damaged"
    though both checkpoints were intact. Now the old run.json stays whole."""
    run = _copy(world, "killed-rewriting-run-json")
    before = (run / "run.json").read_bytes()
    argv = ["train", "--out", str(run), "--resume", "--steps", "12", "--quiet", "--no-report"]
    code = textwrap.dedent(_KILL_WRITING_RUN_JSON) + f"from headwise.cli import main\nmain({argv!r})\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (run / "run.json").read_bytes() == before
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["steps"] == 12
    # the same 12 steps as a run resumed without the kill
    twin = _copy(world, "resumed-to-12")
    assert main(["train", "--out", str(twin), "--resume", "--steps", "12", "--quiet", "--no-report"]) == 0
    a, b = _weights(run, 12), _weights(twin, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)
