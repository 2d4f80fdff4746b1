"""Fault injection: kill -9 while training and while saving, damaged and deleted
checkpoint files, a full disk, two writers on one run. After each fault the run loses
nothing beyond its last checkpoint, no user file is touched, and the resumed run ends
bit-identical to one that was never interrupted (issue 12)."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import Trainer
from headwise.train.checkpoint import CheckpointError, DiskFullError, checkpoint_report

STEPS = 8  # tiny_cfg: checkpoints at 4 and 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus, a user's file beside the runs, and the uninterrupted reference run."""
    root = tmp_path_factory.mktemp("faults")
    os.environ["HEADWISE_CACHE"] = str(root / "cache")
    corpus = write_corpus(root / "corpus.txt")
    user = root / "thesis.tex"
    user.write_text("months of work")
    ref = root / "reference"
    Trainer(tiny_cfg(corpus, ref), progress=False).run()
    return {"root": root, "corpus": corpus, "user": user, "ref": ref}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"))


def _train_rows(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]


def _assert_same_as_reference(world, run: Path) -> None:
    a, b = _final_weights(world["ref"]), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _train_rows(run) == _train_rows(world["ref"])
    assert world["user"].read_text() == "months of work"


def _resume(world, run: Path) -> Trainer:
    t = Trainer(tiny_cfg(world["corpus"], run), resume=True, progress=False)
    t.run()
    return t


# ------------------------------------------------------------------ kill -9
# each script makes the training process SIGKILL itself at one moment
_KILL_AT = {
    # during training: in the middle of step N's backward
    "training": """
        import headwise.train.loop as loop
        orig = loop.Trainer.train_step
        def step(self):
            if self.step == {n}:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self)
        loop.Trainer.train_step = step
    """,
    # while saving: trainer.pt half written, nothing renamed yet
    "saving-files": """
        import headwise.train.checkpoint as ck
        orig = ck.torch.save
        def save(obj, f, *a, **k):
            if "step-{n:08d}" in str(f):
                Path(f).write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(obj, f, *a, **k)
        ck.torch.save = save
    """,
    # while saving: the folder renamed into place, 'latest' not yet replaced
    "saving-pointer": """
        import headwise.train.checkpoint as ck
        orig = Path.write_text
        def write_text(self, data, *a, **k):
            if self.name == ".latest.tmp" and "{n:08d}" in data:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(self, data, *a, **k)
        Path.write_text = write_text
    """,
    # while saving: retention deleting the oldest folder
    "retention": """
        import headwise.train.checkpoint as ck
        orig = ck.shutil.rmtree
        def rmtree(path, *a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        ck.shutil.rmtree = rmtree
    """,
}


def _run_killed(world, run: Path, moment: str, n: int) -> subprocess.CompletedProcess:
    patch = textwrap.dedent(_KILL_AT[moment]).format(n=n)
    args = tiny_cli_args(world["corpus"], run, "--checkpoint-every", "2", "--eval-every", "4")
    code = (f"import os, signal, sys\nfrom pathlib import Path\n{patch}\n"
            f"from headwise.cli import main\nsys.exit(main({args!r}))\n")
    env = {**os.environ, "HEADWISE_CACHE": os.environ["HEADWISE_CACHE"]}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("moment,n", [
    ("training", random.Random(1).randint(2, STEPS - 1)),
    ("saving-files", 4),
    ("saving-pointer", 6),
    ("retention", 6),
])
def test_kill_9_loses_nothing_beyond_the_last_checkpoint(world, moment, n):
    run = world["root"] / f"killed-{moment}"
    done = _run_killed(world, run, moment, n)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    # what survived: a checkpoint at most 2 steps (one checkpoint interval) behind
    intact = [name for name, problem in checkpoint_report(run) if problem is None]
    assert intact, checkpoint_report(run)
    newest = int(intact[0].split("-")[1])
    assert newest == {"training": n // 2 * 2, "saving-files": n - 2}.get(moment, n)
    t = Trainer(tiny_cfg(world["corpus"], run, checkpoint_every=2), resume=True, progress=False)
    assert t.step == newest
    t.run()
    a, b = _final_weights(world["ref"]), _final_weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert world["user"].read_text() == "months of work"


def test_kill_9_at_a_random_wall_clock_moment(world):
    """An external SIGKILL at an unplanned moment (once training is under way), then a
    resume that ends where the uninterrupted run ends."""
    run = world["root"] / "killed-wallclock"
    args = tiny_cli_args(world["corpus"], run, "--checkpoint-every", "2")
    proc = subprocess.Popen([sys.executable, "-m", "headwise.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0:
            break
        time.sleep(0.05)
    time.sleep(random.Random(2).uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    report = checkpoint_report(run)
    assert all(problem is None for _, problem in report), report  # renames: never a half checkpoint
    t = Trainer(tiny_cfg(world["corpus"], run, checkpoint_every=2), resume=True, progress=False)
    assert t.step == (int(report[0][0].split("-")[1]) if report else 0)
    t.run()
    _assert_same_as_reference(world, run)


# ------------------------------------------------------------------ damaged files
def _damaged_copy(world, name: str) -> Path:
    """A copy of the finished reference run (checkpoints at steps 4 and 8) to damage."""
    run = world["root"] / name
    shutil.copytree(world["ref"], run)
    return run


def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("fname", ["model.safetensors", "trainer.pt", "manifest.json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_intact_one(world, capsys, fname, damage):
    run = _damaged_copy(world, f"damaged-{fname}-{damage}")
    newest = run / "checkpoints" / f"step-{STEPS:08d}"
    _truncate(newest / fname) if damage == "truncate" else (newest / fname).unlink()
    if damage == "truncate" and fname != "manifest.json":  # (the commands take a while: two of the six)
        # check names the broken file and fails
        assert main(["check", str(run)]) == 1
        out = capsys.readouterr().out
        assert f"[FAIL] checkpoint step-{STEPS:08d}" in out and fname in out
        assert "[ok] checkpoint step-00000004" in out
        # eval uses the intact one and says so
        assert main(["eval", str(run), "--batches", "1"]) == 0
        assert "using step-00000004" in capsys.readouterr().err
    # resume says which it took, redoes steps 5..8 and ends where the reference ends
    t = Trainer(tiny_cfg(world["corpus"], run), resume=True, progress=False)
    assert t.step == 4
    assert any("step-00000008 is broken" in n for n in t.resume_notes)
    assert any("resuming from step-00000004" in n for n in t.resume_notes)
    t.run()
    _assert_same_as_reference(world, run)


@pytest.mark.parametrize("manifest", [
    '{"step": 8, "files": []}',  # files not an object
    '{"step": 8, "files": {"model.safetensors": 5, "trainer.pt": 6}}',  # entries not {bytes, sha256}
    '{"step": 8, "files": {"model.safetensors": {"bytes": "1", "sha256": "x"}, "trainer.pt": {}}}',
    '{"step": 8, "files": {}}',  # lists no file
    b"\xff\xfe not utf-8",
])
def test_a_manifest_of_the_wrong_shape_is_a_broken_checkpoint_not_a_traceback(world, capsys, manifest):
    """check reports it as [FAIL] (status 1), eval falls back to the intact checkpoint."""
    run = _damaged_copy(world, f"manifest-{abs(hash(manifest))}")
    path = run / "checkpoints" / f"step-{STEPS:08d}" / "manifest.json"
    path.write_bytes(manifest if isinstance(manifest, bytes) else manifest.encode())
    assert main(["check", str(run)]) == 1
    out, err = capsys.readouterr()
    assert f"[FAIL] checkpoint step-{STEPS:08d}: manifest.json is" in out and "Traceback" not in err
    assert "[ok] checkpoint step-00000004" in out
    assert main(["eval", str(run), "--batches", "1"]) == 0
    assert "using step-00000004" in capsys.readouterr().err


def test_a_folder_not_named_step_n_is_no_checkpoint(world, capsys):
    """checkpoints/step-old (a copy someone kept): resume used to stop with "invalid literal
    for int() with base 10: 'old'"; now it is not read, and retention leaves it."""
    run = _damaged_copy(world, "foreign-step-folder")
    shutil.copytree(run / "checkpoints" / f"step-{STEPS:08d}", run / "checkpoints" / "step-old")
    _truncate(run / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")  # resume from step 4
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "step-old" / "model.safetensors").is_file()
    assert [name for name, _ in checkpoint_report(run)] == [f"step-{STEPS:08d}", "step-00000004"]


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    for name in ("step-99999999", "step-100000000", "step-00000004"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert [name for name, _ in checkpoint_report(tmp_path)] == ["step-100000000", "step-99999999", "step-00000004"]


def test_every_checkpoint_broken_refuses_to_resume_and_changes_nothing(world, capsys):
    run = _damaged_copy(world, "all-broken")
    for ck in (run / "checkpoints").glob("step-*"):
        _truncate(ck / "model.safetensors")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(CheckpointError, match="none is intact.*model.safetensors has"):
        Trainer(tiny_cfg(world["corpus"], run), resume=True, progress=False)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    # through the CLI: exit 2, a message, no traceback; eval and inspect the same
    for argv in (["train", "--out", str(run), "--resume", "--quiet"], ["eval", str(run)],
                 ["inspect", str(run), "--text", str(world["corpus"]), "--out", str(run.parent / "insp")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "no intact checkpoint" in err or "none is intact" in err, err
        assert "Traceback" not in err


# ------------------------------------------------------------------ full disk
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(world, monkeypatch):
    run = world["root"] / "full-disk"
    t = Trainer(tiny_cfg(world["corpus"], run), progress=False)
    t.run(until_step=4)
    real_save = torch.save

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("headwise.train.checkpoint.torch.save", full)
    with pytest.raises(DiskFullError, match="disk is full.*step-00000004 is intact"):
        t.run()
    monkeypatch.setattr("headwise.train.checkpoint.torch.save", real_save)
    assert [name for name, problem in checkpoint_report(run) if problem is None] == ["step-00000004"]
    assert not any(p.name.startswith(".") for p in (run / "checkpoints").iterdir() if p.is_dir())
    del t
    _resume(world, run)
    _assert_same_as_reference(world, run)


def test_a_full_disk_through_the_cli_is_a_message(world, capsys, monkeypatch):
    run = world["root"] / "full-disk-cli"

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("headwise.train.checkpoint.torch.save", full)
    code = main(tiny_cli_args(world["corpus"], run))
    err = capsys.readouterr().err
    assert code != 0 and "disk is full" in err and "Traceback" not in err


# ------------------------------------------------------------------ two writers
def test_two_concurrent_trains_on_one_run_directory(world, capsys):
    run = world["root"] / "two-writers"
    args = tiny_cli_args(world["corpus"], run, "--steps", "30", "--checkpoint-every", "2")
    first = subprocess.Popen([sys.executable, "-m", "headwise.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None and not (run / "config.json").is_file():
        time.sleep(0.05)
    assert first.poll() is None, first.stderr.read()
    for extra in (["--resume"], ["--overwrite"]):
        code = main(["train", "--out", str(run), "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {first.pid}" in err and "Traceback" not in err, err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert all(problem is None for _, problem in checkpoint_report(run))
    assert world["user"].read_text() == "months of work"
