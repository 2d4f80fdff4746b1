"""The command line and the HEADWISE_* environment variables under odd circumstances:
a reader that goes away, bad variable values, output paths that cannot be written.
Each is refused in one line with status 2 (never a traceback), or handled quietly."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import refused_line, two_step_mlm_run, write_corpus

import headwise
from headwise.attention import set_dispatch_cache
from headwise.attention.backends import DISPATCHER, AttentionCall
from headwise.attention.backends.dispatch import Dispatcher
from headwise.attention.masks import MaskSpec
from headwise.cli import KNOWN_VARIABLES, OUTPUT_CLOSED, main
from headwise.devices import resolve_device
from headwise.kernels import get_tiled_options, set_tiled_options


def _run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """``headwise ARGV`` with its standard output a pipe whose reader is already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "headwise", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


# ------------------------------------------------------------------ a closed output
def test_output_whose_reader_went_away_ends_quietly():
    """``headwise plan ... | head -c 5``: no 'error: [Errno 32] Broken pipe', no traceback."""
    done = _run_into_closed_pipe("plan", "--preset", "tiny")
    assert done.returncode == OUTPUT_CLOSED, done.stderr
    assert done.stderr == ""


# ------------------------------------------------------------------ on/off variables
@pytest.fixture
def tiled_default():
    """The process's kernel options, put back after a test that runs ``main``."""
    start = get_tiled_options()
    yield
    set_tiled_options(start)


@pytest.mark.parametrize("name, value, field, want", [
    ("HEADWISE_TILED_AUTOTUNE", "false", "autotune", False),
    ("HEADWISE_TILED_AUTOTUNE", "OFF", "autotune", False),
    ("HEADWISE_TILED_AUTOTUNE", "0", "autotune", False),
    ("HEADWISE_TILED_TMA", "off", "tma", False),
    ("HEADWISE_TILED_TMA", "no", "tma", False),
    ("HEADWISE_TILED_TMA", "auto", "tma", None),
])
def test_tiled_switch_words_that_mean_off_turn_it_off(tiled_default, monkeypatch, capsys, name, value, field,
                                                      want):
    """``HEADWISE_TILED_AUTOTUNE=false`` left autotuning on (only ``0`` was off), and
    ``HEADWISE_TILED_TMA=off`` left TMA on auto."""
    monkeypatch.setenv(name, value)
    main(["plan", "--preset", "tiny"])
    capsys.readouterr()
    assert getattr(get_tiled_options(), field) is want


@pytest.mark.parametrize("name, value", [("HEADWISE_TILED_AUTOTUNE", "maybe"), ("HEADWISE_TILED_TMA", "of")])
def test_tiled_switch_that_is_no_on_off_word_is_refused_naming_it(tiled_default, monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith(f"headwise: error: {name} must be 1, true, yes or on")
    assert f"got {value!r}" in line


# ------------------------------------------------------------------ backend="auto"'s variables
def test_autotune_backend_that_is_no_on_off_word_is_refused_not_taken_for_on(monkeypatch, capsys):
    """``HEADWISE_AUTOTUNE_BACKEND=maybe`` (anything but 0/false/no/off) meant timing on."""
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BACKEND", "maybe")
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith("headwise: error: HEADWISE_AUTOTUNE_BACKEND must be 1, true, yes or on")
    assert "got 'maybe'" in line


@pytest.mark.parametrize("value", ["abc", "-5", "nan"])
def test_autotune_budget_that_is_not_milliseconds_is_refused_naming_it(monkeypatch, capsys, value):
    """``HEADWISE_AUTOTUNE_BUDGET_MS=abc`` failed on a GPU at the first attention call as
    'could not convert string to float'; nan meant no budget at all, -5 none left."""
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BUDGET_MS", value)
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert line.startswith("headwise: error: HEADWISE_AUTOTUNE_BUDGET_MS must be a number of milliseconds >= 0")
    assert f"got {value!r}" in line
    with pytest.raises(ValueError, match="HEADWISE_AUTOTUNE_BUDGET_MS must be"):
        Dispatcher(lambda: []).budget()  # the dispatcher reads it at each use, too


@pytest.mark.parametrize("value, want", [("", 500.0), ("0", 0.0), ("inf", math.inf), ("20", 20.0)])
def test_autotune_budget_values_that_are_milliseconds_are_taken(monkeypatch, value, want):
    monkeypatch.setenv("HEADWISE_AUTOTUNE_BUDGET_MS", value)
    assert Dispatcher(lambda: []).budget() == want


def _pinned_call() -> AttentionCall:
    return AttentionCall(dtype=torch.float32, device=torch.device("cpu"), head_dim=16, value_dim=16, n_heads=2,
                         n_kv_heads=2, mask=MaskSpec(1, 8, 8, causal=True), need_weights=False, dropout_p=0.0,
                         requires_grad=False)


def test_dispatch_cache_that_is_a_users_file_is_refused_and_left_as_it_is(tmp_path, monkeypatch, capsys):
    """``HEADWISE_DISPATCH_CACHE=notes.txt``: the first measurement replaced the file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    monkeypatch.setenv("HEADWISE_DISPATCH_CACHE", str(notes))
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert f"HEADWISE_DISPATCH_CACHE={str(notes)!r} is a file headwise did not write" in line
    d = Dispatcher(lambda: [], device_name=lambda dev: "GPU", torch_version="1", triton_version="1")
    d.cache_path = notes  # set past the check: the write itself refuses
    with pytest.raises(ValueError, match="is a file headwise did not write"):
        d.pin(_pinned_call(), "sdpa")
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_set_dispatch_cache_of_a_users_file_is_refused(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    saved = DISPATCHER.cache_path
    try:
        with pytest.raises(ValueError, match="is a file headwise did not write"):
            set_dispatch_cache(notes)
    finally:
        DISPATCHER.use_cache_file(saved)
    assert notes.read_text() == '{"mine": 1}'


def test_dispatch_cache_that_is_a_folder_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    """A folder failed at the first measurement as '.../.folder.PID.TID.tmp -> ...: Is a
    directory', leaving that temporary file behind."""
    monkeypatch.setenv("HEADWISE_DISPATCH_CACHE", str(tmp_path))
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert f"HEADWISE_DISPATCH_CACHE={str(tmp_path)!r} is a folder" in line


# ------------------------------------------------------------------ names that are not UTF-8
def test_out_that_is_not_utf8_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """``--out $'run\\xff'`` trained the whole run, then failed writing summary.txt with
    "'utf-8' codec can't encode character '\\udcff' ...: surrogates not allowed"."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.txt", docs=60)
    out = tmp_path / "run\udcff"  # the name a shell's byte 0xff arrives as
    line = refused_line(["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(out), "--steps", "2",
                         "--batch-size", "2", "--block-len", "17", "--warmup", "1",
                         "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks",
                         "--no-report", "--quiet", "--device", "cpu"], capsys)
    assert line.startswith("headwise train: error: --out is not UTF-8 text (byte 0xff at character")
    assert not out.exists()


def test_headwise_variable_that_is_not_utf8_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache\udcfe"))
    line = refused_line(["plan", "--preset", "tiny"], capsys)
    assert "HEADWISE_CACHE is not UTF-8 text (byte 0xfe at character" in line


# ------------------------------------------------------------------ flags that would do nothing
def test_plan_tolerance_with_top_0_is_refused_not_ignored(capsys):
    """``plan --top 0 --tolerance 0.5``: no recommendation is searched, so the tolerance
    did nothing, without a word."""
    line = refused_line(["plan", "--preset", "tiny", "--top", "0", "--tolerance", "0.5"], capsys)
    assert line == ("headwise plan: error: --tolerance 0.5 has no effect with --top 0 (no recommendation is "
                    "searched); drop it or give --top 1 or more")
    assert main(["plan", "--preset", "tiny", "--top", "0"]) == 0  # the default tolerance is no setting given


def test_importance_sentences_beyond_the_sentences_given_is_refused(tmp_path, capsys):
    """``--importance-sentences 50`` on a two-line --text scored importance on 2 sentences,
    saying nothing (only a --max-sentences below it was refused)."""
    text = tmp_path / "s.txt"
    text.write_text("the cat sat on the mat.\na dog ran under the tree.\n")
    with two_step_mlm_run(tmp_path) as run:
        line = refused_line(["inspect", str(run), "--text", str(text), "--out", str(tmp_path / "o"), "--importance",
                             "--importance-sentences", "50", "--device", "cpu"], capsys)
        assert line == (f"headwise inspect: error: --importance-sentences 50 is more than the 2 sentence(s) of "
                        f"--text {str(text)!r}: importance takes the first of the inspected sentences; give at "
                        "most 2")
        assert not (tmp_path / "o").exists()
        assert main(["inspect", str(run), "--text", str(text), "--out", str(tmp_path / "o"), "--importance",
                     "--importance-sentences", "2", "--device", "cpu"]) == 0


def test_headwise_cache_inside_a_file_is_refused_naming_the_variable(tmp_path, monkeypatch, capsys):
    """``HEADWISE_CACHE=FILE/sub`` failed as '.../tokenizers/bpe-...: Not a directory',
    naming neither the variable nor the file in the way."""
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    monkeypatch.setenv("HEADWISE_CACHE", str(blocker / "sub"))
    corpus = write_corpus(tmp_path / "corpus.txt", docs=60)
    line = refused_line(["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(tmp_path / "run"),
                         "--steps", "2", "--batch-size", "2", "--block-len", "17", "--warmup", "1",
                         "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks",
                         "--no-report", "--quiet", "--device", "cpu"], capsys)
    assert f"HEADWISE_CACHE={str(blocker / 'sub')!r} is not a folder (inside the file {str(blocker)!r})" in line
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("name, needle", [
    ("HEADWISE_CPU_GELU", "HEADWISE_CPU_GELU: the CPU GELU must be one of auto, compiled, eager; got 'abc'"),
    ("HEADWISE_CPU_LINEAR", "HEADWISE_CPU_LINEAR: the CPU linear must be one of auto, onednn, torch; got 'abc'"),
    ("HEADWISE_MALLOC", "HEADWISE_MALLOC: the malloc setting must be one of keep, default; got 'abc'"),
])
def test_process_setting_with_a_bad_value_is_refused_by_every_command(monkeypatch, capsys, name, needle):
    """They were read only where first used: a command that never got there (plan, eval
    of a model without a tanh GELU, a run on a GPU for HEADWISE_MALLOC) ignored a typo."""
    monkeypatch.setenv(name, "abc")
    assert refused_line(["plan", "--preset", "tiny"], capsys) == f"headwise: error: {needle}"


# ------------------------------------------------------------------ variable names
def test_a_misspelt_headwise_variable_is_warned_about_with_the_nearest_name(monkeypatch, capsys):
    """``HEADWISE_TILED_AUTOTUN=0`` (one letter short) did nothing, without a word."""
    monkeypatch.setenv("HEADWISE_TILED_AUTOTUN", "0")
    assert main(["plan", "--preset", "tiny"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "headwise: warning: HEADWISE_TILED_AUTOTUN is not a variable headwise reads; it has no effect "
        "(did you mean HEADWISE_TILED_AUTOTUNE?)"]


def test_every_headwise_variable_the_package_names_is_known_to_the_command():
    """The warning above must never fire for a variable headwise does read."""
    src = Path(headwise.__file__).parent
    named = {m for p in src.rglob("*.py") for m in re.findall(r"HEADWISE_[A-Z][A-Z_]*[A-Z]", p.read_text())}
    assert named - {"HEADWISE_TILED"} <= set(KNOWN_VARIABLES)


# ------------------------------------------------------------------ output paths
def test_inspect_out_inside_a_file_is_refused_before_loading_the_model(tmp_path, monkeypatch, capsys):
    """``--out FILE/report`` loaded and inspected the model, then failed making the folder
    as 'FILE/report: Not a directory', naming neither the flag nor the file in the way."""
    import headwise.app.inspect_command as inspect_command

    def never(*a, **kw):
        raise AssertionError("the model was loaded although --out cannot be made")

    monkeypatch.setattr(inspect_command, "load_model", never)
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    text = tmp_path / "s.txt"
    text.write_text("the cat sat on the mat.\n")
    out = blocker / "report" / "deeper"
    line = refused_line(["inspect", "minilm", "--text", str(text), "--out", str(out)], capsys)
    assert line == (f"headwise inspect: error: --out {str(out)!r} is inside {str(blocker)!r}, which is a file; "
                    "give a folder that is or can be made")
    assert blocker.read_text() == "mine"


# ------------------------------------------------------------------ interruptions
def test_ctrl_c_in_a_command_is_one_line_and_status_130_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C in eval, generate, inspect or plan printed KeyboardInterrupt's traceback
    (only train said what it kept)."""
    import headwise.app.plan_command as plan

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "run", interrupted)
    try:
        status = main(["plan"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped headwise.cli.main as a KeyboardInterrupt (a traceback)")
    assert status == 130
    assert capsys.readouterr().err == "headwise plan: interrupted (Ctrl-C); stopped\n"


def test_bench_out_inside_a_file_is_refused_before_the_benchmark_runs(tmp_path, capsys):
    """``bench NAME --out FILE/x.json`` ran the whole benchmark, then failed writing."""
    bench = tmp_path / "bench"
    bench.mkdir()
    ran = tmp_path / "ran"
    (bench / "probe.py").write_text(f"from pathlib import Path\nPath({str(ran)!r}).write_text('ran')\n")
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    out = blocker / "x.json"
    line = refused_line(["bench", "--bench-dir", str(bench), "probe", "--out", str(out)], capsys)
    assert line == (f"headwise bench: error: --out {str(out)!r} is inside {str(blocker)!r}, which is a file; give "
                    "the path of a JSON file in a folder")
    assert not ran.exists() and blocker.read_text() == "mine"


# ------------------------------------------------------------------ --device
def test_a_run_trained_on_device_cpu_0_can_be_evaluated(tmp_path, monkeypatch, capsys):
    """``train --device cpu:0`` trained, but every later eval, generate, inspect or
    resume of the run (which takes its device) failed: 'cannot read .../model.safetensors:
    device cpu:0 is invalid'."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "corpus.txt", docs=60)
    run = tmp_path / "run"
    assert main(["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(run), "--steps", "2",
                 "--batch-size", "2", "--block-len", "17", "--warmup", "1",
                 "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks",
                 "--no-report", "--quiet", "--device", "cpu:0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--batches", "1"]) == 0
    assert '"loss"' in capsys.readouterr().out


def test_device_cpu_with_another_index_is_refused():
    with pytest.raises(ValueError, match=r"--device 'cpu:1': there is one CPU device, cpu \(or cpu:0\)"):
        resolve_device("cpu:1", what="--device")
    assert resolve_device("cpu:0") == torch.device("cpu")


# ------------------------------------------------------------------ --corpus
def test_a_corpus_that_is_a_pipe_or_device_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    """``echo text | headwise train --corpus /dev/stdin`` was refused as 'smaller than one
    block: 0 tokens' (the pipe's text went to the first of several reads); a device such
    as /dev/null, the stand-in here (a pipe without a writer would block), was 'empty'."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    line = refused_line(["train", "--objective", "clm", "--corpus", os.devnull, "--out", str(tmp_path / "run"),
                         "--steps", "2", "--batch-size", "2", "--block-len", "17", "--warmup", "1",
                         "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks",
                         "--no-report", "--quiet", "--device", "cpu"], capsys)
    assert line == (f"headwise train: error: --corpus {os.devnull!r} is not a file or folder but a pipe or device, "
                    "which can be read only once; save the text to a file and give that")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, flag", [
    (["eval", "{run}", "--corpus", os.devnull], "--corpus"),
    (["inspect", "{run}", "--text", os.devnull, "--out", "{out}"], "--text"),
    (["inspect", "{run}", "--conllu", os.devnull, "--out", "{out}"], "--conllu"),
    (["train", "--resume", "--out", "{run}", "--conllu", os.devnull], "--conllu"),
    (["train", "--out", "{out}", "--tokenizer", os.devnull], "--tokenizer"),
])
def test_an_input_that_is_a_pipe_or_device_is_called_one(tmp_path, capsys, argv, flag):
    """``--text /dev/stdin`` (a pipe) was refused as 'no such file', ``eval --corpus
    /dev/stdin`` as '0 tokens'; /dev/null stands in for the pipe here."""
    with two_step_mlm_run(tmp_path) as run:
        args = [a.format(run=run, out=tmp_path / "o") for a in argv]
        line = refused_line(args, capsys)
    assert line.endswith(f"error: {flag} {os.devnull!r} is not a file or folder but a pipe or device, which can be "
                         "read only once; save the text to a file and give that")
