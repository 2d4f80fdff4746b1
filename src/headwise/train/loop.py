"""The training loop: from a TrainConfig to a run directory.

A run directory holds ``run.json`` (the TrainConfig), ``config.json`` (the model),
``tokenizer.json``, ``corpus.json`` (the corpus's content hash), ``metrics.jsonl``,
``loss.png`` and ``checkpoints/``. Batches are a pure function of the step (see
:class:`headwise.data.BlockSampler`) and every random state is checkpointed, so
``resume=True`` continues exactly: a run interrupted and resumed ends with the same
weights as one that was not (on the same kind of device, and the same corpus text).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import Tokenizer
from ..devices import resolve_device
from ..hardware.memory import keep_freed_memory
from ..hardware.precision import resolve_precision
from ..kernels.cpu_linear import cpu_linear_choice
from ..kernels.gelu import cpu_gelu_choice
from .build import RunParts, build_parts, require_recorded_files
from .checkpoint import (
    CheckpointError,
    checkpoint_step,
    load_checkpoint,
    newest_intact,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .evaluate import evaluate_blocks
from .metrics import MetricsLog, plot_loss_curve
from .optim import build_optimizer
from .rundir import RunDir, replace_file
from .sanity import run_start_checks
from .schedule import make_scheduler

__all__ = ["Trainer", "NonFiniteError", "resumed_config", "RESUMABLE_CHANGES"]


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite."""


#: settings a resume may change; any other differing setting is refused
RESUMABLE_CHANGES = ("steps", "max_time", "device")


def resumed_config(saved: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """The saved settings with ``changes`` applied; a change other than
    :data:`RESUMABLE_CHANGES` is refused, naming the setting and the saved value."""
    refused = {k: v for k, v in changes.items()
               if k not in RESUMABLE_CHANGES and k != "out" and getattr(saved, k) != v}
    if refused:
        k, v = next(iter(refused.items()))
        # the flag given, and its value (--no-sanity-checks is the one flag named otherwise than its setting)
        given = "--no-sanity-checks (sanity checks off)" if k == "sanity_checks" and v is False else \
            f"--{k.replace('_', '-')} {v!r}"
        raise ValueError(
            f"--resume cannot change the run's settings: {given} differs from the saved "
            f"{getattr(saved, k)!r}" + (f" (and {', '.join(sorted(refused)[1:])})" if len(refused) > 1 else "")
            + f"; only {', '.join('--' + c.replace('_', '-') for c in RESUMABLE_CHANGES)} may change. "
            f"Start a new run (another --out) to change it"
        )
    merged = dataclasses.asdict(saved)
    merged.update({k: v for k, v in changes.items() if k in RESUMABLE_CHANGES})
    if "steps" in changes and "max_time" not in changes:
        merged["max_time"] = saved.max_time
    return TrainConfig(**merged)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on biases, norms and other vectors."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Owns one run: builds the parts, trains, evaluates, checkpoints.

    Args:
        cfg: the run's settings (ignored on resume: the saved run.json is used).
        resume: continue the run in ``cfg.out`` from its last checkpoint.
        overwrite: replace an existing run directory.
        progress: show a progress bar.
        changes: on resume, the settings given explicitly (what may differ from run.json).
        device: the device to train on; default ``cfg.device`` through
            :func:`headwise.devices.resolve_device` (a distributed rank passes its own).
    """

    #: whether this process writes the run directory (metrics, figures, checkpoints);
    #: False on every rank but 0 of a distributed run (headwise.distributed).
    is_main: bool = True

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, changes: dict[str, Any] | None = None,
                 device: torch.device | None = None) -> None:
        self._rundir: RunDir | None = None
        self._resume_changes = changes
        #: (newest intact checkpoint, lines for broken newer ones), found once per resume
        self._resume_point: tuple[Path | None, list[str]] | None = None
        #: run.json as it was before a resume with changed settings rewrote it
        self._saved_run_json: bytes | None = None
        #: the run.json a resumed run's device setting comes from (not given with this resume)
        self._device_source: Path | None = None
        self.run_dir, cfg = self._open_run_dir(cfg, resume=resume, overwrite=overwrite)
        try:
            self._setup(cfg, resume=resume, progress=progress, device=device)
        except BaseException:
            if self._saved_run_json is not None:  # a refused resume changes nothing
                replace_file(self.run_dir / "run.json", self._saved_run_json)
            if self._rundir is not None:
                self._rundir.abort()  # leave nothing that would block the corrected command
            raise
        if self._rundir is not None:
            self._rundir.started()  # only now is a run it replaced deleted

    def _setup(self, cfg: TrainConfig, *, resume: bool, progress: bool, device: torch.device | None) -> None:
        self.cfg = cfg
        self.progress = progress
        try:
            self.device = resolve_device(cfg.device) if device is None else device
        except ValueError as e:
            if self._device_source is None:
                raise
            raise ValueError(f"{e}; {self._device_source} says device {cfg.device!r}: pass --device to resume "
                             f"on another (a resume may change it)") from None
        if self.device.type == "cpu":
            # Adam's second moments of tiny gradients reach subnormal floats, which x86
            # handles ~100x slower; flushing them to zero costs nothing in accuracy here.
            torch.set_flush_denormal(True)
        # freed activations stay in the process rather than being faulted in afresh at
        # every step (hardware/memory.py; HEADWISE_MALLOC=default leaves malloc alone)
        self.malloc = keep_freed_memory() if self.device.type == "cpu" else None
        # bf16 autocast around the forwards (fp32 master weights and optimizer state)
        self.precision = resolve_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.parts: RunParts = self._build_parts(cfg, resume=resume)
        self.objective = self.parts.objective
        self.optimizer = build_optimizer(
            self.objective, optimizer=cfg.optimizer, lr=cfg.lr, betas=cfg.betas,
            weight_decay=cfg.weight_decay, muon_lr=cfg.muon_lr,
            # torch's fused AdamW: one kernel per parameter on CUDA and CPU (measured 4x
            # faster than the per-tensor loop on the CPU, tiny preset); elsewhere torch's default
            fused=self.device.type in ("cuda", "cpu") or None,
        )
        self.scheduler = make_scheduler(self.optimizer, warmup=cfg.warmup, total=cfg.steps,
                                        decay=cfg.decay, min_ratio=cfg.min_lr_ratio)
        # on the batches' device: the maskers draw with it where the tokens are (CPU: as before)
        self.mask_rng = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self._step_rng: dict[str, Any] | None = None  # the random streams at the start of the step under way
        self.resumed_from: Path | None = None
        #: lines about the resume (which checkpoint, which broken ones were skipped)
        self.resume_notes: list[str] = []
        if resume:
            # other ranks of a distributed run did not open the run directory themselves
            ckpt, skipped = self._resume_point or newest_intact(self.run_dir)
            if ckpt is None and skipped:
                raise CheckpointError(
                    f"--resume refused: {self.run_dir} has checkpoints but none is intact ("
                    + "; ".join(skipped) + "); nothing was changed")
            written = self._checkpoints_written() if ckpt is None else None
            if written is not None:  # written once, removed since: not a run to start again
                raise CheckpointError(
                    f"--resume refused: {self.run_dir} wrote checkpoints ({written}) but none is left, so there "
                    f"is nothing to continue from; nothing was changed. Restore them, or start the run again "
                    f"with --overwrite")
            self._restream_notes: list[str] = []
            if ckpt is not None:
                self._restore(ckpt)
                said = self._restream_notes
                self.resume_notes = [*skipped, f"resuming from {ckpt.name} (step {self.step})", *said]
            else:  # (said even without a progress display, below)
                said = ["no checkpoint was written yet: --resume starts the run again from step 0"]
                self.resume_notes = list(said)
            for line in self.resume_notes:
                self._print(line)
            if not self.progress and self.is_main:
                # a skipped checkpoint, a stream that starts afresh, a new start: said even without a progress display
                for line in skipped:
                    print(f"warning: {line}; it was skipped", file=sys.stderr)
                for line in said:
                    print(f"warning: {line}", file=sys.stderr)
        # only the writing process may trim the log of a resumed run
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl",
                                  resume_step=(self.step if resume else -1) if self.is_main else None)
        if self.is_main:  # what runs, beside run.json's request
            ran = self.precision.to_dict()
            if resume:
                self._say_precision_change(self.run_dir / "precision.json", ran)
            if self.device.type == "cpu":  # the float32 linears' GEMMs, the GELU, malloc
                ran["cpu_linear"] = cpu_linear_choice()
                ran["cpu_gelu"] = cpu_gelu_choice()
                ran["malloc"] = self.malloc
            replace_file(self.run_dir / "precision.json", json.dumps(ran, indent=2) + "\n")
        self._print(self.precision.note)
        tok = self.parts.tokenizer
        if tok.vocab_size < cfg.vocab_size:  # --vocab-size is a cap: a small corpus gives fewer tokens
            self._print(f"vocabulary: {tok.vocab_size:,} tokens, all that {cfg.corpus} gives a {tok.kind} tokenizer "
                        f"(--vocab-size {cfg.vocab_size:,} is the most it may have)")
        n_val = -(-len(self.parts.val) // cfg.batch_size)  # the validation split's batches, the last one short
        if cfg.eval_batches > n_val:  # --eval-batches is a cap too: a small split gives fewer
            self._print(f"evaluation: all {n_val:,} batches of the validation split ({len(self.parts.val):,} blocks; "
                        f"--eval-batches {cfg.eval_batches:,} is the most it scores)")
        if cfg.compile:
            # compile the models, not the objective: its metrics call .item(), which
            # would break the graph at every step
            for child in self.objective.children():
                if any(True for _ in child.parameters()):
                    child.compile()
        self.forward = self.objective
        #: called as ``hook(trainer, step)`` right after each evaluation, on the process
        #: that writes the run directory (e.g. headwise.inspect.timeline's HeadRecorder);
        #: a hook must leave the random streams and the training state as it found them.
        self.eval_hooks: list[Callable[[Trainer, int], None]] = []

    def _checkpoints_written(self) -> str | None:
        """What shows that the run wrote checkpoints (all removed since), or None: its
        ``checkpoints/latest`` names one, or metrics.jsonl logs a step past the first
        ``checkpoint_every`` (a run trains past a checkpoint step only once it is saved)."""
        latest = self.run_dir / "checkpoints" / "latest"
        if latest.is_file():
            return f"{latest} names {latest.read_text(errors='replace').strip()!r}"
        log = self.run_dir / "metrics.jsonl"
        logged = max((r["step"] for r in MetricsLog(log).read()), default=0)
        if logged > self.cfg.checkpoint_every:
            return f"{log} logs step {logged}, past the first checkpoint at step {self.cfg.checkpoint_every}"
        return None

    def _say_precision_change(self, record: Path, ran: dict[str, Any]) -> None:
        """Warn when a resume runs in another number format than the run so far (which
        ``--precision auto`` picks per device: a resume on another machine may differ)."""
        try:
            before = json.loads(record.read_text(encoding="utf-8")).get("used")
        except (OSError, ValueError, AttributeError):
            return
        if isinstance(before, str) and before != ran["used"]:
            print(f"warning: this resume trains in {ran['used']}, the run so far trained in {before} "
                  f"({ran['note']}); the rest of the run is not what it would have been", file=sys.stderr)

    # ------------------------------------------------------------------ setup
    # The _open_run_dir/_build_parts/_micro_step/_reduce_metrics/_clip_grad_norm
    # hooks are what headwise.distributed's trainer overrides; here they are the
    # single-process behaviour.
    def _open_run_dir(self, cfg: TrainConfig, *, resume: bool, overwrite: bool) -> tuple[Path, TrainConfig]:
        # read before --overwrite moves the old run's files aside: it may be one of them
        # (--tokenizer RUN/tokenizer.json); saved as the new run's own copy (build_parts takes it)
        given_tokenizer = Tokenizer.load(cfg.tokenizer) if overwrite and cfg.tokenizer is not None else None
        self._rundir = RunDir.open(Path(cfg.out), resume=resume, overwrite=overwrite)
        run_dir = self._rundir.path
        try:
            if resume:
                saved = TrainConfig.from_json(run_dir / "run.json")
                # without an explicit list of changes, cfg is the whole intended config
                changes = self._resume_changes
                if changes is None:
                    changes = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}
                new = resumed_config(saved, changes)
                if "device" not in changes:
                    self._device_source = run_dir / "run.json"
                # the step resume starts from: that of the newest intact checkpoint
                self._resume_point = newest_intact(run_dir)
                if self._resume_point[0] is not None:  # weights trained with the run's own files
                    require_recorded_files(run_dir)
                reached = checkpoint_step(self._resume_point[0])
                if new.steps < reached:
                    raise ValueError(f"--steps {new.steps} is below the step the run has reached ({reached}); "
                                     f"give --steps {reached} or more to train further")
                if new != saved:
                    self._saved_run_json = (run_dir / "run.json").read_bytes()
                    new.to_json(run_dir / "run.json")
                cfg = new
            else:
                cfg.to_json(run_dir / "run.json")
                if given_tokenizer is not None:
                    given_tokenizer.save(run_dir)
        except BaseException:
            self._rundir.abort()
            raise
        return run_dir, cfg

    def _build_parts(self, cfg: TrainConfig, *, resume: bool) -> RunParts:
        return build_parts(cfg, self.run_dir, self.device, resume=resume, precision=self.precision)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state({"mask": self.mask_rng}),
        }

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.objective, self._state(),
                               keep=self.cfg.keep_checkpoints)

    def _restore(self, ckpt: Path) -> None:
        """Load ``ckpt``; a random stream that cannot be restored (the run moved to
        another kind of device) starts afresh, with a line in ``_restream_notes``."""
        # only called with a checkpoint newest_intact has just hashed
        state = load_checkpoint(ckpt, self.objective, map_location=self.device, verify=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # the saved learning rates follow the saved schedule: a resume with another --steps
        # follows its own from this step on (the same value where the schedule is the same)
        for group, base, at in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas,
                                   strict=True):
            group["lr"] = base * at(self.scheduler.last_epoch)
        self.step = state["step"]
        self.resumed_from = ckpt
        if set_rng_state(state["rng"], {"mask": self.mask_rng}):
            # a CPU generator's state does not fit a CUDA one: seeded anew, reproducibly
            self.mask_rng.manual_seed(self.cfg.seed + 1 + self.step)
            self._restream_notes.append(
                f"the masking random stream of {ckpt.name} was drawn on another kind of device than "
                f"{self.device.type}; it starts afresh here, so the run goes on, but not bit-identical to one "
                f"that stayed on its device")

    # ------------------------------------------------------------------ steps
    def _batch(self, micro: int) -> torch.Tensor:
        idx = self.parts.sampler.batch_indices(self.step * self.cfg.accum + micro)
        return self.parts.train.batch(idx).to(self.device, non_blocking=True)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``accum`` micro-batches); returns averaged metrics."""
        self.objective.train()
        self.optimizer.zero_grad(set_to_none=True)
        # the random streams as the step found them: a failing step rewinds to them (_fail)
        self._step_rng = rng_state({"mask": self.mask_rng})
        totals: dict[str, float] = {}
        for micro in range(self.cfg.accum):
            for k, v in self._micro_step(micro).items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.cfg.accum
        totals = self._reduce_metrics(totals)
        norm = self._clip_grad_norm()
        if not torch.isfinite(norm):  # one reduction; look for the culprit only when needed
            for name, p in self.objective.named_parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    self._fail(f"the gradient of parameter {name!r} is not finite at step {self.step}")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        totals["grad_norm"] = float(norm)
        totals["lr"] = self.scheduler.get_last_lr()[0]
        return totals

    def _micro_step(self, micro: int) -> dict[str, float]:
        """Forward and backward of micro-batch ``micro``; returns its metrics."""
        # the metrics' argmaxes and host syncs only at the steps that log them
        wants = (self.step + 1) % self.cfg.log_every == 0 or self.step + 1 >= self.cfg.steps
        with self.precision.autocast(self.device):
            out = self.forward(self._batch(micro), generator=self.mask_rng, metrics=wants)
        if not torch.isfinite(out.loss):
            self._fail(f"the loss is {out.loss.item()} at step {self.step}")
        (out.loss / self.cfg.accum).backward()
        return {"loss": out.loss.item(), **out.metrics}

    def _reduce_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return totals

    def _clip_grad_norm(self) -> torch.Tensor:
        return nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)

    def _fail(self, what: str) -> None:
        # the weights, optimizer and schedule are still those before this step: worth
        # keeping, with the random streams of then too, so that a resume from this
        # checkpoint (or one at this step it replaces) replays the step exactly
        if self._step_rng is not None:
            set_rng_state(self._step_rng, {"mask": self.mask_rng})
        path = self.save()
        raise NonFiniteError(f"{what}; stopped and saved the last good state to {path}")

    def evaluate(self, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        """Mean metrics over up to ``max_batches`` batches of ``split``."""
        blocks = self.parts.val if split == "val" else self.parts.train
        return evaluate_blocks(self.objective, blocks, batch_size=self.cfg.batch_size,
                               max_batches=self.cfg.eval_batches if max_batches is None else max_batches,
                               device=self.device, precision=self.precision)

    # ------------------------------------------------------------------ run
    def run(self, until_step: int | None = None) -> dict[str, float]:
        """Train to ``cfg.steps`` (or ``until_step``, or ``cfg.max_time``), then
        checkpoint; returns the last validation metrics."""
        cfg = self.cfg
        stop = cfg.steps if until_step is None else min(until_step, cfg.steps)
        if self.step >= stop:
            # nothing left to train (a finished run resumed without a new target)
            self._print(f"the run is at step {self.step}, its target is {stop}: nothing to train")
            if self._rundir is not None:
                self._rundir.release()  # (held since it was opened) as a run that trained does
            return self.last_validation()
        if self._rundir is not None:
            self._rundir.hold()
        bar = None
        last_val: dict[str, float] = {}
        try:
            if self.step == 0 and cfg.sanity_checks and self.resumed_from is None:
                for line in run_start_checks(self):
                    self._print(line)
            tokens_per_step = cfg.batch_size * cfg.block_len * cfg.accum
            t0 = time.perf_counter()
            start_step = self.step
            if self.progress:
                bar = tqdm(total=stop, initial=self.step, unit="step", dynamic_ncols=True)
            while self.step < stop:
                m = self.train_step()
                elapsed = time.perf_counter() - t0
                tok_s = (self.step - start_step) * tokens_per_step / max(elapsed, 1e-9)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tok_s:,.0f}")
                if self.is_main and (self.step % cfg.log_every == 0 or self.step == stop):
                    self.metrics.write({"step": self.step, "split": "train", "tokens_per_s": tok_s,
                                        "elapsed_s": elapsed, **m})
                if self.step % cfg.eval_every == 0 or self.step == stop:
                    last_val = self.evaluate()
                    if self.is_main:
                        self.metrics.write({"step": self.step, "split": "val", **last_val})
                        plot_loss_curve(self.metrics.read(), self.run_dir / "loss.png",
                                        title=f"{cfg.objective} {cfg.preset} on {cfg.corpus}")
                        for hook in self.eval_hooks:
                            hook(self, self.step)
                    self._print(f"step {self.step}: val " + ", ".join(
                        f"{k} {v:.4g}" for k, v in last_val.items()))
                due = self.step % cfg.checkpoint_every == 0 or self.step == stop
                if due:
                    self.save()
                if self._time_is_up(elapsed):
                    self._print(f"--max-time {cfg.max_time} min reached at step {self.step}")
                    if not due:  # (a second save of the same step would only replace the first)
                        self.save()
                    break
        except ValueError:
            # a setting the run cannot use, found before its first optimizer step (in the
            # sanity checks or the first step): a new run folder then holds nothing to
            # resume from, and is removed so that it does not block the corrected command
            # (RunDir.discard keeps any resumed run, and any with a checkpoint). A later
            # failure keeps the folder: its metrics say what happened up to there.
            if self._rundir is not None and self.step == 0:
                self._rundir.discard()
            raise
        finally:
            if bar is not None:
                bar.close()
            if self._rundir is not None:
                self._rundir.release()
        return last_val

    def _time_is_up(self, elapsed: float) -> bool:
        """Whether ``--max-time`` is reached after ``elapsed`` seconds of this call's training."""
        return self.cfg.max_time is not None and elapsed > self.cfg.max_time * 60

    def last_validation(self) -> dict[str, float]:
        """The validation metrics logged at the current step, else a fresh evaluation."""
        for r in reversed(self.metrics.read()):
            if r.get("split") == "val" and r.get("step") == self.step:
                return {k: v for k, v in r.items() if k not in ("step", "split")}
        return self.evaluate()

    def _print(self, line: str) -> None:
        if self.progress:
            tqdm.write(line)
