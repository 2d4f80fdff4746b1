"""A resume on another device (``--device`` is a setting a resume may change, and
``auto`` picks a GPU where there is one): the trainer state is loaded onto the CPU, where
the random states must be to be restored, and a masking stream drawn on another kind of
device starts afresh, said, rather than stopping the run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import tiny_cfg, write_corpus

from headwise.train import Trainer
from headwise.train.checkpoint import FILES, MANIFEST, _sha256, checkpoint_report


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    return write_corpus(tmp_path / "corpus.txt")


def _rewrite_trainer_state(ckpt, change) -> None:
    """Change checkpoint ``ckpt``'s trainer.pt, and its manifest with it (as a run that
    wrote it so would have)."""
    state = torch.load(ckpt / "trainer.pt", weights_only=False)
    change(state)
    torch.save(state, ckpt / "trainer.pt")
    files = {f: {"bytes": (ckpt / f).stat().st_size, "sha256": _sha256(ckpt / f)} for f in FILES}
    (ckpt / MANIFEST).write_text(json.dumps({"step": state["step"], "files": files}))


def test_a_masking_stream_from_a_gpu_run_starts_afresh_on_the_cpu(corpus, tmp_path, capsys):
    """A CUDA generator's state (16 bytes) does not fit the CPU's (5056): the resume used
    to stop with "Expected a CPUGeneratorImplState of size 5056 but found ... 16"."""
    run = tmp_path / "run"
    Trainer(tiny_cfg(corpus, run), progress=False).run(until_step=4)
    ckpt = run / "checkpoints" / "step-00000004"

    def as_on_a_gpu(state):
        state["rng"]["generators"]["mask"] = torch.zeros(16, dtype=torch.uint8)
        state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2

    _rewrite_trainer_state(ckpt, as_on_a_gpu)
    assert all(problem is None for _, problem in checkpoint_report(run))
    t = Trainer(tiny_cfg(corpus, run), resume=True, progress=False)
    assert t.step == 4
    assert "masking random stream of step-00000004 was drawn on another kind of device" in capsys.readouterr().err
    assert any("starts afresh" in n for n in t.resume_notes)
    t.run()
    # reproducible: the same resume again ends with the same weights
    first = load_file(str(run / "checkpoints" / "step-00000008" / "model.safetensors"))
    again = tmp_path / "again"
    Trainer(tiny_cfg(corpus, again), progress=False).run(until_step=4)
    _rewrite_trainer_state(again / "checkpoints" / "step-00000004", as_on_a_gpu)
    Trainer(tiny_cfg(corpus, again), resume=True, progress=False).run()
    second = load_file(str(again / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.gpu
@pytest.mark.parametrize("before", ["cuda", "cpu"])
def test_a_resume_on_a_gpu(corpus, tmp_path, before):
    """Mapped onto the GPU, the random states were refused ("RNG state must be a
    torch.ByteTensor"): no run could resume there. From the GPU it is exact."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    if before == "cuda":
        Trainer(tiny_cfg(corpus, ref, device="cuda"), progress=False).run()
    Trainer(tiny_cfg(corpus, run, device=before), progress=False).run(until_step=4)
    t = Trainer(tiny_cfg(corpus, run, device="cuda"), resume=True, progress=False,
                changes={"device": "cuda"})
    assert t.step == 4
    t.run()
    if before == "cuda":
        a = load_file(str(ref / "checkpoints" / "step-00000008" / "model.safetensors"))
        b = load_file(str(run / "checkpoints" / "step-00000008" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_in_another_number_format_says_so(corpus, tmp_path, capsys, monkeypatch):
    """``--precision auto`` is bf16 on a device with native bf16, else fp32: a resume on
    another machine switched the run's number format without a word."""
    import headwise.train.loop as loop

    run = tmp_path / "run"
    Trainer(tiny_cfg(corpus, run, precision="auto"), progress=False).run(until_step=4)
    used = json.loads((run / "precision.json").read_text())["used"]
    capsys.readouterr()
    Trainer(tiny_cfg(corpus, run, precision="auto"), resume=True, progress=False)  # on the same machine
    assert "trains in" not in capsys.readouterr().err
    real = loop.resolve_precision
    monkeypatch.setattr(loop, "resolve_precision",
                        lambda req, dev: real(req, dev, support=(used == "fp32", "another machine")))
    Trainer(tiny_cfg(corpus, run, precision="auto"), resume=True, progress=False)
    other = "bf16" if used == "fp32" else "fp32"
    assert f"warning: this resume trains in {other}, the run so far trained in {used}" in capsys.readouterr().err
