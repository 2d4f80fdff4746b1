"""Process groups, the (dp, tp) device mesh, and wrapping a model for data parallel x
head parallel training.

Rank layout: ``world = dp * tp`` ranks in a row-major ``(dp, tp)`` grid, so the ``tp``
ranks of one data-parallel replica are consecutive (on one machine, where the
per-layer all-reduces of head parallelism want the fastest links), and the ``dp``
ranks holding the same heads form the gradient all-reduce groups.
"""

from __future__ import annotations

import inspect
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from ..checks import check_int
from ..devices import resolve_device
from .head_parallel import parallelize_heads

__all__ = [
    "DistEnv",
    "env_from_os",
    "in_distributed_env",
    "device_for",
    "init_distributed",
    "init_mesh",
    "parallelize",
    "broadcast_module",
    "wrap_ddp",
    "free_port",
    "barrier",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its
    machine, and its coordinates in the ``(dp, tp)`` grid."""

    rank: int
    world_size: int
    local_rank: int
    tp: int = 1

    def __post_init__(self) -> None:
        check_int("tp (the head-parallel degree)", self.tp)
        if self.world_size % self.tp:
            raise ValueError(
                f"tp={self.tp} must divide the number of processes ({self.world_size}): "
                f"world = dp * tp; accepted tp values: "
                f"{[d for d in range(1, self.world_size + 1) if self.world_size % d == 0]}"
            )

    @property
    def dp(self) -> int:
        return self.world_size // self.tp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp


def in_distributed_env() -> bool:
    """True when this process was started by torchrun (or :func:`launch`): RANK and
    WORLD_SIZE are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_from_os(tp: int = 1) -> DistEnv:
    """The :class:`DistEnv` torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError as e:
        raise RuntimeError(f"{e.args[0]} is not set: start this process with torchrun") from None
    return DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", rank)), tp)


def device_for(env: DistEnv, device: str = "auto") -> torch.device:
    """This rank's device for the run's ``device`` setting: ``cuda:LOCAL_RANK`` for
    ``auto`` (when CUDA is there) and ``cuda``, else the CPU. The setting is checked by
    :func:`headwise.devices.resolve_device`, so an unusable one is refused as everywhere
    else; a GPU index (``cuda:N``) or another device type is refused too: each rank takes
    the GPU of its LOCAL_RANK."""
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"a distributed run's device must be 'auto', 'cuda' or 'cpu', got {device!r}")
    dev = resolve_device(device, what="--device")
    if dev.type == "cpu":
        return dev
    if env.local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {env.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
            f"start at most that many processes per node"
        )
    return torch.device("cuda", env.local_rank)


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the default process group (NCCL for GPUs, gloo for the CPU), unless joined."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=env.rank, world_size=env.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)


def barrier(device: torch.device | None = None, group=None) -> None:
    """``dist.barrier``, naming the GPU for NCCL (which otherwise guesses it)."""
    if device is not None and device.type == "cuda" and dist.get_backend(group) == "nccl":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def init_mesh(dp: int, tp: int, device_type: str = "cpu"):
    """A 2-D ``DeviceMesh`` of shape ``(dp, tp)`` named ``("dp", "tp")`` over the default
    group (``dp * tp`` must equal the world size). ``mesh["tp"].get_group()`` is this
    rank's head-parallel group, ``mesh["dp"].get_group()`` its gradient all-reduce group."""
    world = dist.get_world_size()
    check_int("dp", dp)
    check_int("tp", tp)
    if dp * tp != world:
        raise ValueError(f"dp * tp must equal the world size {world}, got dp={dp}, tp={tp} ({dp * tp})")
    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group=None) -> None:
    """Copy ``src``'s parameters to every rank of ``group`` (in place). Buffers are left
    alone: here they are lookup tables every rank builds identically."""
    for p in module.parameters():
        dist.broadcast(p.data, src=src, group=group)


def parallelize(model: nn.Module, mesh, *, device: torch.device | None = None,
                ddp: bool = True) -> nn.Module:
    """Head-parallelise ``model`` over ``mesh["tp"]`` (in place; a no-op when tp = 1) and
    wrap it in ``DistributedDataParallel`` over ``mesh["dp"]``. Returns the module to
    call (the DDP wrapper, or ``model`` itself with ``ddp=False``).

    Every rank must pass identical full weights; to make sure, the weights of rank 0
    are broadcast first."""
    broadcast_module(model)
    if mesh["tp"].size() > 1:
        parallelize_heads(model, mesh["tp"].get_group())
    if not ddp:
        return model
    return wrap_ddp(model, mesh["dp"].get_group(), device)


def wrap_ddp(model: nn.Module, group=None, device: torch.device | None = None) -> DistributedDataParallel:
    """``DistributedDataParallel`` over ``group`` that does not re-send buffers before
    every forward: here they are lookup tables (masks, RoPE) identical on every rank."""
    kw: dict = {}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kw["forward_sync_buffers"] = False  # newer torch's name for it
    else:
        kw["broadcast_buffers"] = False
    return DistributedDataParallel(
        model, process_group=group,
        device_ids=[device.index] if device is not None and device.type == "cuda" else None, **kw,
    )


def free_port() -> int:
    """A TCP port free on this machine right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
