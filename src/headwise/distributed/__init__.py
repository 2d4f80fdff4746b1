"""Training beyond one process: data parallel (DDP) and head parallel (tensor parallel)
attention, on a ``(dp, tp)`` device mesh; and the communication each costs per step.

* :func:`parallelize_heads` / :class:`HeadParallelAttention`: split every attention
  layer's heads across a process group (one all-reduce per layer and direction);
* :func:`init_mesh` / :func:`parallelize`: a ``("dp", "tp")`` DeviceMesh and a model
  wrapped for it;
* :class:`DistributedTrainer` / :func:`launch`: ``headwise train --nproc N`` and
  ``torchrun -m headwise.train``;
* :func:`communication_volume`: bytes each rank sends per step.

See docs/distributed.md.
"""

from .ddp import DistEnv, env_from_os, in_distributed_env, init_distributed, init_mesh, parallelize
from .head_parallel import HeadParallelAttention, clip_grad_norm_, full_state_dict, parallelize_heads, shard_state_dict

__all__ = [
    "DistEnv",
    "env_from_os",
    "in_distributed_env",
    "init_distributed",
    "init_mesh",
    "parallelize",
    "HeadParallelAttention",
    "parallelize_heads",
    "full_state_dict",
    "shard_state_dict",
    "clip_grad_norm_",
    "communication_volume",
    "DistributedTrainer",
    "launch",
]


def __getattr__(name: str):
    # loaded when asked for: the trainer pulls in the whole training stack, and comm is
    # also run as a script (python -m headwise.distributed.comm)
    if name in ("DistributedTrainer", "launch"):
        from . import trainer

        return getattr(trainer, name)
    if name == "communication_volume":
        from .comm import communication_volume

        return communication_volume
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
