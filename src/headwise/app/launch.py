"""Starting a training run on several processes: :func:`launch` (``headwise train --nproc
N``: N local processes) and :func:`run_distributed` (one rank's share, inside torchrun or
a launched process). Each rank trains a :class:`headwise.distributed.DistributedTrainer`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from ..checks import check_int
from ..distributed.ddp import DistEnv, free_port
from ..distributed.trainer import DistributedTrainer
from ..kernels import get_tiled_options, set_tiled_options
from ..train.config import TrainConfig

__all__ = ["launch", "run_distributed"]


def run_distributed(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                    tp: int = 1, changes: dict[str, Any] | None = None) -> DistributedTrainer:
    """Train this rank's part of ``cfg`` to the end (inside torchrun or :func:`launch`),
    print the result on rank 0, leave the process group. Returns the trainer."""
    trainer = DistributedTrainer(cfg, resume=resume, overwrite=overwrite, progress=progress, tp=tp,
                                 changes=changes)
    try:
        val = trainer.run()
        if trainer.is_main:
            print(f"run {trainer.run_dir}: step {trainer.step}; {trainer.env.world_size} processes "
                  f"(dp {trainer.env.dp} x tp {trainer.env.tp}); validation "
                  + json.dumps({k: round(v, 4) for k, v in val.items()}), flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return trainer


def _worker(local_rank: int, nproc: int, port: int, cfg: TrainConfig, flags: dict[str, Any]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(local_rank),
                       "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)})
    threads = flags.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    # a spawned process starts fresh: it takes the parent's kernel options (cli.main set them)
    set_tiled_options(flags.pop("tiled_options"))
    run_distributed(cfg, **flags)


def launch(cfg: TrainConfig, nproc: int, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
           tp: int = 1, changes: dict[str, Any] | None = None) -> int:
    """Run ``cfg`` on ``nproc`` local processes (``headwise train --nproc N``) and wait.

    Returns 0 on success, 1 when a process failed or was killed (the others are then
    stopped; the run directory keeps its last complete checkpoint)."""
    check_int("--nproc", nproc)
    DistEnv(0, nproc, 0, tp)  # validates tp against nproc before any process starts
    if cfg.batch_size % (nproc // tp):
        raise ValueError(
            f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the number of data-parallel "
            f"replicas, {nproc // tp} (= --nproc {nproc} / --tp {tp})"
        )
    # N processes on this machine's cores: split the cores rather than oversubscribe them
    threads = max(1, (os.cpu_count() or 1) // nproc)
    flags = {"resume": resume, "overwrite": overwrite, "progress": progress, "tp": tp, "threads": threads,
             "changes": changes, "tiled_options": get_tiled_options()}
    ctx = None
    try:
        ctx = mp.spawn(_worker, args=(nproc, free_port(), cfg, flags), nprocs=nproc, join=False)
        while not ctx.join():
            pass
    except ProcessException as e:  # (torch.multiprocessing has no such attribute)
        print(f"headwise train: {e}", file=sys.stderr)
        return 1
    except BaseException:  # Ctrl-C or SIGTERM for this process alone: the workers stop too
        if ctx is not None:
            _stop(ctx.processes)
        raise
    return 0


def _stop(processes: list, grace_s: float = 20.0) -> None:
    """Interrupt the workers still running (each unwinds as on Ctrl-C: nothing lost beyond
    the last checkpoint) and wait for them; one that outlasts ``grace_s`` is killed.
    Without this a signal sent to the launcher alone left them training to the end, after
    it had said the run was interrupted."""
    alive = [p for p in processes if p.is_alive()]
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
