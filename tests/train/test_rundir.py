"""What a run may do to its directory: --overwrite removes only what headwise wrote,
a failed start leaves nothing behind, one writer at a time, and a resume keeps the
saved settings (issue 12, cases 1, 2, 4, 5 and 9)."""

import json
import os

import pytest
from tiny_runs import tiny_cfg, write_corpus

from headwise.train import Trainer
from headwise.train.rundir import MANIFEST, RunDir, RunDirError, RunLockedError


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt")


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ------------------------------------------------------------------ case 1
def test_overwrite_refuses_a_folder_with_a_foreign_run_json(corpus, tmp_path):
    """A folder holding a run.json that headwise did not write is not a run to delete."""
    u = tmp_path / "u"
    u.mkdir()
    (u / "run.json").write_text("{}")
    (u / "thesis.tex").write_text("x")
    with pytest.raises(RunDirError, match="not a headwise run directory"):
        Trainer(tiny_cfg(corpus, u), overwrite=True, progress=False)
    assert (u / "thesis.tex").read_text() == "x"
    assert (u / "run.json").read_text() == "{}"
    assert _tree(u) == ["run.json", "thesis.tex"]


def test_overwrite_removes_only_what_headwise_wrote(corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(corpus, run, steps=4), progress=False).run()
    (run / "notes.md").write_text("mine")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_bytes(b"\x89PNG")
    old_metrics = (run / "metrics.jsonl").read_text()
    t = Trainer(tiny_cfg(corpus, run, steps=4, seed=1), overwrite=True, progress=False)
    t.run()
    assert (run / "notes.md").read_text() == "mine"
    assert (run / "plots" / "a.png").read_bytes() == b"\x89PNG"
    assert (run / "metrics.jsonl").read_text() != old_metrics  # the new run's log
    assert not any(p.name.startswith(".headwise-replaced") for p in run.iterdir())  # the old run is gone
    assert json.loads((run / "run.json").read_text())["seed"] == 1


# ------------------------------------------------------------------ case 2
@pytest.mark.parametrize("where", ["cwd", "parent", "home"])
def test_overwrite_refuses_the_working_folder_its_parents_and_home(corpus, tmp_path, monkeypatch, where):
    run = tmp_path / "work" / "run"
    Trainer(tiny_cfg(corpus, run, steps=4), progress=False).run()
    (run / "corpus-copy.txt").write_text("keep me")
    if where == "cwd":
        monkeypatch.chdir(run)
        out = "."
    elif where == "parent":
        (run / "sub").mkdir()
        monkeypatch.chdir(run / "sub")
        out = ".."
    else:
        monkeypatch.setenv("HOME", str(run))
        out = str(run)
    before = _tree(run)
    with pytest.raises(RunDirError, match="working folder|home folder"):
        Trainer(tiny_cfg(corpus, out, steps=4), overwrite=True, progress=False)
    assert _tree(run) == before


# ------------------------------------------------------------------ case 9
def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_command(corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError):  # the corpus gives fewer blocks than one batch
        Trainer(tiny_cfg(corpus, out, batch_size=10_000), progress=False)
    assert not out.exists()
    Trainer(tiny_cfg(corpus, out, steps=4), progress=False).run()  # the corrected command


def test_a_failed_start_in_an_existing_empty_folder_keeps_the_folder(corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(ValueError):
        Trainer(tiny_cfg(corpus, out, batch_size=10_000), progress=False)
    assert out.is_dir() and _tree(out) == []


def test_a_failed_overwrite_puts_the_old_run_back(corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(corpus, run, steps=4), progress=False).run()
    (run / "notes.md").write_text("mine")
    before = {p: (run / p).read_bytes() for p in _tree(run) if (run / p).is_file() and p != ".lock"}
    with pytest.raises(ValueError):
        Trainer(tiny_cfg(corpus, run, batch_size=10_000), overwrite=True, progress=False)
    after = {p: (run / p).read_bytes() for p in _tree(run) if (run / p).is_file() and p != ".lock"}
    assert after == before
    Trainer(tiny_cfg(corpus, run, steps=8), resume=True, progress=False).run()  # still resumable


# ------------------------------------------------------------------ one writer
def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_not(corpus, tmp_path):
    run = tmp_path / "run"
    first = RunDir.open(run, resume=False, overwrite=False)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunDir.open(run, resume=False, overwrite=True)
    first.abort()  # nothing written: the folder goes again
    assert not run.exists()
    Trainer(tiny_cfg(corpus, run, steps=4), progress=False).run()
    # a lock file left by a killed process holds no flock: the next writer takes it
    (run / ".lock").write_text("pid 999999\n")
    Trainer(tiny_cfg(corpus, run, steps=8), resume=True, progress=False).run()


def test_out_that_is_a_file_is_refused(corpus, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("data")
    with pytest.raises(RunDirError, match="is an existing file"):
        Trainer(tiny_cfg(corpus, f), progress=False)
    assert f.read_text() == "data"


def test_the_manifest_lists_every_entry_a_run_writes(corpus, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_cfg(corpus, run, steps=4), progress=False).run()
    listed = set(json.loads((run / MANIFEST).read_text())["entries"])
    assert {p.name for p in run.iterdir()} <= listed


# ------------------------------------------------------------------ cases 4 and 5 (CLI)
def _cli(corpus, out, *extra):
    from tiny_runs import tiny_cli_args

    from headwise.cli import main

    return main(tiny_cli_args(corpus, out, *extra))


def test_resume_keeps_the_saved_target_unless_steps_or_time_is_given(corpus, tmp_path, capsys):
    from headwise.cli import main

    run = tmp_path / "run"
    assert _cli(corpus, run, "--steps", "4") == 0
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert json.loads((run / "run.json").read_text())["steps"] == 4  # not reset to the default 1000
    out = capsys.readouterr().out
    assert "validation {}" not in out and "loss" in out  # the finished run's last validation
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "8"]) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["steps"] == 8
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 8
    # a target below the step reached is refused, and run.json keeps its target
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "3"]) == 2
    assert "--steps 3 is below the step the run has reached (8)" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["steps"] == 8


def test_resume_target_is_checked_against_the_checkpoint_it_resumes_from(corpus, tmp_path, capsys):
    """A broken newest checkpoint is skipped, so the step reached is the intact one's."""
    from headwise.cli import main

    run = tmp_path / "run"
    assert _cli(corpus, run, "--steps", "4") == 0
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "8"]) == 0
    with open(run / "checkpoints" / "step-00000008" / "trainer.pt", "ab") as f:
        f.write(b"damage")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--steps", "6"]) == 0
    # --quiet hides the progress lines, not the warning
    assert "warning: checkpoint step-00000008 is broken" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6 and 8 not in steps  # trained on from step 4, the log trimmed to it
    assert json.loads((run / "run.json").read_text())["steps"] == 6


@pytest.mark.parametrize("flag,value,saved", [
    ("--objective", "clm", "'mlm'"),
    ("--model", "n_layers=3", "n_layers"),
    ("--lr", "0.5", "0.001"),
])
def test_resume_refuses_a_changed_setting_naming_it_and_the_saved_value(corpus, tmp_path, capsys, flag, value,
                                                                         saved):
    from headwise.cli import main

    run = tmp_path / "run"
    assert _cli(corpus, run, "--steps", "4") == 0
    before = (run / "run.json").read_text()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and saved in err and "Traceback" not in err
    assert (run / "run.json").read_text() == before


def test_resume_refuses_a_different_corpus(corpus, tmp_path, capsys):
    from headwise.cli import main

    run = tmp_path / "run"
    assert _cli(corpus, run, "--steps", "4") == 0
    other = write_corpus(tmp_path / "other.txt", seed=3)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--corpus", str(other)]) == 2
    assert "--corpus" in capsys.readouterr().err


def test_out_that_is_a_dangling_symlink_is_named(corpus, tmp_path):
    """It was "--out: File exists" (mkdir on the link); the link is left as it is."""
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "elsewhere" / "runs")
    with pytest.raises(RunDirError, match=r"is a symbolic link to .*elsewhere/runs, which does not exist"):
        Trainer(tiny_cfg(corpus, link), progress=False)
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
