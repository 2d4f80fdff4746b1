"""The top of the package below the command line: the commands and the orchestration
that strings the lower layers together for a user (docs/architecture.md).

:mod:`headwise.app.main_job` is the main job: train, check, look inside, summarise."""

from .main_job import (
    Baselines,
    baselines,
    binary_entropy,
    heldout_passages,
    inspect_run,
    role_leaders,
    scored_targets,
    summary_text,
    tell_story,
    unigram_baseline,
)
from .inspection import InspectOptions, InspectResult, inspect_model

__all__ = [
    "Baselines", "baselines", "binary_entropy", "heldout_passages", "inspect_run", "role_leaders",
    "scored_targets", "summary_text", "tell_story", "unigram_baseline",
    "InspectOptions", "InspectResult", "inspect_model",
]
