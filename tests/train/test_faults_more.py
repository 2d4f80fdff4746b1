"""More faults a careful user meets: a run killed while a resume rewrites run.json, a
torn last line in metrics.jsonl (a kill or a full disk while it was being appended).
After each the run still resumes, and ends where an uninterrupted run ends."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import run_killed_while_writing, tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import Trainer
from headwise.train.checkpoint import checkpoint_report
from headwise.train.loop import NonFiniteError
from headwise.train.metrics import MetricsLog
from headwise.train.schedule import lr_lambda


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


def test_a_kill_while_a_resume_rewrites_run_json_leaves_the_run_resumable(world, capsys):
    """``--resume --steps 12`` rewrites run.json; killed meanwhile, it used to leave a
    truncated run.json, and every later ``--resume`` stopped with "run.json is damaged"
    though both checkpoints were intact. Now the old run.json stays whole."""
    run = _copy(world, "killed-rewriting-run-json")
    before = (run / "run.json").read_bytes()
    argv = ["train", "--out", str(run), "--resume", "--steps", "12", "--quiet", "--no-report"]
    done = run_killed_while_writing("run.json", argv)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (run / "run.json").read_bytes() == before
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["steps"] == 12
    # the same 12 steps as a run resumed without the kill
    twin = _copy(world, "resumed-to-12")
    assert main(["train", "--out", str(twin), "--resume", "--steps", "12", "--quiet", "--no-report"]) == 0
    a, b = _weights(run, 12), _weights(twin, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_torn_last_metrics_line_does_not_block_the_resume(world, capsys):
    """A run killed (or out of disk) while appending to metrics.jsonl left half a line;
    ``--resume`` then stopped with "Unterminated string starting at: line 1 column 22".
    Now the torn line is dropped and the run resumes, its log the uninterrupted one's."""
    run = _copy(world, "torn-metrics")
    shutil.rmtree(run / "checkpoints" / "step-00000008")  # killed in step 9's log write...
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "split": "tr')  # ...after the checkpoint of step 8: say at step 4
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0, capsys.readouterr().err
    assert _rows(run) == _rows(world["ref"])
    a, b = _weights(run, 8), _weights(world["ref"], 8)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_damaged_metrics_line_elsewhere_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2}\nnot json\n{"step": 4}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl is damaged: line 2 is not a JSON record"):
        MetricsLog(path).read()
    path.write_text('{"step": 2}\n{"step": 4, "lo')
    assert MetricsLog(path).read() == [{"step": 2}]


def _poison_step(trainer: Trainer, step: int) -> None:
    """Make the loss of optimizer step ``step`` (0-based) NaN, as a diverging run's."""
    forward = trainer.forward

    def poisoned(*a, **k):
        out = forward(*a, **k)
        if trainer.step == step:
            out.loss = out.loss * float("nan")
        return out

    trainer.forward = poisoned


@pytest.mark.parametrize("at", [6, 4])  # 4: right after the checkpoint of step 4, which it re-saves
def test_a_diverged_run_saves_the_state_before_the_step_with_its_random_streams(world, at):
    """A non-finite loss saves "the last good state"; it used to save the random streams
    as the failing step had left them (overwriting the checkpoint of that step when there
    was one), so a resume from it no longer replayed the run. Now they are those the step
    started from: a resume ends exactly where the uninterrupted run ends."""
    run = world["root"] / f"diverged-at-{at}"
    t = Trainer(tiny_cfg(world["corpus"], run), progress=False)
    _poison_step(t, at)
    with pytest.raises(NonFiniteError, match=f"saved the last good state to .*step-{at:08d}"):
        t.run()
    del t
    Trainer(tiny_cfg(world["corpus"], run), resume=True, progress=False).run()
    a, b = _weights(run, 8), _weights(world["ref"], 8)
    assert all(torch.equal(a[k], b[k]) for k in a)


# kill -9 in the middle of a save: after trainer.pt of step 8 is written / while retention
# deletes the oldest folder (one file gone)
_KILL_IN_SAVE = {
    "writing": """
        import headwise.train.checkpoint as ck
        real = ck.torch.save
        def save(obj, f, *a, **k):
            real(obj, f, *a, **k)
            if "step-00000008" in str(f):
                os.kill(os.getpid(), signal.SIGKILL)
        ck.torch.save = save
    """,
    "removing": """
        import headwise.train.checkpoint as ck
        def rmtree(path, *a, **k):
            next(p for p in Path(path).iterdir() if p.name == "manifest.json").unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        ck.shutil.rmtree = rmtree
    """,
}


@pytest.mark.parametrize("moment", sorted(_KILL_IN_SAVE))
def test_a_kill_while_saving_leaves_no_half_folder_behind(world, moment):
    """A save killed while writing left its temporary folder (as large as a checkpoint)
    in checkpoints/ for good, one more for every such kill; one killed while retention
    deleted a folder left a half checkpoint that ``headwise check`` reported as [FAIL].
    Now removals rename the folder away first, and the next save sweeps the leftovers."""
    run = world["root"] / f"killed-{moment}"
    args = tiny_cli_args(world["corpus"], run, "--checkpoint-every", "2", "--no-report")
    code = (f"import os, signal, sys\nfrom pathlib import Path\n{textwrap.dedent(_KILL_IN_SAVE[moment])}\n"
            f"from headwise.cli import main\nmain({args!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert all(problem is None for _, problem in checkpoint_report(run)), checkpoint_report(run)
    t = Trainer(tiny_cfg(world["corpus"], run, checkpoint_every=2), resume=True, progress=False)
    t.run()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000006", "step-00000008"]
    a, b = _weights(run, 8), _weights(world["ref"], 8)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_sweep_leaves_a_users_hidden_copy_of_a_checkpoint(world):
    run = _copy(world, "users-hidden-copy")
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step-00000008", ckpts / ".step-00000008.backup01")
    t = Trainer(tiny_cfg(world["corpus"], run, steps=12), resume=True, progress=False, changes={"steps": 12})
    t.run()
    assert (ckpts / ".step-00000008.backup01" / "model.safetensors").is_file()


def test_max_time_reached_at_a_checkpoint_step_saves_it_once(world, tmp_path):
    """It was written twice, the second copy replacing the first (a model's save time
    doubled, and a kill in between lost the checkpoint from view)."""
    t = Trainer(tiny_cfg(world["corpus"], tmp_path / "run", checkpoint_every=1, max_time=1e-9), progress=False)
    saved = []
    save = t.save
    t.save = lambda: saved.append(t.step) or save()
    t.run()
    assert saved == [1]


def test_ctrl_c_is_one_line_and_the_run_resumes_exactly(world):
    """Ctrl-C used to end in a long traceback (from wherever the step was, matplotlib's
    insides included) that did not say the run could go on. Now: one line naming the last
    checkpoint and the resume command, status 130; the resume ends as the reference."""
    run = world["root"] / "ctrl-c"
    args = tiny_cli_args(world["corpus"], run, "--no-report")
    patch = textwrap.dedent("""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # (ignored where the tests run in background)
        import headwise.train.loop as loop
        step = loop.Trainer.train_step
        def interrupted(self):
            if self.step == 6:
                os.kill(os.getpid(), signal.SIGINT)
            return step(self)
        loop.Trainer.train_step = interrupted
    """)
    code = (f"import os, signal, sys\n{patch}\nfrom headwise.cli import main\nsys.exit(main({args!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ})
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"headwise train: interrupted; its last checkpoint is step-00000004: continue the run with "
        f"headwise train --out {run} --resume"]
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    a, b = _weights(run, 8), _weights(world["ref"], 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(run) == _rows(world["ref"])


# what the writers really raise on a full disk (measured on a full tmpfs): neither is an OSError
_FULL_DISK = {
    "model.safetensors": Exception("Error while serializing: I/O error: No space left on device (os error 28)"),
    "trainer.pt": RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
}


@pytest.mark.parametrize("fname", sorted(_FULL_DISK))
def test_a_real_full_disk_is_a_message_not_a_traceback(world, capsys, monkeypatch, fname):
    """A full disk stopped the run with the library's traceback: safetensors and torch.save
    raise no OSError (only the OSError a test made up was recognised). Now it is the one
    line that says the previous checkpoint is intact, and the run resumes once there is room."""
    import headwise.train.checkpoint as ck

    run = world["root"] / f"full-{fname}"
    real_model, real_torch = ck.save_model, ck.torch.save
    room = {"free": 10 << 20}
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda path: SimpleNamespace(free=room["free"]))

    def full(real):
        def write(obj, f, *a, **k):
            if "step-00000008" in str(f) and str(f).endswith(fname):
                room["free"] = 0
                raise _FULL_DISK[fname]
            return real(obj, f, *a, **k)
        return write

    monkeypatch.setattr(ck, "save_model", full(real_model))
    monkeypatch.setattr(ck.torch, "save", full(real_torch))
    assert main(tiny_cli_args(world["corpus"], run, "--no-report")) == 2
    err = capsys.readouterr().err
    assert "the disk is full: could not write checkpoint step-00000008" in err, err
    assert "step-00000004 is intact" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    a, b = _weights(run, 8), _weights(world["ref"], 8)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_whose_checkpoints_were_deleted_is_refused(world, capsys):
    """Checkpoints removed to free the disk: --resume used to start the run again from step
    0, silently under --quiet ("no checkpoint was written yet" was only a progress line),
    cutting metrics.jsonl down to nothing. Now it is refused and nothing is changed."""
    run = _copy(world, "checkpoints-deleted")
    for ckpt in (run / "checkpoints").glob("step-*"):
        shutil.rmtree(ckpt)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "12", "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "wrote checkpoints" in err and "'step-00000008') but none is left" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_a_quiet_resume_that_starts_again_says_so(world, tmp_path, capsys):
    """Killed before its first checkpoint: the resume starts again from step 0, and says
    so on stderr even under --quiet."""
    run = tmp_path / "no-checkpoint-yet"
    t = Trainer(tiny_cfg(world["corpus"], run), progress=False)
    t.train_step()
    del t
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "warning: no checkpoint was written yet: --resume starts the run again from step 0" in err


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_resume_with_more_steps_takes_its_own_schedule_from_the_first_step(world, tmp_path, optimizer):
    """The optimizer's saved learning rates (the old schedule's at that step) drove the
    first resumed step; the new --steps's schedule took over only after it."""
    run = tmp_path / "run"
    Trainer(tiny_cfg(world["corpus"], run, optimizer=optimizer), progress=False).run(until_step=4)
    t = Trainer(tiny_cfg(world["corpus"], run, optimizer=optimizer, steps=16), resume=True, progress=False,
                changes={"steps": 16})
    ratio = lr_lambda(4, warmup=2, total=16)
    assert ratio != lr_lambda(4, warmup=2, total=8)
    assert [g["lr"] for g in t.optimizer.param_groups] == pytest.approx(
        [base * ratio for base in t.scheduler.base_lrs])
