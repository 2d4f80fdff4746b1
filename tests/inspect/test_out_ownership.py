"""``headwise inspect --out DIR --overwrite`` replaces only the report files headwise
wrote (listed in the folder's manifest, as ``headwise train`` keeps one for a run
directory); a file of a report's name that headwise did not write is refused, naming
it, and left as it is. On a tiny randomly initialised run and three lines of text."""

import json

import pytest
from tiny_runs import two_step_mlm_run

from headwise.cli import main
from headwise.inspect.report import REPORT_FILES
from headwise.train.rundir import MANIFEST


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A headwise MLM run directory after 2 steps."""
    with two_step_mlm_run(tmp_path_factory.mktemp("own_run")) as run:
        yield run


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "s.txt"
    path.write_text("the cat sat on the mat.\na dog ran quickly under the tree.\nthe big red dog sat.\n")
    return path


def _inspect(run, text, out, *extra):
    return main(["inspect", str(run), "--text", str(text), "--out", str(out), "--examples", "1",
                 "--device", "cpu", *extra])


def _refusal(capsys, path):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err, err
    assert str(path) in err and "not written by headwise" in err, err
    return err


def test_a_hand_written_report_is_refused_and_kept(tiny_run, text, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my own report")
    assert _inspect(tiny_run, text, out, "--overwrite") == 2
    _refusal(capsys, out / "report.html")
    assert (out / "report.html").read_text() == "my own report"
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # nothing written beside it


def test_a_hand_written_figure_is_not_deleted(tiny_run, text, tmp_path, capsys):
    """pruning.png is not written without --importance; the old code deleted it all the same."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "pruning.png").write_bytes(b"my figure")
    assert _inspect(tiny_run, text, out, "--overwrite") == 2
    _refusal(capsys, out / "pruning.png")
    assert (out / "pruning.png").read_bytes() == b"my figure"


def test_an_inspect_folder_is_replaced_with_overwrite_keeping_other_files(tiny_run, text, tmp_path, capsys):
    out = tmp_path / "report"
    assert _inspect(tiny_run, text, out) == 0
    assert {*REPORT_FILES} - {"pruning.png"} <= {p.name for p in out.iterdir()}
    assert set(json.loads((out / MANIFEST).read_text())["entries"]) >= {"report.html", "measures.json"}
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert _inspect(tiny_run, text, out) == 2  # without --overwrite: refused, as before
    assert "--overwrite" in capsys.readouterr().err
    (out / "measures.json").write_text("{}")  # headwise's own file: replaced
    assert _inspect(tiny_run, text, out, "--overwrite", "--max-sentences", "2") == 0
    assert json.loads((out / "measures.json").read_text())["data"]["n_sentences"] == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_a_file_put_later_in_an_inspect_folder_is_refused(tiny_run, text, tmp_path, capsys):
    """The manifest lists what was written, not every name a report may have."""
    out = tmp_path / "report"
    assert _inspect(tiny_run, text, out) == 0
    (out / "pruning.png").write_bytes(b"my figure")
    capsys.readouterr()
    assert _inspect(tiny_run, text, out, "--overwrite") == 2
    _refusal(capsys, out / "pruning.png")
    assert (out / "pruning.png").read_bytes() == b"my figure"


def test_a_link_or_a_damaged_manifest_is_refused(tiny_run, text, tmp_path, capsys):
    out = tmp_path / "report"
    assert _inspect(tiny_run, text, out) == 0
    target = tmp_path / "precious.html"
    target.write_text("precious")
    (out / "report.html").unlink()
    (out / "report.html").symlink_to(target)
    capsys.readouterr()
    assert _inspect(tiny_run, text, out, "--overwrite") == 2
    _refusal(capsys, out / "report.html")
    assert target.read_text() == "precious" and (out / "report.html").is_symlink()

    (out / "report.html").unlink()
    (out / MANIFEST).write_text("not json")
    assert _inspect(tiny_run, text, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert str(out / MANIFEST) in err and "not a headwise manifest" in err
    assert (out / MANIFEST).read_text() == "not json"


def test_an_empty_or_foreign_only_folder_is_fine(tiny_run, text, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _inspect(tiny_run, text, empty) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _inspect(tiny_run, text, other, "--overwrite") == 0
    assert (other / "notes.txt").read_text() == "mine" and (other / "report.html").is_file()


def test_the_run_directory_and_a_folder_inside_it(tiny_run, text, capsys):
    before = set(json.loads((tiny_run / MANIFEST).read_text())["entries"])
    for _ in range(2):
        assert _inspect(tiny_run, text, tiny_run, "--overwrite") == 0
    assert (tiny_run / "report.html").is_file() and (tiny_run / "run.json").is_file()
    assert any((tiny_run / "checkpoints").iterdir())
    after = set(json.loads((tiny_run / MANIFEST).read_text())["entries"])
    assert before - {"pruning.png"} <= after  # the run's own entries are still claimed
    assert "report.html" in after
    inner = tiny_run / "inspect"
    assert _inspect(tiny_run, text, inner) == 0
    assert _inspect(tiny_run, text, inner, "--overwrite") == 0
    assert (inner / "report.html").is_file()
