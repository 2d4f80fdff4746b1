"""Every command refuses bad arguments the same way: exit status 2, one message that
names the argument, what it got and what is accepted, and no traceback; nothing is
written. Run in-process through ``headwise.cli.main`` (fast), plus a few through a
subprocess to see the whole command line end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from headwise.cli import main

# a CUDA device that this machine cannot give: "cuda" without a GPU, an index past the last one with
BAD_CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"

# (command line, what the message must contain). In both, {file} is a text file, {missing} a
# path that does not exist, {run} a folder with a run.json, {dir} an empty folder, {gpurun} a run
# whose run.json names a device this machine lacks.
CASES: list[tuple[list[str], list[str]]] = [
    # ---------------------------------------------------------------- train: numbers
    *[(["train", flag, "0"], [flag, "'0'", "integer >= 1"]) for flag in (
        "--steps", "--batch-size", "--block-len", "--accum", "--eval-every", "--eval-batches",
        "--log-every", "--checkpoint-every", "--vocab-size", "--nproc", "--tp")],
    (["train", "--steps", "-5"], ["--steps", "'-5'", "integer >= 1"]),
    (["train", "--steps", "ten"], ["--steps", "'ten'", "integer >= 1"]),
    (["train", "--batch-size", "2.5"], ["--batch-size", "'2.5'", "integer >= 1"]),
    (["train", "--lr", "0"], ["--lr", "'0'", "> 0"]),
    (["train", "--lr=-1e-3"], ["--lr", "'-1e-3'", "> 0"]),
    (["train", "--lr", "nan"], ["--lr", "'nan'", "finite number > 0"]),
    (["train", "--weight-decay", "-0.1"], ["--weight-decay", "'-0.1'", ">= 0"]),
    (["train", "--warmup", "-1"], ["--warmup", "'-1'", "integer >= 0"]),
    (["train", "--grad-clip", "0"], ["--grad-clip", "'0'", "> 0"]),
    (["train", "--seed", "-1"], ["--seed", "'-1'", "integer >= 0"]),
    (["train", "--dropout", "1"], ["--dropout", "'1'", ">= 0 and < 1"]),
    (["train", "--dropout", "-0.1"], ["--dropout", "'-0.1'", ">= 0 and < 1"]),
    (["train", "--max-time", "0"], ["--max-time", "'0'", "> 0"]),
    (["train", "--steps", "5", "--max-time", "1"], ["--max-time", "not allowed with", "--steps"]),
    (["train", "--max-time", "1", "--decay", "cosine"], ["--decay cosine", "--max-time without --steps", "--steps"]),
    (["train", "--max-time", "1", "--min-lr-ratio", "0.5"],
     ["--min-lr-ratio 0.5", "--max-time without --steps", "drop it"]),
    (["train", "--decay", "constant", "--min-lr-ratio", "0.5"], ["--min-lr-ratio 0.5", "--decay constant", "drop it"]),
    (["train", "--vocab-size", "1"], ["--vocab-size 1", "wordpiece", "at least 6"]),
    (["train", "--objective", "clm", "--vocab-size", "100"], ["--vocab-size 100", "bpe", "at least 258"]),
    # ---------------------------------------------------------------- train: choices, names, paths
    (["train", "--objective", "nope"], ["--objective", "'nope'", "'mlm', 'rtd', 'clm'"]),
    (["train", "--decay", "step"], ["--decay", "'step'", "'cosine', 'linear', 'constant'"]),
    (["train", "--tokenizer-kind", "sentencepiece"], ["--tokenizer-kind", "'sentencepiece'", "'wordpiece'"]),
    (["train", "--rtd-generator", "big"], ["--rtd-generator", "'big'", "'model', 'uniform'"]),
    (["train", "--precision", "fp64"], ["--precision", "'fp64'", "'auto', 'fp32', 'bf16'"]),
    (["train", "--recipe", "nope"], ["--recipe", "'nope'", "shakespeare-char"]),
    (["train", "--preset", "nope"], ["--preset 'nope'", "unknown preset", "tiny"]),
    (["train", "--device", "banana"], ["--device 'banana'", "unknown device type", "accepted: auto, cpu"]),
    (["train", "--device", BAD_CUDA], [f"--device '{BAD_CUDA}'", "accepted: auto, cpu"]),
    (["train", "--out", "{file}"], ["--out '{file}'", "is a file", "folder"]),
    (["train", "--corpus", "{missing}"], ["--corpus '{missing}'", "no such file", "stdlib-docs"]),
    (["train", "--tokenizer", "{missing}"], ["--tokenizer '{missing}'", "no such file", "tokenizer.json"]),
    (["train", "--tokenizer", "{file}", "--vocab-size", "100"],
     ["--vocab-size 100", "--tokenizer", "drop it or --tokenizer"]),
    (["train", "--model", "nonsense=1"], ["--model", "nonsense", "d_model", "n_heads", "max_len"]),
    (["train", "--model", "d_model"], ["--model", "'d_model'", "KEY=VALUE"]),
    (["train", "--model", "d_model=-1"], ["--model d_model=-1", "d_model must be a positive int", "-1"]),
    (["train", "--model", "n_heads=3"], ["--model n_heads=3", "n_heads=3 must divide d_model=128"]),
    (["train", "--model", "vocab_size=10"], ["--model vocab_size=10", "--vocab-size"]),
    (["train", "--model", "max_len=16"], ["--block-len 128", "--model max_len=16", "--block-len <= 16"]),
    (["train", "--block-len", "1000"], ["--block-len 1000", "preset 'tiny'", "--block-len <= 128"]),
    (["train", "--dropout", "0.1", "--model", "dropout=0.2"], ["--dropout 0.1", "--model dropout=0.2"]),
    (["train", "--conllu", "{missing}"], ["--conllu '{missing}'", "no such file"]),
    (["train", "--no-report", "--conllu", "{file}"], ["--conllu '{file}'", "no effect with --no-report"]),
    # ---------------------------------------------------------------- check, generate, eval
    *[([cmd, "{missing}"], ["RUN", "'{missing}'", "no such folder", "run.json"])
      for cmd in ("check", "generate", "eval")],
    *[([cmd, "{file}"], ["RUN", "'{file}'", "is a file", "run.json"]) for cmd in ("check", "generate", "eval")],
    *[([cmd, "{dir}"], ["RUN", "'{dir}'", "holds no run.json"]) for cmd in ("check", "generate", "eval")],
    (["generate", "{run}", "--max-new-tokens", "-1"], ["--max-new-tokens", "'-1'", "integer >= 0"]),
    (["generate", "{run}", "--temperature", "-0.5"], ["--temperature", "'-0.5'", ">= 0"]),
    (["generate", "{run}", "--top-k", "0"], ["--top-k", "'0'", "integer >= 1"]),
    (["generate", "{run}", "--seed", "x"], ["--seed", "'x'", "integer >= 0"]),
    (["generate", "{run}", "--temperature", "0", "--top-k", "5"],
     ["--top-k 5 has no effect", "--temperature 0", "drop it"]),
    (["generate", "{run}", "--temperature", "0", "--seed", "3"], ["--seed 3 has no effect", "--temperature 0"]),
    (["generate", "{run}", "--temperature", "0", "--top-k", "5", "--seed", "3"],
     ["--top-k 5 and --seed 3 have no effect", "drop them"]),
    (["generate", "{run}", "--prompt", "ab\udcffc"], ["--prompt is not UTF-8 text", "byte 0xff at character 2"]),
    (["eval", "{run}", "--batches", "0"], ["--batches", "'0'", "integer >= 1"]),
    *[([cmd, "{run}", "--device", "banana"], ["--device 'banana'", "unknown device type", "accepted: auto, cpu"])
      for cmd in ("check", "generate", "eval")],
    *[([cmd, "{run}", "--device", BAD_CUDA], [f"--device '{BAD_CUDA}'", "accepted: auto, cpu"])
      for cmd in ("check", "generate", "eval")],
    *[([cmd, "{gpurun}"], [f"device '{BAD_CUDA}'", "run.json", "pass --device", "accepted: auto, cpu"])
      for cmd in ("check", "generate", "eval")],
    (["eval", "{run}", "--format", "fp8"], ["--format", "'fp8'", "'fp32', 'bf16', 'int8'"]),
    # ---------------------------------------------------------------- bench
    (["bench", "nope"], ["NAME 'nope'", "no such benchmark", "attention"]),
    (["bench", "attention", "--seq", "-4"], ["--seq", "'-4'", "integer >= 1"]),
    (["bench", "attention", "--seq", "128", "0"], ["--seq", "'0'", "integer >= 1"]),
    (["bench", "attention", "--repeats", "0"], ["--repeats", "'0'", "integer >= 1"]),
    (["bench", "attention", "--seq", "99999999999"], ["--seq", "T=99999999999", "GiB", "more than this machine's"]),
    # ---------------------------------------------------------------- plan
    *[(["plan", "--preset", "tiny", flag, "0"], [flag, "'0'", "integer >= 1"]) for flag in (
        "--d-model", "--n-heads", "--head-dim", "--n-kv-heads", "--layers", "--batch", "--seq")],
    (["plan", "--preset", "tiny", "--top", "-1"], ["--top", "'-1'", "integer >= 0"]),
    (["plan", "--preset", "tiny", "--tolerance", "-1"], ["--tolerance", "'-1'", ">= 0"]),
    (["plan", "--preset", "tiny", "--gpu", "tpu"], ["--gpu 'tpu'", "h100"]),
    (["plan", "--preset", "tiny", "--dtype", "fp64"], ["--dtype 'fp64'", "bf16"]),
    (["plan", "--preset", "nope"], ["--preset 'nope'", "tiny"]),
    (["plan"], ["--preset", "--d-model", "--n-heads", "got preset=None"]),
    # ---------------------------------------------------------------- inspect
    (["inspect", "{missing}", "--text", "{file}", "--out", "{dir}/o"], ["MODEL '{missing}'", "no such file", "minilm"]),
    (["inspect", "{file}", "--text", "{file}", "--out", "{dir}/o"], ["MODEL '{file}'", "is a file", "minilm"]),
    (["inspect", "minilm", "--text", "{missing}", "--out", "{dir}/o"], ["--text '{missing}'", "no such file"]),
    (["inspect", "minilm", "--conllu", "{missing}", "--out", "{dir}/o"], ["--conllu '{missing}'", "no such file"]),
    (["inspect", "minilm", "--out", "{dir}/o"], ["--text", "--conllu", "required"]),
    (["inspect", "minilm", "--text", "{file}"], ["--out", "required"]),
    (["inspect", "minilm", "--text", "{file}", "--out", "{file}"], ["--out '{file}'", "is a file", "folder"]),
    *[(["inspect", "minilm", "--text", "{file}", "--out", "{dir}/o", flag, value], [flag, f"'{value}'", accepted])
      for flag, value, accepted in (
          ("--max-sentences", "0", "integer >= 1"), ("--importance-sentences", "0", "integer >= 1"),
          ("--examples", "-1", "integer >= 0"), ("--batch-size", "0", "integer >= 1"),
          ("--threads", "-2", "integer >= 0"))],
    (["inspect", "minilm", "--text", "{file}", "--out", "{dir}/o", "--importance-sentences", "5"],
     ["--importance-sentences 5", "no effect without --importance"]),
    (["inspect", "minilm", "--text", "{file}", "--out", "{dir}/o", "--device", "banana"],
     ["--device 'banana'", "unknown device type", "accepted: auto, cpu"]),
    (["inspect", "minilm", "--text", "{file}", "--out", "{dir}/o", "--device", BAD_CUDA],
     [f"--device '{BAD_CUDA}'", "accepted: auto, cpu"]),
    # ---------------------------------------------------------------- no command
    ([], ["COMMAND", "required"]),
    (["fly"], ["'fly'", "invalid choice", "'train'"]),
]


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The placeholders' paths, with the current folder in tmp_path (so a default --out
    such as runs/... would land there and be seen)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("one sentence\nanother sentence\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "fakerun").mkdir()
    (tmp_path / "fakerun" / "run.json").write_text("{}\n")
    (tmp_path / "gpurun").mkdir()  # a run made where BAD_CUDA existed
    (tmp_path / "gpurun" / "run.json").write_text(f'{{"device": "{BAD_CUDA}"}}\n')
    return {"file": str(tmp_path / "a.txt"), "missing": str(tmp_path / "missing"),
            "run": str(tmp_path / "fakerun"), "dir": str(tmp_path / "empty"), "gpurun": str(tmp_path / "gpurun")}


def _fill(items: list[str], places: dict[str, str]) -> list[str]:
    return [s.format(**places) for s in items]


def _case_id(case) -> str:
    return " ".join(case[0]) or "(nothing)"


@pytest.mark.parametrize("argv,needles", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_argument_is_refused_with_a_clear_message(argv, needles, places, capsys, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    status = main(_fill(argv, places))
    out, err = capsys.readouterr()
    assert status == 2, (status, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err  # one line says why (argparse's usage may come before it)
    for needle in _fill(needles, places):
        assert needle in lines[0], (needle, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written (no runs/)
    assert not any((tmp_path / "empty").iterdir())


def test_every_command_is_covered():
    """The table names every subcommand headwise has (a new one needs its rows)."""
    from headwise.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    covered = {argv[0] for argv, _ in CASES if argv}
    assert set(sub.choices) <= covered, sorted(set(sub.choices) - covered)


FAKE_BENCH = """
import argparse, json
from pathlib import Path
p = argparse.ArgumentParser()
p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fake.json")
args = p.parse_args()
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps({"written_by": "fake"}))
"""


def test_bench_without_out_writes_a_new_file_never_over_the_committed_one(tmp_path, monkeypatch, capsys):
    from headwise.app import bench_command

    bench = tmp_path / "bench"
    (bench / "results").mkdir(parents=True)
    (bench / "fake.py").write_text(FAKE_BENCH)
    committed = bench / "results" / "fake.json"
    committed.write_text("committed")
    monkeypatch.setattr(bench_command, "BENCH_DIR", bench)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "fake"]) == 0
    assert main(["bench", "fake"]) == 0  # a second run within the same second: another file
    written = sorted((tmp_path / "runs" / "bench").glob("fake-*.json"))
    assert len(written) == 2, written
    assert "writing the results to runs/bench/fake-" in capsys.readouterr().err
    assert committed.read_text() == "committed"
    assert main(["bench", "fake", "--out", str(committed)]) == 0  # an explicit --out is used as given
    assert committed.read_text() == '{"written_by": "fake"}'


def test_bench_finds_scripts_in_bench_dir_or_the_current_folder(tmp_path, monkeypatch, capsys):
    """Installed without a checkout: --bench-dir names the folder; else ./bench is used."""
    from headwise.app import bench_command

    monkeypatch.setattr(bench_command, "BENCH_DIR", tmp_path / "no-checkout" / "bench")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fake.py").write_text(FAKE_BENCH)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--bench-dir", str(mine), "fake", "--out", str(tmp_path / "a.json")]) == 0
    assert (tmp_path / "a.json").is_file()
    assert main(["bench", "fake"]) == 2  # no ./bench here, no checkout: where it looked is named
    err = capsys.readouterr().err
    assert "no such benchmark" in err and "bench (missing)" in err and "no-checkout" in err
    assert "--bench-dir" in err
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "fake.py").write_text(FAKE_BENCH)
    assert main(["bench", "fake", "--out", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").is_file()


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    return subprocess.run([sys.executable, "-m", "headwise.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--device", "banana"], "--device 'banana'"),
    (["inspect", "minilm", "--text", "nope.txt", "--out", "o", "--device", BAD_CUDA], f"--device '{BAD_CUDA}'"),
    (["bench", "attention", "--seq", "-4"], "argument --seq"),
])
def test_end_to_end_no_traceback(argv, needle, tmp_path):
    proc = _run(tmp_path, *argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert needle in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("error,shown", [
    (PermissionError(13, "Permission denied", "/somewhere/out.json"), "/somewhere/out.json: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "/somewhere"), "/somewhere: Is a directory"),
    (FileNotFoundError("--thing 'x': no such file"), "--thing 'x': no such file"),
])
def test_expected_errors_are_one_line_with_status_2(monkeypatch, capsys, error, shown):
    import headwise.app.plan_command as plan

    def fail(args):
        raise error

    monkeypatch.setattr(plan, "run", fail)
    assert main(["plan"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"headwise plan: error: {shown}"


def test_a_diverged_run_is_reported_not_a_traceback(monkeypatch, capsys):
    import headwise.app.plan_command as plan
    from headwise.train.loop import NonFiniteError

    def fail(args):
        raise NonFiniteError("the loss is nan at step 3; stopped and saved the last good state to x")

    monkeypatch.setattr(plan, "run", fail)
    assert main(["plan"]) == 2
    assert "error: the loss is nan at step 3" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [KeyError("k"), RuntimeError("an internal error"), IndexError("i")])
def test_a_bug_keeps_its_traceback(monkeypatch, bug):
    import headwise.app.plan_command as plan

    def fail(args):
        raise bug

    monkeypatch.setattr(plan, "run", fail)
    with pytest.raises(type(bug)):
        main(["plan"])
