"""--precision: what auto picks, what a run records, and that a bf16 run learns like an
fp32 one (its loss curve stays within the spread between two fp32 seeds)."""

import json

import pytest
import torch
from tiny_runs import tiny_cfg, write_corpus

from headwise.cli import main
from headwise.hardware.precision import native_bf16, resolve_precision
from headwise.train import TrainConfig, Trainer

NATIVE = (True, "this CPU has AMX_BF16")
EMULATED = (False, "this CPU lacks AVX512_BF16 and AMX-BF16")


def test_auto_picks_bf16_only_where_native():
    p = resolve_precision("auto", "cpu", support=NATIVE)
    assert (p.used, p.native_bf16, p.autocast_dtype) == ("bf16", True, torch.bfloat16)
    p = resolve_precision("auto", "cpu", support=EMULATED)
    assert (p.used, p.autocast_dtype) == ("fp32", None)
    assert "fp32" in p.note and "lacks" in p.note


def test_explicit_settings_are_kept_and_emulation_is_said():
    p = resolve_precision("bf16", "cpu", support=EMULATED)
    assert p.used == "bf16" and not p.native_bf16
    assert "emulated" in p.note and "slower" in p.note
    assert resolve_precision("fp32", "cpu", support=NATIVE).used == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be"):
        TrainConfig(precision="fp16")


def test_cpu_detection_reads_the_flags():
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    if not flags:
        pytest.skip("no x86 flags line")
    native, why = native_bf16("cpu")
    assert native == bool(flags & {"avx512_bf16", "amx_bf16"}), why


def curve(corpus, tmp_path, name, **kw):
    cfg = tiny_cfg(corpus, tmp_path / name, objective="clm", steps=24, log_every=1, eval_every=24,
                   checkpoint_every=24, dropout=0.0, lr=3e-3, warmup=4, **kw)
    t = Trainer(cfg, progress=False)
    t.run()
    rows = [r for r in t.metrics.read() if r["split"] == "train"]
    return t, torch.tensor([r["loss"] for r in rows])


def test_bf16_loss_curve_within_the_fp32_seed_spread(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    corpus = write_corpus(tmp_path / "c.txt")
    t32, fp32 = curve(corpus, tmp_path, "a", precision="fp32", seed=0)
    _, other_seed = curve(corpus, tmp_path, "b", precision="fp32", seed=1)
    t16, bf16 = curve(corpus, tmp_path, "c", precision="bf16", seed=0)
    assert fp32[-1] < 0.8 * fp32[0]  # it learns
    seed_spread = (other_seed - fp32).abs().mean()
    assert (bf16 - fp32).abs().mean() < seed_spread
    # what ran is on record beside run.json's request
    assert json.loads((t16.run_dir / "precision.json").read_text())["used"] == "bf16"
    assert json.loads((t32.run_dir / "run.json").read_text())["precision"] == "fp32"


@pytest.mark.parametrize("objective", ["mlm", "rtd", "clm"])
def test_every_objective_trains_under_bf16_autocast(tmp_path, monkeypatch, objective):
    """ELECTRA's projected embeddings hand bf16 activations to fp32 attention weights."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    corpus = write_corpus(tmp_path / "c.txt")
    t = Trainer(tiny_cfg(corpus, tmp_path / "run", objective=objective, steps=2, eval_every=2,
                         checkpoint_every=2, precision="bf16"), progress=False)
    val = t.run()
    assert torch.isfinite(torch.tensor(val["loss"]))
    assert all(p.dtype == torch.float32 for p in t.objective.parameters())  # fp32 master weights


def test_cli_flag_and_auto_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--precision {auto,fp32,bf16}" in help_text and "(the default)" in help_text
    corpus = write_corpus(tmp_path / "c.txt")
    t = Trainer(tiny_cfg(corpus, tmp_path / "run", steps=2, eval_every=2, checkpoint_every=2),
                progress=False)
    t.run()
    record = json.loads((t.run_dir / "precision.json").read_text())
    assert record["requested"] == "auto"
    assert record["used"] == ("bf16" if native_bf16("cpu")[0] else "fp32")
    assert isinstance(record["cpu_linear"]["onednn"], bool)  # whose float32 GEMMs ran
    assert isinstance(record["malloc"]["applied"], bool)  # whether freed memory is kept
