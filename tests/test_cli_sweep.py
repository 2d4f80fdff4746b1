"""Bad input found by a sweep of the ``headwise`` command line: each case is refused
with exit status 2 and one line naming what was wrong (never a traceback), no setting
is ignored silently, and no file headwise did not write is changed."""

from __future__ import annotations

import json
import sys
import types

import pytest
from tiny_runs import refused_line as _refused
from tiny_runs import write_corpus

from headwise.cli import main


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return write_corpus(tmp_path / "corpus.txt", docs=60)


def _train(corpus, out, *extra: str) -> list[str]:
    """A clm run of two steps that takes about a second."""
    return ["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--block-len", "17", "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16",
            "--no-sanity-checks", "--no-report", "--quiet", "--device", "cpu", *extra]


# ------------------------------------------------------------------ hf: corpora
def test_hf_corpus_without_datasets_is_refused_not_a_traceback(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    line = _refused(_train("hf:wikitext", tmp_path / "run"), capsys)
    assert "'hf:wikitext'" in line and "datasets" in line and "pip install datasets" in line
    assert not (tmp_path / "run").exists()


def test_hf_corpus_that_cannot_be_loaded_is_refused_not_a_traceback(corpus, tmp_path, monkeypatch, capsys):
    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach the Hub")

    mod = types.ModuleType("datasets")
    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", mod)
    line = _refused(_train("hf:nosuch", tmp_path / "run"), capsys)
    assert "'hf:nosuch'" in line and "reach the Hub" in line
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ generate
@pytest.fixture
def clm_run(corpus, tmp_path):
    run = tmp_path / "clm"
    assert main(_train(corpus, run)) == 0
    return run


def test_generate_with_a_tiny_temperature_samples_the_most_likely_tokens(clm_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(clm_run), "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu"]) == 0
    greedy = capsys.readouterr().out
    # logits / 1e-300 overflowed to inf, and softmax gave nan: a RuntimeError from torch.multinomial
    assert main(["generate", str(clm_run), "--max-new-tokens", "5", "--temperature", "1e-300",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out == greedy


# ------------------------------------------------------------------ seeds
@pytest.mark.parametrize("command", [["train"], ["generate", "{run}"]])
def test_a_seed_too_large_for_torch_is_refused_naming_the_flag(command, tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")
    argv = [a.format(run=tmp_path) for a in command] + ["--seed", str(2**64)]
    line = _refused(argv, capsys)  # was: "Overflow when unpacking long long", from torch
    assert "--seed" in line and str(2**64) in line and "<= 9223372036854775807" in line


# ------------------------------------------------------------------ settings that would be ignored
@pytest.mark.parametrize("extra,needles", [
    (["--muon-lr", "0.1"], ["--muon-lr 0.1", "--optimizer adamw", "--optimizer muon"]),
    (["--whole-word-masking"], ["--whole-word-masking", "--objective clm"]),
    (["--rtd-generator", "uniform"], ["--rtd-generator uniform", "--objective clm", "--objective rtd"]),
    (["--model", "d_model=32,n_heads=2,d_model=64"], ["--model", "'d_model' twice"]),
])
def test_a_setting_the_run_would_ignore_is_refused(corpus, tmp_path, capsys, extra, needles):
    line = _refused(_train(corpus, tmp_path / "run", *extra), capsys)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "run").exists()


def test_settings_the_run_uses_are_accepted(corpus, tmp_path):
    assert main(_train(corpus, tmp_path / "muon", "--optimizer", "muon", "--muon-lr", "0.01")) == 0


# ------------------------------------------------------------------ files headwise did not write
@pytest.mark.parametrize("others", [[], ["notes.txt"]])
def test_a_lock_file_headwise_did_not_write_is_left_alone(corpus, tmp_path, capsys, others):
    """The run's lock is .lock; a user's own .lock was truncated (and the folder used)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".lock").write_text("my own notes\n")
    for name in others:
        (mine / name).write_text("keep")
    for extra in ([], ["--overwrite"]):
        line = _refused(_train(corpus, mine, *extra), capsys)
        assert str(mine) in line and ".lock" in line and "did not write" in line
    assert (mine / ".lock").read_text() == "my own notes\n"
    assert sorted(p.name for p in mine.iterdir()) == sorted([".lock", *others])


def test_a_lock_left_by_a_killed_start_does_not_block_the_folder(corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("pid 999999\n")  # killed between taking the lock and the manifest
    assert main(_train(corpus, out)) == 0


# ------------------------------------------------------------------ empty paths
def test_an_empty_corpus_or_out_is_refused_not_taken_as_the_working_folder(corpus, tmp_path, capsys, clm_run,
                                                                           monkeypatch):
    """Path('') is '.': --corpus '' trained on every text file under the working folder."""
    line = _refused(_train("", tmp_path / "run"), capsys)
    assert "corpus spec ''" in line and "is empty" in line
    assert not (tmp_path / "run").exists()
    line = _refused(["eval", str(clm_run), "--corpus", "", "--device", "cpu"], capsys)
    assert "corpus spec ''" in line and "is empty" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)  # --out '' would have made the working folder the run directory
    line = _refused(_train(corpus, ""), capsys)
    assert "--out ''" in line and "is empty" in line
    assert not any(empty.iterdir())


# ------------------------------------------------------------------ damaged run directories
@pytest.mark.parametrize("name,content,needles", [
    ("run.json", "", ["run.json is damaged", "Expecting value"]),
    ("run.json", "{not json", ["run.json is damaged"]),
    ("run.json", b"\xff\xfe\x00garbage", ["run.json is damaged", "utf-8"]),
    ("run.json", "[1, 2]", ["run.json is damaged", "JSON object", "list"]),
    ("run.json", {"betas": 5}, ["run.json", "not iterable"]),
    ("run.json", {"steps": "ten"}, ["run.json", "steps must be a positive int"]),
    ("run.json", {"model": "abc"}, ["run.json", "model must be a dict of ModelConfig field overrides"]),
    ("config.json", "{", ["config.json is damaged"]),
    ("config.json", "[]", ["config.json is damaged", "dict"]),
])
def test_a_damaged_settings_file_is_named_in_the_message(clm_run, capsys, name, content, needles):
    path = clm_run / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):  # one setting changed
        path.write_text(json.dumps({**json.loads(path.read_text()), **content}))
    else:
        path.write_text(content)
    for command in (["eval", str(clm_run)], ["generate", str(clm_run), "--max-new-tokens", "2"]):
        line = _refused([*command, "--device", "cpu"], capsys)
        for needle in needles:
            assert needle in line, (needle, line)


# ------------------------------------------------------------------ inspect's inputs
@pytest.mark.parametrize("flag,needle", [("--text", "--text '{f}' is not UTF-8"),
                                         ("--conllu", "CoNLL-U file '{f}' is not UTF-8")])
def test_inspect_names_an_input_file_that_is_not_text(clm_run, tmp_path, capsys, flag, needle):
    f = tmp_path / "binary.txt"
    f.write_bytes(b"\x99\xff\x00binary")
    line = _refused(["inspect", str(clm_run), flag, str(f), "--out", str(tmp_path / "o"), "--device", "cpu"],
                    capsys)  # was: "'utf-8' codec can't decode byte 0x99 in position 0", naming no file
    assert needle.format(f=f) in line
    assert not (tmp_path / "o").exists()


def test_generate_past_the_learned_positions_names_both_flags_and_what_fits(clm_run, capsys):
    # was: "prompt length 1 + max_new_tokens 100 = 101 exceeds max_len=16", naming no flag
    line = _refused(["generate", str(clm_run), "--device", "cpu"], capsys)  # the default --max-new-tokens 100
    assert "--max-new-tokens 100" in line and "max_len=16" in line and "give --max-new-tokens 15 or less" in line
    assert main(["generate", str(clm_run), "--max-new-tokens", "15", "--device", "cpu"]) == 0


def test_generate_top_k_not_below_the_vocabulary_is_refused_naming_it_and_what_fits(clm_run, capsys):
    # was: accepted silently, sampling among every token as if --top-k had not been given
    vocab = json.loads((clm_run / "config.json").read_text())["vocab_size"]
    base = ["generate", str(clm_run), "--max-new-tokens", "3", "--device", "cpu"]
    for k in (vocab, vocab + 1000):
        line = _refused([*base, "--top-k", str(k)], capsys)
        assert f"--top-k {k}" in line and f"vocabulary size of {vocab} tokens" in line
        assert f"give --top-k {vocab - 1} or less" in line
    assert main([*base, "--top-k", str(vocab - 1)]) == 0


def test_inspect_threads_beyond_the_cpu_count_is_refused(clm_run, tmp_path, capsys):
    import os

    # was: a segmentation fault in the BLAS library (exit 139) for --threads 99999
    line = _refused(["inspect", str(clm_run), "--text", str(clm_run / "run.json"), "--out", str(tmp_path / "o"),
                     "--threads", "99999"], capsys)
    assert "--threads" in line and f"<= {os.cpu_count()}" in line
    assert not (tmp_path / "o").exists()


def test_a_vocabulary_smaller_than_vocab_size_is_said(corpus, tmp_path, capsys):
    # --vocab-size is the most a tokenizer may have; a small corpus gives fewer, and the run says so
    argv = [a for a in _train(corpus, tmp_path / "run", "--vocab-size", "4000000") if a != "--quiet"]
    assert main(argv) == 0
    vocab = json.loads((tmp_path / "run" / "config.json").read_text())["vocab_size"]
    assert vocab < 4000000
    assert f"vocabulary: {vocab:,} tokens" in capsys.readouterr().out


def test_a_vocab_size_beyond_what_a_tokenizer_can_train_is_refused_naming_the_flag(corpus, tmp_path, capsys):
    # (the tokenizer trainer reserved memory for it: at 10**9 it aborted the interpreter)
    line = _refused(_train(corpus, tmp_path / "run", "--vocab-size", "1000000000"), capsys)
    assert "--vocab-size" in line and "4194304" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("folder_named, other, needle", [
    ("run.json", None, "its run.json is not a file"),
    ("config.json", None, "its config.json is not a file"),
    ("run.json", ("config.json", "{}"), "its run.json is not a file"),
])
def test_inspect_of_a_folder_whose_settings_file_is_a_folder_names_it(tmp_path, capsys, folder_named,
                                                                      other, needle):
    model = tmp_path / "model"
    (model / folder_named).mkdir(parents=True)
    if other is not None:  # the config.json beside it is not read instead
        (model / other[0]).write_text(other[1])
    text = tmp_path / "t.txt"
    text.write_text("a few words\n")
    line = _refused(["inspect", str(model), "--text", str(text), "--out", str(tmp_path / "o")], capsys)
    assert needle in line and "model_type" not in line


def test_a_config_json_without_model_type_says_so(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    text = tmp_path / "t.txt"
    text.write_text("a few words\n")
    line = _refused(["inspect", str(model), "--text", str(text), "--out", str(tmp_path / "o")], capsys)
    assert "config.json has no model_type" in line and "None" not in line


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_eval_that_scores_no_token_is_refused_not_reported_as_a_loss_of_0(corpus, tmp_path, capsys, objective):
    # was: {"loss": 0.0, "accuracy": 0.0, "n_selected": 0.0}, which reads as a perfect score
    run = tmp_path / objective
    argv = _train(corpus, run, "--block-len", "16")  # an encoder reads all 16 tokens of a block
    argv[argv.index("--objective") + 1] = objective
    assert main(argv) == 0
    outside = tmp_path / "outside.txt"
    outside.write_text("zzzz qqqq xxxx ZZZZ\n" * 50)  # no word of it is in the run's vocabulary
    line = _refused(["eval", str(run), "--corpus", str(outside), "--device", "cpu"], capsys)
    assert "no token was scored" in line and repr(str(outside)) in line and "[UNK]" in line
    assert "outside the run's vocabulary" in line
    assert main(["eval", str(run), "--corpus", str(corpus), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["n_selected"] > 0


def test_a_run_whose_corpus_has_moved_still_generates_and_inspects_and_eval_names_run_json(
        clm_run, corpus, tmp_path, capsys):
    # was: all four refused with "corpus path ... does not exist", not saying it was the run's own corpus
    corpus.rename(tmp_path / "moved.txt")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\nthe dog ran under a tree.\n")
    assert main(["generate", str(clm_run), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert main(["inspect", str(clm_run), "--text", str(text), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert main(["eval", str(clm_run), "--corpus", str(text), "--device", "cpu"]) == 0
    capsys.readouterr()
    for command, remedy in (("eval", "give --corpus to evaluate on another corpus"), ("check", "put it back")):
        line = _refused([command, str(clm_run), "--device", "cpu"], capsys)
        assert f"the run's training corpus {str(corpus)!r} (recorded in {clm_run / 'run.json'}) is not found" in line
        assert remedy in line
    line = _refused(["eval", str(clm_run), "--corpus", str(text), "--format", "int8", "--device", "cpu"], capsys)
    assert "training corpus" in line and "int8 calibrates on its training split" in line


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
@pytest.mark.parametrize("command", ["eval", "check", "generate"])
def test_a_run_missing_its_tokenizer_or_config_is_refused_not_rebuilt(clm_run, capsys, name, command):
    (clm_run / name).unlink()
    line = _refused([command, str(clm_run), "--device", "cpu"], capsys)
    assert f"{clm_run / name} is missing" in line and "restore it" in line
    assert not (clm_run / name).exists()  # a read-only command writes nothing back


def test_a_config_whose_vocabulary_is_not_the_tokenizers_names_both_files(clm_run, capsys):
    path = clm_run / "config.json"
    cfg = json.loads(path.read_text())
    cfg["vocab_size"] += 1
    path.write_text(json.dumps(cfg))
    line = _refused(["eval", str(clm_run), "--device", "cpu"], capsys)
    assert str(path) in line and str(clm_run / "tokenizer.json") in line
    assert f"vocab_size={cfg['vocab_size']}" in line


def test_weights_of_another_model_are_refused_in_one_short_line(clm_run, corpus, tmp_path, capsys):
    from headwise.train.checkpoint import load_checkpoint
    from headwise.train.reader import load_run

    other = tmp_path / "wider"
    argv = _train(corpus, other)
    argv[argv.index("--model") + 1] = "n_layers=3,d_model=32,n_heads=2,d_ff=64,max_len=16"
    assert main(argv) == 0
    ckpt = next((other / "checkpoints").glob("step-*"))
    run = load_run(clm_run, device="cpu")
    with pytest.raises(ValueError, match="does not fit this model") as err:
        load_checkpoint(ckpt, run.objective, verify=False)
    msg = str(err.value)
    extra = len(load_run(other, device="cpu").objective.state_dict()) - len(run.objective.state_dict())
    # layers 1 and 2 are the extra ones: counted, and the first three named
    assert f"missing none; unexpected {extra} tensors (model.blocks.1." in msg and ", ...)" in msg
    assert len(msg) < 400, msg


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
def test_resuming_a_run_missing_its_tokenizer_or_config_is_refused_not_rebuilt(clm_run, capsys, name):
    """--resume rebuilt the missing file from the corpus and trained the checkpoint's
    weights on with it; now it refuses, as eval/check/generate do, and writes nothing."""
    (clm_run / name).unlink()
    before = sorted(p.relative_to(clm_run) for p in clm_run.rglob("*"))
    run_json = (clm_run / "run.json").read_bytes()
    line = _refused(["train", "--out", str(clm_run), "--resume", "--steps", "8", "--quiet", "--no-report"],
                    capsys)
    assert f"{clm_run / name} is missing" in line and "restore it" in line
    assert sorted(p.relative_to(clm_run) for p in clm_run.rglob("*")) == before
    assert (clm_run / "run.json").read_bytes() == run_json
