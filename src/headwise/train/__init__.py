"""Training from scratch: the loop, checkpoints, schedules, metrics and sanity checks."""

from .config import TrainConfig
from .loop import NonFiniteError, Trainer

__all__ = ["TrainConfig", "Trainer", "NonFiniteError"]
