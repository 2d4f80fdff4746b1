"""An attention backend that cannot train the run's model on its device (no backward,
needs a GPU or Triton, unknown) is refused before anything is written to --out, in one
line naming ``--model attn_backend=...``, why, and the backends that can; and a new run
that fails on a setting before its first checkpoint leaves no folder that would block the
corrected command (a run with a checkpoint, or a resumed one, is kept)."""

import json

import pytest
from tiny_runs import tiny_cfg, tiny_cli_args, write_corpus

from headwise.cli import main
from headwise.train import Trainer
from headwise.train.rundir import MANIFEST


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt", docs=120)


def _cli(corpus, out, backend, *extra):
    args = tiny_cli_args(corpus, out, "--device", "cpu", "--precision", "fp32", "--steps", "2", "--warmup", "1", *extra)
    i = args.index("--model") + 1
    args[i] += f",attn_backend={backend}"
    return args


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("backend, why", [
    ("int8", "forward-only"),
    ("tiled", "TRITON_INTERPRET=1"),
])
def test_cli_refuses_a_backend_that_cannot_train_before_writing_out(corpus, tmp_path, monkeypatch, capsys,
                                                                     backend, why):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # a CPU without the Triton interpreter
    out = tmp_path / "run"
    assert main(_cli(corpus, out, backend)) == 2
    err = _one_error_line(capsys)
    assert f"--model attn_backend={backend}" in err and why in err, err
    assert "backends that can: auto, sdpa, math, reference" in err, err
    assert not out.exists()


def test_cli_names_model_for_an_unknown_backend(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(corpus, out, "foo")) == 2
    err = _one_error_line(capsys)
    assert "--model attn_backend=foo" in err and "no such attention backend" in err, err
    assert "auto, tiled, sdpa, math, int8, reference" in err, err
    assert not out.exists()


def test_refusal_counts_attention_dropout_and_eval(corpus, tmp_path, capsys):
    """tiled has no attention dropout (the Triton interpreter is on here, as in the suite)."""
    out = tmp_path / "run"
    args = _cli(corpus, out, "tiled")
    args[args.index("--model") + 1] += ",attn_dropout=0.1"
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert "--model attn_backend=tiled" in err and "dropout" in err, err
    assert not out.exists()


def test_trainer_refuses_before_leaving_a_folder(corpus, tmp_path, monkeypatch):
    """The library path (no CLI pre-check): the Trainer's failed start removes its folder."""
    out = tmp_path / "run"
    model = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "attn_backend": "int8"}
    with pytest.raises(ValueError, match=r"--model attn_backend=int8 cannot train .*forward-only"):
        Trainer(tiny_cfg(corpus, out, model=model, device="cpu", precision="fp32"), progress=False)
    assert not out.exists()


def _failing_step(trainer, at_step):
    real = trainer.train_step

    def step():
        if trainer.step == at_step:
            raise ValueError("a setting this run cannot use")
        return real()
    trainer.train_step = step


def test_a_setting_failing_at_the_first_step_leaves_no_folder(corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, steps=2, device="cpu", precision="fp32")
    t = Trainer(cfg, progress=False)
    _failing_step(t, 0)
    with pytest.raises(ValueError, match="cannot use"):
        t.run()
    assert not out.exists()
    Trainer(cfg, progress=False).run()  # the corrected command needs no --overwrite
    assert (out / "checkpoints").is_dir()


def test_a_failure_after_training_steps_keeps_the_folder_and_its_metrics(corpus, tmp_path):
    """No checkpoint yet, but steps were trained: what they logged stays for the user to read."""
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, steps=4, checkpoint_every=100, log_every=1, device="cpu", precision="fp32")
    t = Trainer(cfg, progress=False)
    _failing_step(t, 2)
    with pytest.raises(ValueError):
        t.run()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    assert (out / "run.json").is_file() and (out / "metrics.jsonl").read_text().strip()


def test_a_failure_after_a_checkpoint_keeps_the_run_resumable(corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, steps=4, checkpoint_every=1, eval_every=2, device="cpu", precision="fp32")
    t = Trainer(cfg, progress=False)
    _failing_step(t, 2)
    with pytest.raises(ValueError):
        t.run()
    assert (out / "run.json").is_file() and any((out / "checkpoints").iterdir())
    r = Trainer(cfg, resume=True, progress=False)
    assert r.step == 2
    # a resumed run that fails is not removed either, even with no checkpoint reached this time
    _failing_step(r, 2)
    with pytest.raises(ValueError):
        r.run()
    assert (out / "run.json").is_file()


def test_overwrite_with_entries_of_the_user_keeps_the_manifest(corpus, tmp_path):
    """After --overwrite, a failed new run leaves the user's files and the manifest, so
    the corrected --overwrite command still runs there."""
    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, steps=2, device="cpu", precision="fp32")
    Trainer(cfg, progress=False).run()
    (out / "notes.md").write_text("mine")
    t = Trainer(cfg, overwrite=True, progress=False)
    _failing_step(t, 0)
    with pytest.raises(ValueError):
        t.run()
    assert (out / "notes.md").read_text() == "mine"
    assert not (out / "run.json").exists() and not (out / "checkpoints").exists()
    assert "run.json" in json.loads((out / MANIFEST).read_text())["entries"]
    Trainer(cfg, overwrite=True, progress=False).run()
    assert (out / "notes.md").read_text() == "mine"


def test_a_refused_resume_leaves_run_json_as_it_was(corpus, tmp_path, monkeypatch):
    """A resume with a new target rewrites run.json; if its start then fails, the old one is back."""
    import dataclasses

    import headwise.train.loop as loop

    out = tmp_path / "run"
    cfg = tiny_cfg(corpus, out, steps=2, device="cpu", precision="fp32")
    Trainer(cfg, progress=False).run()
    before = (out / "run.json").read_bytes()

    def failing_build(*args, **kwargs):
        raise ValueError("a setting this run cannot use")

    monkeypatch.setattr(loop, "build_parts", failing_build)
    with pytest.raises(ValueError, match="cannot use"):
        Trainer(dataclasses.replace(cfg, steps=4), resume=True, progress=False)
    assert (out / "run.json").read_bytes() == before
    assert any((out / "checkpoints").iterdir())  # and the run is still there to resume
