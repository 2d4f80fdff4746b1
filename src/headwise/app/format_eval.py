"""``headwise eval RUN --format FORMAT``: a training run evaluated in another number
format beside float32 (:func:`evaluate_run_format`). It strings together the run reader
(:mod:`headwise.train.reader`), the data (a corpus other than the run's), and the
formats (:func:`headwise.formats.quantize`, :func:`headwise.formats.compare_formats`)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from typing import Any

from torch import nn

from ..data import build_blocks, load_corpus
from ..formats import compare_formats, quantize
from ..train.reader import LoadedRun, evaluate_run

__all__ = ["evaluate_run_format"]


def _objective_models(objective: nn.Module) -> list[str]:
    """Attribute names of the models an objective owns (``model``; RTD's
    ``discriminator`` and ``generator``)."""
    return [a for a in ("model", "discriminator", "generator") if isinstance(getattr(objective, a, None), nn.Module)]


def evaluate_run_format(run: LoadedRun, format: str, *, corpus: str | None = None, max_batches: int = 50,
                        compare_batches: int = 8, calibration_batches: int = 4) -> dict[str, Any]:
    """``headwise eval RUN --format FORMAT``: the run's metrics in float32 and in
    ``format`` on the same blocks and masks, and :func:`compare_formats` of the main
    model (the discriminator for RTD) on ``compare_batches`` batches.

    Args:
        run: a :class:`~headwise.train.reader.LoadedRun`.
        format: ``"bf16"`` or ``"int8"`` (``"fp32"`` compares the model with a copy).
        calibration_batches: int8: this many batches of the run's *training* split
            calibrate SmoothQuant (see :func:`~headwise.formats.quantize`); 0 = none.

    Returns:
        the :func:`~headwise.formats.compare_formats` report, with ``format``,
        ``compared_model`` (the objective's attribute compared) and
        ``calibration_batches``.
    """
    objective = run.objective
    objective_q = copy.deepcopy(objective)
    n_cal = calibration_batches if format == "int8" else 0
    # what the objective feeds its model: a clm block of max_len + 1 tokens is read as
    # its first max_len (the last one is only a target)
    model_inputs = (lambda b: b[:, :-1]) if run.cfg.objective == "clm" else (lambda b: b)
    for attr in _objective_models(objective_q):
        cal = None
        if n_cal:
            cal = [model_inputs(b.to(run.device))
                   for b in itertools.islice(run.train.iter_batches(run.cfg.batch_size), n_cal)]
        quantize(getattr(objective_q, attr), format, inplace=True, calibration=cal)
    run_q = dataclasses.replace(run, parts=dataclasses.replace(run.parts, objective=objective_q))

    if corpus is not None:
        style = "decoder" if run.cfg.objective == "clm" else "encoder"
        blocks = build_blocks(load_corpus(corpus), run.tokenizer, run.cfg.block_len, style=style)
    else:
        blocks = run.val

    def some_batches():  # at most max_batches too (headwise eval --batches N: "at most N batches")
        for i, batch in enumerate(blocks.iter_batches(run.cfg.batch_size)):
            if i >= min(compare_batches, max_batches):
                break
            yield model_inputs(batch.to(run.device))

    attr = _objective_models(objective)[0]
    runs = {id(getattr(objective, attr)): run, id(getattr(objective_q, attr)): run_q}

    def task(model: nn.Module) -> dict[str, float]:
        metrics = evaluate_run(runs[id(model)], corpus=corpus, max_batches=max_batches)
        # MLM reports no perplexity: exp(mean masked-token loss) is its perplexity (RTD's
        # loss sums the generator's and 50 x the discriminator's: exp of it is none)
        if run.cfg.objective == "mlm":
            metrics.setdefault("perplexity", math.exp(min(metrics["loss"], 50.0)))
        return metrics

    report = compare_formats(getattr(objective, attr), getattr(objective_q, attr), some_batches(), task=task)
    report["format"] = format
    report["compared_model"] = attr
    report["calibration_batches"] = n_cal
    return report
