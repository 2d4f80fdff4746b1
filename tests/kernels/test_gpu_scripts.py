"""The GPU scripts' CPU-side parts: argument parsing, plans, tables, the peers'
wrappers and the shell script's syntax and dry run (the measuring itself needs a GPU:
bash bench/gpu_check.sh)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ga():
    return load("gpu_attention")


@pytest.fixture(scope="module")
def gd():
    return load("gpu_dispatch")


def test_attention_bench_arguments(ga):
    args = ga.parse_args([])
    assert args.peers == ga.TORCH_IMPLS + ["fa4"] and not args.no_auto
    args = ga.parse_args(["--peers", "flash", "fa4", "--no-auto"])
    assert args.no_flex and args.no_auto
    with pytest.raises(SystemExit):
        ga.parse_args(["--peers", "nope"])


def test_fa4_is_optional_and_called_in_its_layout(ga, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # "not installed"
    fn, why = ga.fa4_function()
    assert fn is None and "flash-attn-4 unavailable" in why
    monkeypatch.undo()

    seen = {}

    def fake_fa4(q, k, v, causal=False):  # (B, T, H, D) in and out, returns (out, lse)
        seen["shape"] = tuple(q.shape)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2), None

    impls = ga.make_impls(None, ["fa4"], fa4=fake_fa4, auto=True)
    assert [n for n in impls if n != "headwise"] == ["fa4", "sdpa", "auto"]
    q, k, v = (torch.randn(2, 7, 3, 16).transpose(1, 2) for _ in range(3))  # (B, H, T, D) views
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(impls["fa4"](q, k, v, True), want)
    assert seen["shape"] == (2, 7, 3, 16)
    # the layer-level columns run headwise's attend (auto: sdpa on the CPU)
    torch.testing.assert_close(impls["auto"](q, k, v, True), want)
    torch.testing.assert_close(impls["sdpa"](q, k, v, True), want)
    choice = ga.auto_choices(q, k, v, True)
    assert choice["fwd"].startswith("sdpa") and choice["fwd+bwd"].startswith("sdpa")


def test_attention_tables_show_the_extra_columns(ga):
    def row(tf):
        return {"head_dim": 128, "seq": 1024, "batch": 16, "causal": True,
                "tflops": {"fwd": tf, "fwd+bwd": tf}}

    rows = [row({"headwise": 400.0, "flash": 300.0, "cudnn": 500.0, "sdpa": 480.0,
                 "auto": 470.0, "fa4": 600.0}),
            row({"headwise": 400.0, "cudnn": 500.0})]
    text = ga.tables(rows, peak=1000.0)
    header = next(line for line in text.splitlines() if line.startswith("| D |"))
    assert "| fa4 | sdpa | auto |" in header and "auto / best" in header
    assert "| 0.98 |" in text  # auto 470 over the better of sdpa 480 and tiled 400
    assert ga._auto_ratio({"headwise": 400.0}) is None
    # without those peers the table keeps its old columns
    plain = ga.tables([rows[1]], peak=None)
    assert "fa4" not in plain and "auto" not in plain


def test_dispatch_check_plan_and_arguments(gd, tmp_path, monkeypatch, capsys):
    args = gd.parse_args([])
    cases = gd.plan(args)
    assert len(cases) == 27 and len(set(cases)) == 27
    first8 = cases[:8]  # a run cut short has both head dims and both modes
    assert {c.head_dim for c in first8} == {128, 64} and {c.training for c in first8} == {True, False}
    assert any(c.kv_heads < c.heads for c in cases) and any(c.lengths for c in cases)
    assert any(c.q_len == 1 for c in cases)
    assert len(gd.plan(gd.parse_args(["--quick"]))) == 4
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gd.parse_args([]).cache == tmp_path / "dispatch_cache.json"
    for bad in (["--tolerance", "1.5"], ["--seqs", "0"], ["--head-dims", "300"], ["--rep-ms", "0"]):
        with pytest.raises(SystemExit):
            gd.parse_args(bad)
    assert gd.main(["--dry-run", "--quick"]) == 0
    assert "4 cases" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert gd.main(["--quick"]) == 2


def test_gpu_check_script_syntax_and_dry_run(tmp_path):
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = dict(os.environ, OUT=str(tmp_path), DRY_RUN="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("gpu tests", "dispatch", "benchmark", "summary"):
        assert step in done.stdout
    assert "bench/gpu_dispatch.py --budget-s" in done.stdout
    assert (tmp_path / "gpu_check_summary.json").exists()
