"""Faults probed in training runs: a file-size limit while saving, damaged run files, kills mid-write."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import Trainer
from headwise.train.checkpoint import checkpoint_report

STEPS = 8  # tiny_cfg: checkpoints at 4 and 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus and the uninterrupted reference run."""
    root = tmp_path_factory.mktemp("faults-probe")
    os.environ["HEADWISE_CACHE"] = str(root / "cache")
    corpus = write_corpus(root / "corpus.txt")
    ref = root / "reference"
    Trainer(tiny_cfg(corpus, ref), progress=False).run()
    return {"root": root, "corpus": corpus, "ref": ref}


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ------------------------------------------------------------------ a limit on file sizes
@pytest.mark.parametrize("fname,limit", [("model.safetensors", 60_000), ("trainer.pt", 150_000)])
def test_a_file_size_limit_while_saving_is_one_line_and_the_run_resumes(world, fname, limit):
    """A checkpoint file larger than the process may write (``ulimit -f``, RLIMIT_FSIZE; a
    file system's largest file) stopped the run with safetensors' or torch's traceback
    ("SafetensorError: ... File too large (os error 27)", "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos"). Now it is one line naming the checkpoint
    and the limit, saying nothing was lost, and the run resumes once the limit is gone."""
    run = world["root"] / f"fsize-{fname}"

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    done = subprocess.run([sys.executable, "-m", "headwise.cli", *tiny_cli_args(world["corpus"], run, "--no-report")],
                          capture_output=True, text=True, preexec_fn=limited, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, done.stderr
    assert "could not write checkpoint step-00000004" in lines[0] and "File too large" in lines[0], lines[0]
    assert "no earlier checkpoint" in lines[0], lines[0]
    assert checkpoint_report(run) == []
    assert not [p.name for p in (run / "checkpoints").iterdir()]  # no half folder left
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    assert _same_weights(run, world["ref"])


# ------------------------------------------------------------------ damaged run files
def _copy(world, name: str) -> Path:
    import shutil

    run = world["root"] / name
    shutil.copytree(world["ref"], run)
    return run


def _files(run: Path) -> dict[str, bytes]:
    """Every file of ``run`` (but its lock) and its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("record", [
    '{"step": "x", "split": "train", "loss": 1.0}',
    '{"step": 3, "split": "val"}',
    '{"step": 3, "split": "val", "loss": null}',
    '{"step": 3, "split": "train", "loss": 2.0, "lr": "high"}',
], ids=["step-text", "no-loss", "loss-null", "lr-text"])
def test_a_metrics_record_of_the_wrong_shape_is_named_before_training(world, capsys, request, record):
    """A metrics.jsonl line that is JSON but not a record the trainer writes (a step that is
    not an integer, a train or validation record without a loss, a loss or rate that is not
    a number: a hand edit, a tool that rewrote NaN as null) failed the resume with "'<='
    not supported between instances of 'str' and 'int'", or trained on and stopped at the
    next evaluation with KeyError: 'loss' (a traceback) or "must be real number, not
    NoneType". Now the resume is refused at once, naming the file and the line, and
    nothing is changed."""
    run = _copy(world, f"bad-metrics-{request.node.callspec.id}")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(record + "\n")
    line = len((run / "metrics.jsonl").read_text().splitlines())
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and f"metrics.jsonl is damaged: line {line} is not" in errors[0], err
    assert _files(run) == before


# ------------------------------------------------------------------ the lock

def test_a_finished_run_resumed_holds_no_lock_once_it_returns(world):
    """``Trainer(..., resume=True).run()`` on a run with nothing left to train returned with
    the run directory still locked (only a run that trained released it), so while the
    trainer lived (a notebook, headwise train telling its story) every other writer was
    refused: "is being written by another headwise process (pid N)", N being this one."""
    run = _copy(world, "finished-lock")
    t = Trainer(tiny_cfg(world["corpus"], run), resume=True, progress=False)
    assert t.run()  # nothing to train: the last validation
    other = Trainer(tiny_cfg(world["corpus"], run, steps=10), resume=True, progress=False, changes={"steps": 10})
    other.run()
    assert other.step == 10 and t.step == STEPS
