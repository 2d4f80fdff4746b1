"""Faults probed in training runs: a file-size limit while saving, damaged run files, kills mid-write."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import refused_line, run_killed_while_writing, tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import Trainer
from headwise.train.checkpoint import checkpoint_report
from headwise.train.metrics import MetricsLog

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


# ------------------------------------------------------------------ the story's files
def _told(world, name: str) -> Path:
    """A copy of the reference run whose story was told with --no-report (summary.txt, story.json)."""
    run = _copy(world, name)
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    assert (run / "story.json").is_file() and (run / "summary.txt").is_file()
    return run


@pytest.mark.parametrize("text", ["[1, 2]", '"story"', "null"])
def test_a_story_record_that_is_no_json_object_is_told_again(world, capsys, text):
    """A story.json that is JSON but no object (a foreign file, a hand edit) stopped a finished
    run's --resume with "AttributeError: 'list' object has no attribute 'get'" (a traceback);
    now it counts as no record: the story is told again and the record rewritten."""
    run = _told(world, f"story-{len(text)}")
    (run / "story.json").write_text(text)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "validation" in out and "next:" in out
    assert json.loads((run / "story.json").read_text())["key"]["step"] == STEPS


def test_a_kill_while_the_summary_is_written_never_reprints_half_a_summary(world, capsys):
    """A finished run told with --no-report, then told again with the report (a --resume
    without --no-report) and killed while summary.txt was being rewritten: the next
    ``--resume --no-report`` found story.json still naming the --no-report story and
    printed the half-written summary.txt as the run's summary. Now the summary is
    replaced whole or not at all, and the record of what it tells is dropped first."""
    run = _told(world, "story-killed")
    argv = ["train", "--out", str(run), "--resume", "--quiet"]
    done = run_killed_while_writing("summary.txt", argv)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "inspect further" in out, out  # the summary's last line: the whole of it
    assert (run / "summary.txt").read_text().rstrip("\n").endswith(out.rstrip("\n").splitlines()[-1])


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


# ------------------------------------------------------------------ checkpoints gone
@pytest.mark.parametrize("how", ["folder-removed", "folder-emptied"])
def test_a_resume_whose_checkpoints_folder_was_removed_is_refused(world, capsys, how):
    """The whole checkpoints folder removed to free the disk (``rm -r run/checkpoints``, its
    ``latest`` with it): --resume said "no checkpoint was written yet: --resume starts the
    run again from step 0", cut metrics.jsonl back to nothing and trained the run again.
    The log holds steps past the first checkpoint, which only a saved run gets to, so it is
    now refused as a run whose checkpoints were deleted, and nothing is changed."""
    import shutil

    run = _copy(world, f"checkpoints-{how}")
    shutil.rmtree(run / "checkpoints")
    if how == "folder-emptied":
        (run / "checkpoints").mkdir()
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "12", "--quiet", "--no-report"]) == 2
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if "error:" in x]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "--resume refused" in errors[0] and "metrics.jsonl logs step 8" in errors[0], errors[0]
    assert "but none is left" in errors[0] and "--overwrite" in errors[0], errors[0]
    assert "starts the run again" not in err
    assert _files(run) == before


def test_a_run_killed_while_saving_its_first_checkpoint_still_starts_again(world, capsys):
    """The other side of the refusal above: a run whose log reaches only its first
    checkpoint's step (killed while saving it) has nothing to lose, and starts again."""
    import shutil

    run = _copy(world, "first-save-killed")
    shutil.rmtree(run / "checkpoints")
    rows = [r for r in (run / "metrics.jsonl").read_text().splitlines() if json.loads(r)["step"] <= 4]
    (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    assert "starts the run again from step 0" in capsys.readouterr().err
    assert _same_weights(run, world["ref"])


# ------------------------------------------------------------------ a full log
def _limited_run(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """``headwise ARGV`` in a process that may write no file past ``limit`` bytes (RLIMIT_FSIZE)."""
    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "headwise.cli", *argv], capture_output=True, text=True,
                          preexec_fn=limited, timeout=300)


@pytest.mark.parametrize("at", ["resume", "append"])
def test_no_room_for_the_metrics_log_names_it(world, at):
    """A metrics.jsonl that can grow no more (a full disk, a file size limit) stopped the run
    with "headwise train: error: [Errno 27] File too large", naming no file: a write's OS
    error carries no file name. Now the line names metrics.jsonl, the log keeps every
    whole record it had, and the run resumes once there is room."""
    run = _copy(world, f"log-full-{at}")
    log = run / "metrics.jsonl"
    records = log.read_text()
    if at == "resume":  # a long log: the resume's rewrite of it is the first file past the limit
        log.write_text(records * 40)
        limit = log.stat().st_size - 100
    else:  # the next record of step 10 is the one past the limit
        limit = log.stat().st_size + 20
    before = MetricsLog(log).read()
    argv = ["train", "--out", str(run), "--resume", "--steps", "12", "--quiet", "--no-report"]
    done = _limited_run(argv, limit)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if "error:" in x]
    assert len(errors) == 1 and f"{log}: File too large" in errors[0], done.stderr
    assert MetricsLog(log).read()[: len(before)] == before
    assert main(argv) == 0
    assert MetricsLog(log).read()[-1]["step"] == 12


# ------------------------------------------------------------------ --overwrite with the run's own tokenizer
def test_overwrite_may_start_again_with_the_runs_own_tokenizer(world, capsys):
    """``--overwrite --tokenizer RUN/tokenizer.json``: train the run
    again from scratch with its own tokenizer. --overwrite moved the old run's files aside
    before the tokenizer was read, so it failed with "tokenizer path 'RUN/tokenizer.json'
    does not exist" about a file that was there. Now the tokenizer is read first, and the
    new run trains with it (the same as with a copy of it elsewhere)."""
    run = _copy(world, "overwrite-own-tokenizer")
    tokenizer = (run / "tokenizer.json").read_text()
    argv = tiny_cli_args(world["corpus"], run, "--no-report", "--overwrite")
    i = argv.index("--vocab-size")
    del argv[i:i + 2]  # (the tokenizer file decides)
    argv += ["--tokenizer", str(run / "tokenizer.json")]
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "tokenizer.json").read_text() == tokenizer
    assert _same_weights(run, world["ref"])
    assert not [p.name for p in run.iterdir() if p.name.startswith(".headwise-replaced")]


def test_a_tokenizer_folder_is_named_as_a_folder(world, capsys):
    """``--tokenizer RUN`` (a run's folder, not its tokenizer.json) was refused with
    "--tokenizer 'RUN': no such file", about a folder that is there; now the line says it
    is a folder and names the file to give."""
    argv = tiny_cli_args(world["corpus"], world["root"] / "tokenizer-folder", "--no-report")
    i = argv.index("--vocab-size")
    del argv[i:i + 2]
    line = refused_line([*argv, "--tokenizer", str(world["ref"])], capsys)
    assert "is a folder" in line and str(world["ref"] / "tokenizer.json") in line, line
    assert "no such file" not in line
    assert not (world["root"] / "tokenizer-folder").exists()


def test_no_room_for_the_loss_curve_names_it(world):
    """The loss curve (loss.png, redrawn at each evaluation) past a file size limit stopped the
    run with "headwise train: error: [Errno 27] File too large", naming no file; now the
    line names loss.png, and the run resumes once there is room."""
    run = world["root"] / "no-room-loss-png"
    limit = (world["ref"] / "loss.png").stat().st_size // 2
    assert all(p.stat().st_size < limit for p in world["ref"].iterdir() if p.is_file() and p.name != "loss.png")
    done = _limited_run(tiny_cli_args(world["corpus"], run, "--no-report"), limit)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [x for x in done.stderr.splitlines() if "error:" in x]
    assert len(errors) == 1 and f"{run / 'loss.png'}: File too large" in errors[0], done.stderr
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-report"]) == 0
    assert _same_weights(run, world["ref"])


def test_a_resume_on_a_machine_without_the_runs_device_names_run_json(world, capsys):
    """A run trained on a GPU (run.json: device 'cuda') resumed on a machine without one was
    refused with "device 'cuda': CUDA is not available ...", a device the command never
    named; the line now says run.json set it and that --device may change it on a resume
    (as eval, generate and check say), and ``--resume --device cpu`` goes on."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    run = _copy(world, "resume-without-cuda")
    settings = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**settings, "device": "cuda"}, indent=2) + "\n")
    before = _files(run)
    line = refused_line(["train", "--out", str(run), "--resume", "--steps", "10", "--quiet", "--no-report"], capsys)
    assert "CUDA is not available" in line and f"{run / 'run.json'} says device 'cuda'" in line, line
    assert "--device" in line, line
    assert _files(run) == before
    assert main(["train", "--out", str(run), "--resume", "--steps", "10", "--device", "cpu", "--quiet",
                 "--no-report"]) == 0


# ------------------------------------------------------------------ a user's file in a checkpoint folder
def test_retention_keeps_a_checkpoint_folder_holding_a_users_file(world, capsys):
    """A file of the user's put in a checkpoint folder (``headwise eval RUN >
    RUN/checkpoints/step-00000004/eval.json``) was deleted with the folder when retention
    dropped that checkpoint (keep_checkpoints=2) at a later save. Now such a folder is kept,
    with a warning naming the file, and the folders of headwise's files alone still go."""
    run = _copy(world, "users-file-in-checkpoint")
    (run / "checkpoints" / "step-00000004" / "eval.json").write_text('{"loss": 4.2}')
    capsys.readouterr()
    argv = ["train", "--out", str(run), "--resume", "--steps", "16", "--quiet", "--no-report"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (run / "checkpoints" / "step-00000004" / "eval.json").read_text() == '{"loss": 4.2}'
    assert [name for name, problem in checkpoint_report(run) if problem is None] == [
        "step-00000016", "step-00000012", "step-00000004"]  # step-8 went; step-4 stays
    assert "step-00000004" in err and "eval.json" in err, err


def test_overwrite_keeps_what_the_user_put_in_the_checkpoints_folder(world, capsys):
    """``--overwrite`` moved the whole checkpoints folder aside and deleted it, with a copy the
    user kept there (``checkpoints/step-old``, which no reader takes for a checkpoint) and a
    file of theirs: both gone without a word. Now only the checkpoints and their pointer go;
    the user's entries stay, and are named."""
    run = _copy(world, "overwrite-users-checkpoint-copy")
    import shutil

    shutil.copytree(run / "checkpoints" / "step-00000004", run / "checkpoints" / "step-old")
    (run / "checkpoints" / "README").write_text("the good one is step-old")
    before = _files(run)
    # an overwrite that fails at its start puts the old run back as it was
    refused_line([*tiny_cli_args(world["corpus"], run, "--no-report", "--overwrite"), "--batch-size", "100000"],
                 capsys)
    assert _files(run) == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".headwise-replaced")]
    assert main(tiny_cli_args(world["corpus"], run, "--no-report", "--overwrite")) == 0
    out = capsys.readouterr().out
    assert (run / "checkpoints" / "README").read_text() == "the good one is step-old"
    assert (run / "checkpoints" / "step-old" / "model.safetensors").read_bytes() == (
        world["ref"] / "checkpoints" / "step-00000004" / "model.safetensors").read_bytes()
    assert "step-old" in out and "README" in out, out
    assert [name for name, problem in checkpoint_report(run) if problem is None] == ["step-00000008", "step-00000004"]
    assert _same_weights(run, world["ref"])
    assert not [p.name for p in run.iterdir() if p.name.startswith(".headwise-replaced")]


def test_a_resume_refusing_no_sanity_checks_names_the_flag_given(world, capsys):
    """``--resume --no-sanity-checks`` on a run saved with its sanity checks on was refused
    naming "--sanity-checks False", a flag that does not exist; the line now names
    --no-sanity-checks, the flag given."""
    run = _copy(world, "resume-no-sanity-checks")
    settings = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**settings, "sanity_checks": True}, indent=2) + "\n")
    line = refused_line(["train", "--out", str(run), "--resume", "--no-sanity-checks", "--quiet", "--no-report"],
                        capsys)
    assert "--no-sanity-checks" in line and "--sanity-checks False" not in line, line


def test_a_kill_while_the_report_is_rewritten_leaves_it_to_be_written_again(world, capsys):
    """report.html removed from a finished, told run and told again (``--resume``), killed
    while report.html was being written: story.json still named that story, so every
    later ``--resume`` re-printed the summary and left the half-written report.html as
    it was. Now the record is dropped before the story is told again, and the next
    ``--resume`` writes the report whole."""
    run = _copy(world, "report-killed")
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    (run / "report.html").unlink()
    argv = ["train", "--out", str(run), "--resume", "--quiet"]
    done = run_killed_while_writing("report.html", argv)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not (run / "report.html").read_text().rstrip().endswith("</html>")  # half of it
    capsys.readouterr()
    assert main(argv) == 0
    assert (run / "report.html").read_text().rstrip().endswith("</html>")
