"""The distributed training run: :class:`DistributedTrainer`, a :class:`Trainer` on
every rank (started by torchrun, or by ``headwise train --nproc N`` through
:mod:`headwise.app.launch`).

What makes N ranks train like one process with the same global batch:

* data: step ``s``'s global batch is ``cfg.batch_size`` blocks; data-parallel rank
  ``d`` of ``dp`` reads its contiguous ``batch_size/dp`` slice of it
  (:meth:`BlockSampler.batch_indices` ``(s, d, dp)``);
* masks: the shared mask generator draws for the *global* batch's shape on every rank
  and each rank keeps its rows (:class:`GlobalBatchMasker`), so the masks, and the
  generator's state, are those of the single process;
* loss: a rank's loss is a mean over its own scored tokens; it is rescaled by
  ``dp * n_rank / n_global`` (one tiny all-reduce) so that DDP's gradient average is
  the gradient of the global mean, as in one process. (RTD mixes two losses with
  different counts and is averaged plainly; its sampled replacements are drawn per rank.)
* dropout: rank 0 keeps the single-process torch RNG stream; data-parallel rank
  ``d > 0`` is seeded from ``(seed, d, step)``; head-parallel ranks of one replica share
  it, so their replicated activations stay identical.
* checkpoints: written by rank 0 alone in the single-process format (full weights,
  full optimizer state), the others waiting at a barrier, so a run resumes on any
  number of ranks and continues the same data order.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..objectives.mlm import TokenMasker
from ..train.build import RunParts, build_objective
from ..train.checkpoint import save_checkpoint
from ..train.config import TrainConfig
from ..train.loop import Trainer
from ..train.schedule import make_scheduler
from .ddp import (
    DistEnv,
    barrier,
    broadcast_module,
    device_for,
    env_from_os,
    init_distributed,
    init_mesh,
    wrap_ddp,
)
from .head_parallel import (
    HeadParallelAttention,
    clip_grad_norm_,
    full_parameter_names,
    full_state_dict,
    gather_out,
    gather_qkv,
    head_slices,
    parallelize_heads,
)

__all__ = ["DistributedTrainer", "GlobalBatchMasker", "rank_seed"]

# the metric that counts a micro-batch's scored tokens, per objective: the loss is a
# mean over them, so ranks are weighted by it (RTD's two losses have two counts: none)
COUNT_KEY = {"mlm": "n_selected", "clm": "n_tokens"}


def rank_seed(seed: int, dp_rank: int, step: int) -> int:
    """The dropout seed of data-parallel rank ``dp_rank`` (> 0) from ``step`` on."""
    digest = hashlib.sha256(f"headwise-dropout:{seed}:{dp_rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


class GlobalBatchMasker(nn.Module):
    """Wraps a :class:`TokenMasker` so that, while :attr:`active`, a rank's masks are its
    rows of the masks the single process would draw for the whole global batch.

    The masker's draws depend on the batch's shape only, and its decisions on each row's
    own tokens, so masking ``dp`` copies of the local ``(b, T)`` batch stacked to the
    global shape ``(dp*b, T)`` and keeping rows ``rank*b .. (rank+1)*b`` gives exactly the
    global masks' rows, and leaves the generator where the single process leaves it.
    Inactive (evaluation, sanity checks), it is the plain masker."""

    def __init__(self, inner: TokenMasker, rank: int, world: int) -> None:
        super().__init__()
        self.inner, self.rank, self.world = inner, rank, world
        self.active = False

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def _rows(self, batch: Tensor) -> tuple[Tensor, slice]:
        b = batch.shape[0]
        return batch.repeat(self.world, 1), slice(self.rank * b, (self.rank + 1) * b)

    def select(self, batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if not self.active:
            return self.inner.select(batch, generator)
        full, rows = self._rows(batch)
        return self.inner.select(full, generator)[rows]

    def forward(self, batch: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if not self.active:
            return self.inner(batch, generator)
        full, rows = self._rows(batch)
        inputs, selected = self.inner(full, generator)
        return inputs[rows], selected[rows]


class DistributedTrainer(Trainer):
    """A :class:`Trainer` for one rank of a data-parallel x head-parallel run.

    Start one per process (torchrun, or :func:`headwise.app.launch.launch`); the default
    process group is joined here if it is not yet. ``tp`` ranks split each attention layer's heads; the
    ``world_size / tp`` replicas split each global batch. Arguments as for
    :class:`Trainer`, plus ``env`` (default: from torchrun's environment variables) and
    ``tp``. Raises ValueError when ``cfg.batch_size`` is not divisible by the number of
    replicas, or ``tp`` does not divide the heads.
    """

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, env: DistEnv | None = None, tp: int = 1,
                 changes: dict[str, Any] | None = None) -> None:
        self.env = env if env is not None else env_from_os(tp)
        self.is_main = self.env.rank == 0
        device = device_for(self.env, cfg.device)
        init_distributed(self.env, device)
        self._device = device
        if self.env.tp > 1 or self.env.dp > 1:
            self.mesh = init_mesh(self.env.dp, self.env.tp, device.type)
            self.dp_group, self.tp_group = self.mesh["dp"].get_group(), self.mesh["tp"].get_group()
        else:
            self.mesh, self.dp_group, self.tp_group = None, None, None
        super().__init__(cfg, resume=resume, overwrite=overwrite, progress=progress and self.is_main,
                         changes=changes, device=device)
        self.masker = None
        masker = getattr(self.objective, "masker", None)
        if isinstance(masker, TokenMasker):
            self.masker = GlobalBatchMasker(masker, self.env.dp_rank, self.env.dp)
            self.objective.masker = self.masker
        if self.env.tp > 1:
            self._shard_heads()
        if self.resumed_from is None:
            self._seed_dropout()
        self.forward = wrap_ddp(self.objective, self.dp_group, device)

    # ------------------------------------------------------------------ setup hooks
    def _open_run_dir(self, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> tuple[Path, TrainConfig]:
        if self.is_main:
            run_dir, cfg = super()._open_run_dir(cfg, resume=resume, overwrite=overwrite)
        else:
            barrier(self._device)  # rank 0 prepares the run directory, tokenizer and blocks first
            run_dir = Path(cfg.out)
            cfg = TrainConfig.from_json(run_dir / "run.json")  # as rank 0 resolved it
        if cfg.batch_size % self.env.dp:
            raise ValueError(
                f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the number of "
                f"data-parallel replicas, {self.env.dp} (= {self.env.world_size} processes / tp {self.env.tp}): "
                f"each takes batch_size/{self.env.dp} blocks"
            )
        return run_dir, cfg

    def _build_parts(self, cfg: TrainConfig, *, resume: bool) -> RunParts:
        if self.is_main:
            parts = super()._build_parts(cfg, resume=resume)
            barrier(self._device)
            return parts
        # everything (run.json, config.json, tokenizer.json, the block cache) is on disk now
        return super()._build_parts(cfg, resume=True)

    def _seed_dropout(self) -> None:
        if self.env.dp_rank > 0:
            torch.manual_seed(rank_seed(self.cfg.seed, self.env.dp_rank, self.step))

    def _restore(self, ckpt: Path) -> None:
        super()._restore(ckpt)
        self._seed_dropout()

    # ------------------------------------------------------------------ head parallel
    def _shard_heads(self) -> None:
        """Split every attention layer's heads over the tp group, then rebuild the
        optimizer (and scheduler) around the new parameters with their state sliced
        from the full, single-process state."""
        opt_state, sched_state = self.optimizer.state_dict(), self.scheduler.state_dict()
        names = {id(p): n for n, p in self.objective.named_parameters()}
        group_names = [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]
        broadcast_module(self.objective)  # the full weights must agree before slicing
        parallelize_heads(self.objective, self.tp_group)
        self.objective.to(self.device)
        # the new parameters in the old ones' order, group by group: optimizer slot i is
        # then the same tensor (sharded or not) in both, and states convert slot by slot
        by_name = full_parameter_names(self.objective)
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [by_name[n] for n in ns]}
                  for g, ns in zip(self.optimizer.param_groups, group_names, strict=True)]
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas,
                                           fused=self.device.type == "cuda" or None)
        # as in Trainer: scheduler first (making one sets the lr), then both states
        self.scheduler = make_scheduler(self.optimizer, warmup=self.cfg.warmup, total=self.cfg.steps,
                                        decay=self.cfg.decay, min_ratio=self.cfg.min_lr_ratio)
        self.optimizer.load_state_dict(self._convert_optimizer_state(opt_state, to_full=False))
        self.scheduler.load_state_dict(sched_state)

    def _sharded_kinds(self) -> dict[int, tuple[HeadParallelAttention, str]]:
        """id(parameter) -> (its layer, "qkv" or "out") for every sharded parameter."""
        kinds = {}
        for m in self.objective.modules():
            if isinstance(m, HeadParallelAttention):
                kinds[id(m.local.qkv_weight)] = (m, "qkv")
                if m.local.qkv_bias is not None:
                    kinds[id(m.local.qkv_bias)] = (m, "qkv")
                kinds[id(m.local.out_proj.weight)] = (m, "out")
        return kinds

    def _convert_optimizer_state(self, state: dict[str, Any], *, to_full: bool) -> dict[str, Any]:
        """Slice a single-process optimizer state to this rank's shards, or gather it back
        (slot ``i`` is the same parameter in both: see :meth:`_shard_heads`)."""
        kinds = self._sharded_kinds()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        new_state = {}
        for i, s in state["state"].items():
            kind = kinds.get(id(params[int(i)]))
            if kind is None:
                new_state[i] = s
                continue
            hp, which = kind
            new_state[i] = {k: self._convert(v, hp, which, to_full) if torch.is_tensor(v) and v.dim() >= 1 else v
                            for k, v in s.items()}
        return {"state": new_state, "param_groups": state["param_groups"]}

    @staticmethod
    def _convert(t: Tensor, hp: HeadParallelAttention, which: str, to_full: bool) -> Tensor:
        if to_full:
            return gather_qkv(t, hp) if which == "qkv" else gather_out(t, hp)
        rows, cols = head_slices(hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.rank, hp.degree)
        return t[rows.to(t.device)].clone() if which == "qkv" else t[:, cols.to(t.device)].clone()

    def _clip_grad_norm(self) -> Tensor:
        if self.env.tp > 1:
            return clip_grad_norm_(self.objective, self.cfg.grad_clip, self.tp_group)
        return super()._clip_grad_norm()

    # ------------------------------------------------------------------ steps
    def _batch(self, micro: int) -> Tensor:
        idx = self.parts.sampler.batch_indices(self.step * self.cfg.accum + micro, self.env.dp_rank, self.env.dp)
        return self.parts.train.batch(idx).to(self.device, non_blocking=True)

    @contextmanager
    def _global_masks(self):
        if self.masker is None:
            yield
            return
        self.masker.active = True
        try:
            yield
        finally:
            self.masker.active = False

    def _micro_step(self, micro: int) -> dict[str, float]:
        last = micro == self.cfg.accum - 1
        # gradients are all-reduced once per optimizer step, with the last micro-batch
        sync = nullcontext() if last else self.forward.no_sync()
        with sync, self._global_masks(), self.precision.autocast(self.device):  # --precision
            out = self.forward(self._batch(micro), generator=self.mask_rng)
            key = COUNT_KEY.get(self.cfg.objective)
            n_local = float(out.metrics[key]) if key is not None else 1.0
            # one reduction tells every rank the global count and whether any loss broke,
            # so all of them stop together (and rank 0 saves) rather than some hanging
            stats = torch.tensor([n_local, 0.0 if torch.isfinite(out.loss) else 1.0],
                                 dtype=torch.float64, device=self.device)
            dist.all_reduce(stats, group=self.dp_group)
            if stats[1] > 0:
                self._fail(f"the loss is not finite on {int(stats[1])} rank(s) at step {self.step} "
                           f"(this rank's: {out.loss.item()})")
            scale = self.env.dp * n_local / float(stats[0]) if key is not None and stats[0] > 0 else 1.0
            (out.loss * (scale / self.cfg.accum)).backward()
        self._weights.append(n_local)
        return {"loss": out.loss.item(), **out.metrics}

    def train_step(self) -> dict[str, float]:
        self._weights: list[float] = []
        return super().train_step()

    def _reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """The global batch's metrics: rank means weighted by their scored-token counts
        (counts summed), identical on every rank."""
        if self.env.dp == 1:
            return totals
        keys = sorted(totals)
        key = COUNT_KEY.get(self.cfg.objective)
        w = sum(self._weights) if key is not None else 1.0
        vec = torch.tensor([totals[k] if k == key else w * totals[k] for k in keys] + [w],
                           dtype=torch.float64, device=self.device)
        dist.all_reduce(vec, group=self.dp_group)
        total_w = float(vec[-1]) or 1.0
        out = {k: float(v) if k == key else float(v) / total_w for k, v in zip(keys, vec[:-1].tolist(), strict=True)}
        if "perplexity" in out:
            out["perplexity"] = float(torch.tensor(min(out["loss"], 50.0)).exp())
        return out

    def _time_is_up(self, elapsed: float) -> bool:
        """Every rank stops at the same step: the ranks' clocks are read apart, and a rank
        that stopped alone would leave the others waiting in the next step's reduction."""
        if self.cfg.max_time is None:
            return False
        up = torch.tensor([1.0 if super()._time_is_up(elapsed) else 0.0], device=self.device)
        dist.all_reduce(up, op=dist.ReduceOp.MAX)
        return bool(up.item())

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Rank 0 writes the checkpoint (single-process format) while the others wait."""
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}"
        if self.env.tp > 1:
            # gathering is collective: every rank takes part, rank 0 writes
            weights = full_state_dict(self.objective)
            state = self._state()
            state["optimizer"] = self._convert_optimizer_state(state["optimizer"], to_full=True)
            if self.is_main:
                # building initialises weights: keep rank 0's RNG stream (dropout) untouched
                with torch.random.fork_rng(devices=[]):
                    full = build_objective(self.cfg.objective, self.parts.model_config, self.parts.tokenizer,
                                           self.cfg)
                full.load_state_dict({k: v.cpu() for k, v in weights.items()})
                path = save_checkpoint(self.run_dir, self.step, full, state, keep=self.cfg.keep_checkpoints)
        elif self.is_main:
            path = super().save()
        barrier(self.device)
        return path
