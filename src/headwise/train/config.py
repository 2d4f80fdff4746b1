"""TrainConfig: everything that defines a training run, saved as run.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import check_choice, check_int, check_real
from ..hardware.precision import PRECISIONS
from .optim import OPTIMIZERS
from .recipes import RECIPES
from .rundir import replace_file
from .schedule import DECAYS

__all__ = ["TrainConfig", "DEFAULT_CORPUS"]

OBJECTIVES = ("mlm", "rtd", "clm")
#: what replaces RTD's selected tokens: the generator model, or uniformly random tokens
RTD_GENERATORS = ("model", "uniform")
# the built-in corpora, present on every machine (the running Python's standard library)
DEFAULT_CORPUS = {"mlm": "stdlib-docs", "rtd": "stdlib-docs", "clm": "stdlib-code"}


@dataclass
class TrainConfig:
    """A training run. ``steps`` are optimizer steps; each takes ``accum`` batches of
    ``batch_size`` blocks of ``block_len`` tokens."""

    objective: str = "mlm"
    corpus: str | None = None  # None: DEFAULT_CORPUS[objective]
    preset: str = "tiny"
    out: str = "runs/default"
    steps: int = 1000
    max_time: float | None = None  # minutes; stops (with a checkpoint) when reached
    batch_size: int = 32
    block_len: int = 128
    accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    optimizer: str = "adamw"  # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    muon_lr: float = 0.02  # Muon's peak learning rate (optimizer="muon"); lr is AdamW's
    warmup: int = 100
    decay: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    tokenizer: str | None = None  # a tokenizer.json to load instead of training one
    tokenizer_kind: str | None = None  # wordpiece | bpe | char; None: by objective
    vocab_size: int = 8192
    val_fraction: float = 0.05
    whole_word_masking: bool = False
    rtd_generator: str = "model"  # model | uniform (generator-free corruption)
    rtd_disc_weight: float = 50.0
    compile: bool = False
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; auto: bf16 where the device has it natively)
    dropout: float | None = None  # None: the preset's
    sanity_checks: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's ModelConfig
    recipe: str | None = None  # the --recipe that set these (headwise.train.recipes), for the record

    def __post_init__(self) -> None:
        check_choice("objective", self.objective, OBJECTIVES)
        for name in ("steps", "batch_size", "block_len", "accum", "eval_every", "log_every",
                     "checkpoint_every", "eval_batches", "keep_checkpoints", "vocab_size"):
            check_int(name, getattr(self, name))
        check_int("warmup", self.warmup, minimum=0)
        # check_real refuses NaN and inf too (NaN passes a plain `<= 0`); a grad_clip <= 0
        # would zero or flip every gradient (clip_grad_norm_ scales by it), never train
        for name in ("lr", "grad_clip", "rtd_disc_weight"):
            check_real(name, getattr(self, name), minimum=0, min_open=True, what="a finite float > 0")
        check_real("weight_decay", self.weight_decay, minimum=0, what="a finite float >= 0")
        if self.dropout is not None:
            check_real("dropout", self.dropout, minimum=0, maximum=1, max_open=True, what="None or in [0, 1)")
        check_real("min_lr_ratio", self.min_lr_ratio, minimum=0, maximum=1, what="in [0, 1]")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_real("muon_lr", self.muon_lr, minimum=0, min_open=True, what="positive")
        check_choice("recipe", self.recipe, [*sorted(RECIPES), None])
        if self.max_time is not None:
            check_real("max_time", self.max_time, minimum=0, min_open=True, what="None or minutes > 0")
        check_choice("decay", self.decay, DECAYS)
        check_choice("rtd_generator", self.rtd_generator, RTD_GENERATORS)
        check_choice("precision", self.precision, PRECISIONS)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not isinstance(self.model, dict) or not all(isinstance(k, str) for k in self.model):
            raise ValueError(f"model must be a dict of ModelConfig field overrides, got {self.model!r}")
        self.betas = tuple(self.betas)  # JSON gives a list
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas!r}")
        for b in self.betas:
            check_real("betas", b, minimum=0, maximum=1, max_open=True, what="two floats in [0, 1)")
        if self.corpus is None:
            self.corpus = DEFAULT_CORPUS[self.objective]

    def to_json(self, path: Path) -> None:
        """Write the settings to ``path`` (atomically: a resume that rewrites run.json and
        is killed meanwhile leaves the old one whole)."""
        replace_file(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as e:  # not UTF-8, not JSON
            raise ValueError(f"{path} is damaged: not the JSON headwise train writes ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is damaged: expected a JSON object of training settings, "
                             f"got a JSON {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:  # a setting of the wrong type or out of range
            raise ValueError(f"{path}: {e}") from None
