"""Data parallel and head parallel training, on one machine with 2 processes and gloo.

Each multi-process test starts real processes (torchrun, or ``headwise train
--nproc``) on tiny models and compares with the single-process run in this process:

* head-parallel layers and models: forward, backward, gathered gradients (1e-5);
* (dp, tp) meshes (1, 2) and (2, 1) train like one process on the whole batch;
* 2-rank DDP with per-rank batch b ends with the weights of one process with batch 2b;
* head-parallel training through the trainer (torchrun -m headwise train --tp 2) too;
* a rank SIGKILLed mid-run leaves the last checkpoint intact; the run resumes from
  it on 1 rank and ends where the uninterrupted single-process run ends;
* SIGINT or SIGTERM sent to the --nproc launcher alone stops its workers too.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headwise.distributed import DistEnv
from headwise.distributed.comm import communication_volume, ring_allreduce_bytes
from headwise.distributed.comm import main as comm_main
from headwise.distributed.ddp import free_port
from headwise.distributed.head_parallel import check_head_parallel, head_slices
from headwise.models import get_preset
from headwise.train import TrainConfig, Trainer
from headwise.train.checkpoint import latest_checkpoint

WORKERS = Path(__file__).with_name("_workers.py")
WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()
TOL = 1e-5


def _torchrun(nproc: int, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------------- run fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic corpus, an isolated block cache, and the single-process
    reference run (8 steps of a global batch of 8)."""
    root = tmp_path_factory.mktemp("dist")
    rng = random.Random(0)
    docs = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(5))
            for _ in range(300)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(docs))
    env = {"HEADWISE_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", env["HEADWISE_CACHE"])
        ref = Trainer(_cfg(corpus, root / "reference"), progress=False)
        ref.run()
    return {"root": root, "corpus": corpus, "env": env, "reference": root / "reference"}


def _cfg(corpus, out, **kw) -> TrainConfig:
    base = dict(objective="mlm", corpus=str(corpus), out=str(out), steps=8, batch_size=8, block_len=32,
                vocab_size=300, warmup=2, eval_every=4, eval_batches=2, log_every=2, checkpoint_every=4,
                dropout=0.0, model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64},
                sanity_checks=False, device="cpu",
                # fp32 pinned: the runs compared split the batch differently, and bf16
                # autocast (what auto picks on a CPU with AVX512-BF16) rounds each split
                # its own way, so only fp32 can agree to TOL
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


def _cli_args(cfg: TrainConfig) -> list[str]:
    model = ",".join(f"{k}={v}" for k, v in cfg.model.items())
    return ["--objective", cfg.objective, "--corpus", cfg.corpus, "--out", cfg.out, "--steps", str(cfg.steps),
            "--batch-size", str(cfg.batch_size), "--block-len", str(cfg.block_len), "--vocab-size",
            str(cfg.vocab_size), "--warmup", str(cfg.warmup), "--eval-every", str(cfg.eval_every),
            "--eval-batches", str(cfg.eval_batches), "--log-every", str(cfg.log_every), "--checkpoint-every",
            str(cfg.checkpoint_every), "--dropout", str(cfg.dropout), "--model", model, "--no-sanity-checks",
            "--device", cfg.device, "--precision", cfg.precision, "--quiet"]


def _weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir) if step is None else run_dir / "checkpoints" / f"step-{step:08d}"
    return load_file(str(ckpt / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict, tol: float = TOL) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= tol, f"largest weight difference {worst:g} > {tol:g}"


# ---------------------------------------------------------------------- head parallel
def test_head_parallel_layers_models_and_meshes_match_one_process(tmp_path):
    r = _torchrun(2, str(WORKERS), "parallel", str(tmp_path), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "parallel.json").read_text())
    assert {"mha", "gqa causal no-bias", "mqa-per-rank rope", "decoder", "mesh dp=1 tp=2",
            "mesh dp=2 tp=1"} <= set(results)
    for case, diffs in results.items():
        for what, diff in diffs.items():
            assert diff <= TOL, f"{case}: {what} differs by {diff:g}"
    # the out_proj bias is added once: its gradient is the single-process one, not twice it
    assert results["mha"]["out_proj.bias.grad"] <= TOL


@pytest.mark.slow
def test_two_by_two_mesh_matches_one_process(tmp_path):
    r = _torchrun(4, str(WORKERS), "parallel", str(tmp_path), env={"OMP_NUM_THREADS": "1"}, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "parallel.json").read_text())
    assert results["mesh dp=2 tp=2"]["weights after 3 steps"] <= TOL
    assert results["mesh dp=4 tp=1"]["weights after 3 steps"] <= TOL


def test_head_slices_pick_each_ranks_q_k_v_rows():
    # H=4, Hkv=2, Dh=1: rows Q0..Q3 = 0..3, K0,K1 = 4,5, V0,V1 = 6,7
    rows0, cols0 = head_slices(4, 2, 1, rank=0, degree=2)
    rows1, cols1 = head_slices(4, 2, 1, rank=1, degree=2)
    assert rows0.tolist() == [0, 1, 4, 6] and cols0.tolist() == [0, 1]
    assert rows1.tolist() == [2, 3, 5, 7] and cols1.tolist() == [2, 3]
    # not the contiguous halves a plain column-parallel sharding would take
    assert rows0.tolist() != list(range(4))


def test_degree_must_divide_the_heads():
    with pytest.raises(ValueError, match=r"n_heads divisible by it, got n_heads=6 .* degrees that work: \[1, 2\]"):
        check_head_parallel(6, 2, 4)
    with pytest.raises(ValueError, match="n_kv_heads divisible"):
        check_head_parallel(4, 1, 2)
    with pytest.raises(ValueError, match=r"tp=3 must divide the number of processes \(4\)"):
        DistEnv(0, 4, 0, tp=3)


def test_global_batch_must_split_evenly_before_any_process_starts(tmp_path):
    from headwise.app.launch import launch

    with pytest.raises(ValueError, match=r"--batch-size 6 .* divisible by the number of data-parallel replicas, 4"):
        launch(_cfg("x.txt", tmp_path / "r", batch_size=6), 4)


# ---------------------------------------------------------------------- data parallel
def test_two_rank_ddp_matches_one_process_with_twice_the_batch(world):
    """headwise train --nproc 2: each rank takes 4 blocks of the global 8."""
    out = world["root"] / "ddp"
    cfg = _cfg(world["corpus"], out)
    r = subprocess.run([sys.executable, "-m", "headwise.cli", "train", "--nproc", "2", *_cli_args(cfg)],
                       capture_output=True, text=True, timeout=240, env={**os.environ, **world["env"]})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes (dp 2 x tp 1)" in r.stdout
    _assert_same_weights(_weights(out), _weights(world["reference"]))
    # rank 0 alone wrote one log, with the global batch's metrics
    mine = [x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if x["split"] == "train"]
    ref = [x for x in map(json.loads, (world["reference"] / "metrics.jsonl").read_text().splitlines())
           if x["split"] == "train"]
    assert [x["step"] for x in mine] == [x["step"] for x in ref]
    for a, b in zip(mine, ref, strict=True):
        assert a["n_selected"] == b["n_selected"]  # the same masks
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_head_parallel_training_through_torchrun_matches_one_process(world):
    """torchrun -m headwise train --tp 2: heads split over 2 ranks; the checkpoint is in
    the single-process format, optimizer state included."""
    out = world["root"] / "tp"
    cfg = _cfg(world["corpus"], out)
    r = _torchrun(2, "-m", "headwise", "train", "--tp", "2", *_cli_args(cfg), env=world["env"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _assert_same_weights(_weights(out), _weights(world["reference"]))
    a = torch.load(latest_checkpoint(out) / "trainer.pt", weights_only=False)["optimizer"]["state"]
    b = torch.load(latest_checkpoint(world["reference"]) / "trainer.pt", weights_only=False)["optimizer"]["state"]
    for i in b:
        assert a[i]["exp_avg"].shape == b[i]["exp_avg"].shape
        assert (a[i]["exp_avg"] - b[i]["exp_avg"]).abs().max() <= TOL


def test_killed_rank_leaves_the_checkpoint_and_the_run_resumes_on_one_rank(world):
    out = world["root"] / "killed"
    cfg = _cfg(world["corpus"], out)
    cfg_json = json.dumps({**cfg.__dict__, "betas": list(cfg.betas)})
    r = _torchrun(2, str(WORKERS), "kill", str(out), cfg_json, "6", env=world["env"])
    assert r.returncode != 0  # rank 1 died at step 6; torchrun stopped rank 0
    assert "SIGKILL" in r.stderr or "exitcode  : -9" in r.stderr, r.stderr[-2000:]
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-00000004"
    _assert_same_weights(_weights(out), _weights(world["reference"], step=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", world["env"]["HEADWISE_CACHE"])
        resumed = Trainer(cfg, resume=True, progress=False)
        assert resumed.step == 4
        resumed.run()
    # same data order and masks on 1 rank as the 2-rank run would have had
    _assert_same_weights(_weights(out), _weights(world["reference"]))


# ---------------------------------------------------------------------- communication volume
def test_communication_volume_of_gpt2_small_by_hand():
    cfg = get_preset("gpt2-small")
    v = communication_volume(cfg, batch=8, seq=1024, dp=8, tp=2, dtype="fp32")
    params = 124_439_808  # GPT2LMHeadModel
    # per layer, head parallelism splits QKV (3*768*768 + 3*768) and W_O (768*768)
    sharded = 12 * (3 * 768 * 768 + 3 * 768 + 768 * 768)
    per_rank = params - sharded // 2
    assert v["params"] == params and v["params_per_rank"] == per_rank == 110_270_208
    assert v["dp_bytes"] == 2 * 7 / 8 * per_rank * 4 == 771_891_456
    assert v["tp_buffer_bytes"] == 8 * 1024 * 768 * 4
    assert v["tp_allreduces"] == 24  # 12 layers x (forward + backward)
    assert v["tp_bytes"] == 24 * (2 * 1 / 2) * 8 * 1024 * 768 * 4 == 603_979_776
    assert v["total_bytes"] == v["dp_bytes"] + v["tp_bytes"]
    # pure data parallel: every gradient, no activation traffic
    d = communication_volume(cfg, 8, 1024, dp=4, tp=1, dtype=torch.bfloat16, accum=4)
    assert d["dp_bytes"] == 2 * 3 / 4 * params * 2 and d["tp_bytes"] == 0
    # accumulation multiplies activation traffic only
    a = communication_volume(cfg, 8, 1024, dp=8, tp=2, dtype="fp32", accum=3)
    assert a["tp_bytes"] == 3 * v["tp_bytes"] and a["dp_bytes"] == v["dp_bytes"]
    assert ring_allreduce_bytes(100.0, 1) == 0.0


def test_communication_volume_rejects_bad_input_and_prints(capsys):
    cfg = get_preset("gpt2-small")
    with pytest.raises(ValueError, match="n_heads divisible"):
        communication_volume(cfg, 8, 1024, tp=5)
    with pytest.raises(ValueError, match="dtype must be one of"):
        communication_volume(cfg, 8, 1024, dtype="int3")
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        communication_volume(cfg, 0, 1024)
    assert comm_main(["--preset", "gpt2-small", "--dp", "8", "--tp", "2", "--seq", "1024", "--batch", "8",
                      "--dtype", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "16 ranks = dp 8 x tp 2" in text and "110,270,208 per rank" in text and "24 all-reduces" in text


# ---------------------------------------------------------------------- the launcher's edges
def test_a_finished_run_resumed_with_nproc_tells_its_story_from_run_json(world, tmp_path):
    """``headwise train --resume --nproc 2 --out RUN`` names no other setting: after the
    processes find nothing left to train, the story reopens the run with run.json's
    settings (it refused the flags' defaults as changes: '--corpus ... differs')."""
    import shutil

    run = tmp_path / "finished"
    shutil.copytree(world["reference"], run)
    r = subprocess.run([sys.executable, "-m", "headwise.cli", "train", "--nproc", "2", "--resume", "--out", str(run),
                        "--no-report", "--quiet"],
                       capture_output=True, text=True, timeout=240, env={**os.environ, **world["env"]})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "differs" not in r.stderr
    assert "Traceback" not in r.stderr


def test_a_failed_worker_is_one_line_and_status_1(monkeypatch, tmp_path, capsys):
    """A process that raised: launch() catches torch's ProcessException (it once named
    ``torch.multiprocessing.ProcessException``, which does not exist: an AttributeError
    traceback instead of the message)."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    import headwise.app.launch as launch_mod

    def failing_spawn(*args, **kwargs):
        raise ProcessRaisedException("-- Process 1 terminated with the following error: boom", 1, 4242)

    monkeypatch.setattr(launch_mod.mp, "spawn", failing_spawn)
    assert launch_mod.launch(_cfg("x.txt", tmp_path / "r", batch_size=8), 2) == 1
    assert "boom" in capsys.readouterr().err


def test_max_time_stops_every_rank_at_the_same_step(world):
    """--max-time on 2 ranks whose clocks disagree (rank 0's runs fast): both stop after
    step 1 and the run ends cleanly, where rank 0 once stopped alone and rank 1 went on
    into a reduction nobody answered."""
    out = world["root"] / "max_time"
    cfg = _cfg(world["corpus"], out, max_time=0.5)  # (8 steps at most)
    cfg_json = json.dumps({**cfg.__dict__, "betas": list(cfg.betas)})
    r = _torchrun(2, str(WORKERS), "fast-clock", str(out), cfg_json, env=world["env"], timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert latest_checkpoint(out).name == "step-00000001"


@pytest.mark.parametrize("sig, status, how", [("SIGINT", 130, "interrupted"),
                                              ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_a_signal_to_the_launcher_alone_stops_its_workers(world, sig, status, how):
    """``kill -INT`` or ``kill -TERM`` of the ``--nproc`` launcher's pid (a process
    manager's or a scheduler's stop, not a terminal's Ctrl-C to the whole group): was, on
    SIGINT the launcher said 'interrupted; its last checkpoint is step-...' while its
    workers trained on to the end, and exited only then; on SIGTERM it died without a word."""
    import signal
    import time

    out = world["root"] / f"signal-{sig}"
    cfg = _cfg(world["corpus"], out, steps=100_000, checkpoint_every=2, eval_every=100_000)
    proc = subprocess.Popen(  # SIGINT at its default (a background job's may be ignored)
        [sys.executable, "-m", "headwise.cli", "train", "--nproc", "2", *_cli_args(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **world["env"]},
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(out) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.2)
        os.kill(proc.pid, getattr(signal, sig))
        text, _ = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its session (the workers too)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == status, text[-3000:]
    kept = latest_checkpoint(out)
    assert f"headwise train: {how}; its last checkpoint is {kept.name}" in text, text[-3000:]
    time.sleep(2)
    assert latest_checkpoint(out) == kept  # no worker trains on
