"""Programs the distributed tests start under torchrun (one per rank):

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed/_workers.py MODE OUT [ARGS]

MODE ``parallel``: head-parallel layers and models against the single-process model
(forward, backward, gathered gradients), and (dp, tp) meshes training like one process;
rank 0 writes ``OUT/parallel.json`` with the largest differences.
MODE ``kill``: a DistributedTrainer whose rank 1 SIGKILLs itself after step ``K``
(ARGS: a JSON TrainConfig and K).
MODE ``fast-clock``: a DistributedTrainer whose rank 0 reads a clock running fast, under
``--max-time`` (ARGS: a JSON TrainConfig).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
import time
import types
from pathlib import Path

import torch
import torch.distributed as dist

torch.set_num_threads(1)  # two processes share two cores


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _layer_case(name: str, results: dict, **kw) -> None:
    """One MultiHeadAttention: output and every full gradient vs the single-process layer."""
    from headwise.attention import MultiHeadAttention
    from headwise.distributed import HeadParallelAttention

    torch.manual_seed(0)
    full = MultiHeadAttention(32, kw.pop("n_heads"), 8, n_kv_heads=kw.pop("n_kv_heads"), bias=kw.pop("bias"),
                              rope=kw.pop("rope", False), backend="math")
    with torch.no_grad():  # nonzero biases, so a bias added twice would show
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    ref_x = x.clone().requires_grad_(True)
    ref = full(ref_x, key_padding_mask=pad, **kw)
    probe = torch.randn(ref.shape)  # a fixed random loss direction keeps the gradients O(1)
    (ref * probe).sum().backward()

    hp = HeadParallelAttention(copy.deepcopy(full))
    hp_x = x.clone().requires_grad_(True)
    out = hp(hp_x, key_padding_mask=pad, **kw)
    (out * probe).sum().backward()
    grads = hp.gather_full(grads=True)
    diffs = {"out": _max_diff(out, ref), "x.grad": _max_diff(hp_x.grad, ref_x.grad),
             "qkv_weight.grad": _max_diff(grads["qkv_weight"], full.qkv_weight.grad),
             "out_proj.weight.grad": _max_diff(grads["out_proj.weight"], full.out_proj.weight.grad)}
    if full.qkv_bias is not None:
        diffs["qkv_bias.grad"] = _max_diff(grads["qkv_bias"], full.qkv_bias.grad)
        diffs["out_proj.bias.grad"] = _max_diff(grads["out_proj.bias"], full.out_proj.bias.grad)
    weights = hp.gather_full()
    diffs["weights round trip"] = max(_max_diff(weights["qkv_weight"], full.qkv_weight),
                                      _max_diff(weights["out_proj.weight"], full.out_proj.weight))
    results[name] = diffs


def _model(seed: int = 0):
    from headwise.models import Decoder, ModelConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=16,
                      attn_backend="math")
    return Decoder(cfg)


def _lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def _mesh_case(dp: int, tp: int, results: dict) -> None:
    """3 SGD steps on a (dp, tp) mesh vs one process on the whole batch. (SGD rather than
    Adam: Adam's normalisation blows float32 rounding in near-zero gradients up to lr.)"""
    from headwise.distributed import full_state_dict, init_mesh, parallelize

    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for _ in range(3):
        ref_opt.zero_grad()
        _lm_loss(ref, ids).backward()
        ref_opt.step()

    mesh = init_mesh(dp, tp)
    model = _model()
    wrapped = parallelize(model, mesh)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    b = ids.shape[0] // dp
    d = mesh["dp"].get_local_rank()
    for _ in range(3):
        opt.zero_grad()
        _lm_loss(wrapped, ids[d * b : (d + 1) * b]).backward()
        opt.step()
    state = full_state_dict(model)
    ref_state = ref.state_dict()
    assert state.keys() == ref_state.keys(), sorted(set(state) ^ set(ref_state))
    results[f"mesh dp={dp} tp={tp}"] = {"weights after 3 steps": max(_max_diff(state[k], ref_state[k])
                                                                     for k in state)}
    # clean up the mesh's groups before the next case builds its own
    dist.barrier()


def parallel(out: Path) -> None:
    dist.init_process_group("gloo")
    results: dict = {}
    world = dist.get_world_size()
    if world == 4:  # the 2 x 2 grid (and 4 replicas); the layers' heads split 2 ways at most
        _mesh_case(2, 2, results)
        _mesh_case(4, 1, results)
        if dist.get_rank() == 0:
            (out / "parallel.json").write_text(json.dumps(results, indent=1))
        dist.destroy_process_group()
        return
    _layer_case("mha", results, n_heads=4, n_kv_heads=4, bias=True)
    _layer_case("gqa causal no-bias", results, n_heads=4, n_kv_heads=2, bias=False, causal=True)
    _layer_case("mqa-per-rank rope", results, n_heads=6, n_kv_heads=2, bias=True, rope=True, causal=True)

    # a whole decoder: forward, backward, and the gradients of the gathered model
    from headwise.distributed import full_state_dict, parallelize_heads

    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    ref = _model()
    ref_loss = _lm_loss(ref, ids)
    ref_loss.backward()
    model = parallelize_heads(_model())
    loss = _lm_loss(model, ids)
    loss.backward()
    for p in model.parameters():  # gather the gradients through the state-dict path
        p.data.copy_(p.grad)
    grads = full_state_dict(model)
    diffs = {"loss": abs(loss.item() - ref_loss.item())}
    for k, p in ref.named_parameters():
        diffs[k + ".grad"] = _max_diff(grads[k], p.grad)
    results["decoder"] = diffs

    _mesh_case(1, world, results)
    _mesh_case(world, 1, results)
    if dist.get_rank() == 0:
        (out / "parallel.json").write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()


def kill(out: Path, cfg_json: str, kill_after: int) -> None:
    from headwise.distributed.trainer import DistributedTrainer
    from headwise.train import TrainConfig

    class Killed(DistributedTrainer):
        def train_step(self):
            metrics = super().train_step()
            if self.env.rank == 1 and self.step == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no cleanup, no exception
            return metrics

    Killed(TrainConfig(**json.loads(cfg_json)), progress=False).run()


def fast_clock(out: Path, cfg_json: str) -> None:
    """Rank 0's clock runs 10,000 times fast, so that it alone finds --max-time reached
    after its first step."""
    import headwise.train.loop as loop
    from headwise.distributed.trainer import DistributedTrainer
    from headwise.train import TrainConfig

    if int(os.environ["RANK"]) == 0:
        real = time.perf_counter
        loop.time = types.SimpleNamespace(perf_counter=lambda: real() * 10_000)
    DistributedTrainer(TrainConfig(**json.loads(cfg_json)), progress=False).run()


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "parallel":
        parallel(out)
    elif mode == "kill":
        kill(out, sys.argv[3], int(sys.argv[4]))
    elif mode == "fast-clock":
        fast_clock(out, sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
