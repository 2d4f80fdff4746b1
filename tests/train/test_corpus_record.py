"""A resume on a corpus whose text changed since the run started is refused: it used to
go on silently with other blocks and another validation split (run.json records only the
corpus's name). The run's corpus.json records the content hash it started from."""

import json

import pytest
from tiny_runs import tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train.build import CORPUS_RECORD


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    assert main(tiny_cli_args(corpus, out, "--steps", "4", "--no-report")) == 0
    return corpus, out


def _resume(out, *extra):
    return main(["train", "--out", str(out), "--resume", "--quiet", "--no-report", *extra])


def test_a_changed_corpus_is_refused_on_resume_and_nothing_is_changed(run, capsys):
    corpus, out = run
    original = corpus.read_text()
    corpus.write_text(original + "\nthe cat sat on the red mat.")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    assert _resume(out, "--steps", "8") == 2
    err = capsys.readouterr().err
    assert f"the corpus {str(corpus)!r} has changed since this run started" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    corpus.write_text(original)  # put back as it was: the run goes on
    assert _resume(out, "--steps", "8") == 0
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) == 8


def test_a_run_without_a_record_gets_one_on_resume(run):
    corpus, out = run
    saved = (out / CORPUS_RECORD).read_text()
    (out / CORPUS_RECORD).unlink()  # a run of an earlier headwise
    assert _resume(out, "--steps", "6") == 0
    assert (out / CORPUS_RECORD).read_text() == saved


def test_a_damaged_record_is_named(run, capsys):
    corpus, out = run
    (out / CORPUS_RECORD).write_text("[1, 2]")
    capsys.readouterr()
    assert _resume(out, "--steps", "6") == 2
    assert f"{CORPUS_RECORD} is damaged" in capsys.readouterr().err


def test_overwrite_with_another_corpus_records_the_new_one(run, tmp_path):
    """--overwrite removes the replaced run's record with it (a run entry): the new run
    is not compared with the old corpus."""
    corpus, out = run
    other = write_corpus(tmp_path / "other.txt", seed=3)
    assert main(tiny_cli_args(other, out, "--steps", "2", "--warmup", "1", "--no-report", "--overwrite")) == 0
    assert json.loads((out / CORPUS_RECORD).read_text())["corpus"] == str(other)


def test_an_out_inside_the_corpus_folder_is_refused(tmp_path, monkeypatch, capsys):
    """The corpus folder is read with its subfolders: a run inside it trained, then read
    its own metrics.jsonl and summary.txt as corpus text (a resume failed on them). Now it
    is refused before anything is written; a hidden folder in it (skipped) is fine."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "docs"
    folder.mkdir()
    write_corpus(folder / "corpus.txt")
    assert main(tiny_cli_args(folder, folder / "run", "--steps", "2", "--warmup", "1", "--no-report")) == 2
    err = capsys.readouterr().err
    assert f"--out {str(folder / 'run')!r} is inside the --corpus folder {str(folder)!r}" in err
    assert sorted(p.name for p in folder.iterdir()) == ["corpus.txt"]
    assert main(tiny_cli_args(folder, folder / ".runs" / "run", "--steps", "2", "--warmup", "1", "--no-report")) == 0
    assert _resume(folder / ".runs" / "run", "--steps", "4") == 0
