"""Training beyond one process: data parallel (DDP) and head parallel (tensor parallel)
attention, on a ``(dp, tp)`` device mesh.

* :func:`parallelize_heads` / :class:`HeadParallelAttention`: split every attention
  layer's heads across a process group (one all-reduce per layer and direction);
* :func:`init_mesh` / :func:`parallelize`: a ``("dp", "tp")`` DeviceMesh and a model
  wrapped for it;
* :class:`DistributedTrainer`: one rank of ``headwise train --nproc N`` (started by
  :mod:`headwise.app.launch`) or of ``torchrun -m headwise train``;
* :mod:`headwise.distributed.comm`: bytes each rank sends per step
  (``communication_volume``; also a script, so it is not imported here).

See docs/distributed.md.
"""

from .ddp import DistEnv, env_from_os, in_distributed_env, init_distributed, init_mesh, parallelize
from .head_parallel import HeadParallelAttention, clip_grad_norm_, full_state_dict, parallelize_heads, shard_state_dict
from .trainer import DistributedTrainer, GlobalBatchMasker

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
    "DistributedTrainer",
    "GlobalBatchMasker",
]
