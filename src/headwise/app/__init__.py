"""The top of the package below the command line: the commands and the orchestration
that strings the lower layers together for a user (docs/architecture.md).

* :mod:`~headwise.app.main_job`: the main job, ``headwise train``'s story (train, check,
  look inside, summarise), with :mod:`~headwise.app.baseline_scores` and
  :mod:`~headwise.app.summary`;
* :mod:`~headwise.app.inspection`: :func:`inspect_model`, the whole inspection;
* the commands, each with ``register(subparsers)``: :mod:`~headwise.app.train_command`
  (train, check, generate, eval), :mod:`~headwise.app.inspect_command`,
  :mod:`~headwise.app.plan_command`, :mod:`~headwise.app.bench_command`; their argument
  types in :mod:`~headwise.app.cli_types`;
* :mod:`~headwise.app.launch` (training on several processes) and
  :mod:`~headwise.app.format_eval` (a run evaluated in another number format).
"""

from .baseline_scores import Baselines, baselines, binary_entropy, scored_targets, unigram_baseline
from .inspection import InspectOptions, InspectResult, inspect_model
from .main_job import heldout_passages, inspect_run, tell_story
from .summary import role_leaders, summary_text

__all__ = [
    "Baselines", "baselines", "binary_entropy", "heldout_passages", "inspect_run", "role_leaders",
    "scored_targets", "summary_text", "tell_story", "unigram_baseline",
    "InspectOptions", "InspectResult", "inspect_model",
]
