"""How far a quantised model is from its float32 original: every block's output and the
final output (cosine similarity, relative L1 error), and the task metric."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["compare_formats", "default_layers"]

_BLOCK = re.compile(r"(^|\.)blocks\.\d+$")


def default_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are compared by default: every transformer
    block (``...blocks.<i>``), in forward order."""
    return [name for name, _ in model.named_modules() if _BLOCK.search(name)]


class _Stats:
    """Running sums over tokens for one compared tensor."""

    def __init__(self) -> None:
        self.cos_sum = 0.0
        self.cos_min = math.inf
        self.n = 0
        self.abs_err = 0.0
        self.abs_ref = 0.0

    def add(self, ref: Tensor, got: Tensor, keep: Tensor | None = None) -> None:
        if ref.shape != got.shape:
            raise ValueError(f"outputs differ in shape: fp32 {tuple(ref.shape)}, quantised {tuple(got.shape)}")
        a = ref.detach().double().reshape(-1, ref.shape[-1])
        b = got.detach().double().reshape(-1, got.shape[-1])
        if keep is not None:
            a, b = a[keep.reshape(-1)], b[keep.reshape(-1)]
        na, nb = a.norm(dim=-1), b.norm(dim=-1)
        cos = (a * b).sum(-1) / (na * nb).clamp_min(1e-30)
        cos = torch.where((na == 0) & (nb == 0), 1.0, cos)  # two zero vectors agree (was: cosine 0)
        self.cos_sum += float(cos.sum())
        if cos.numel():  # (a batch may keep no token: tokens() all False)
            self.cos_min = min(self.cos_min, float(cos.min()))
        self.n += cos.numel()
        self.abs_err += float((a - b).abs().sum())
        self.abs_ref += float(a.abs().sum())

    def report(self) -> dict[str, float]:
        if not self.n:  # no token counted: no cosine to report (None: JSON has no NaN)
            return {"cosine": None, "cosine_min": None, "rel_l1": None}
        return {"cosine": self.cos_sum / self.n, "cosine_min": self.cos_min,
                "rel_l1": self.abs_err / max(self.abs_ref, 1e-30)}


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"a compared module must return a tensor (or a tuple starting with one), "
                    f"got {type(output).__name__}")


def _per_token(output: Tensor, batch: Any) -> Tensor:
    """``output``, with one value per token of a ``(B, T)`` batch of token ids (an RTD
    discriminator's logits) as ``(B, T, 1)``: each token is a vector of its own, not each
    sequence one vector of ``T`` values."""
    if output.dim() == 2 and isinstance(batch, Tensor) and output.shape == batch.shape:
        return output.unsqueeze(-1)
    return output


def _token_mask(keep: Any, output: Tensor) -> Tensor:
    """``tokens(batch)``'s mask, checked: a bool tensor shaped as the output's tokens (an
    integer 0/1 mask would index rows 0 and 1 over and over, not select tokens)."""
    if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
        what = f"dtype {keep.dtype}" if isinstance(keep, Tensor) else type(keep).__name__
        raise TypeError(f"tokens(batch) must return a bool tensor (True = count the token), got {what}"
                        + ("; give mask.bool()" if isinstance(keep, Tensor) else ""))
    if keep.shape != output.shape[:-1]:
        raise ValueError(f"tokens(batch) must return a mask of the output's tokens, shape "
                         f"{tuple(output.shape[:-1])}, got {tuple(keep.shape)}")
    return keep


def _calls(captured: dict[str, dict[str, list[Tensor]]], name: str) -> list[tuple[Tensor, Tensor]]:
    """The outputs of module ``name`` in a batch's forward, call by call: (fp32, quantised)."""
    ref, q = captured["ref"].get(name, []), captured["q"].get(name, [])
    if not ref or not q:
        raise ValueError(f"layers: {name!r} did not run in the forward of the {'quantised' if ref else 'fp32'} "
                         "model (a container such as a ModuleList is never called); name modules the "
                         "forward calls (the default: every block)")
    if len(ref) != len(q):
        raise ValueError(f"layers: {name!r} ran {len(ref)} times in the forward of the fp32 model and "
                         f"{len(q)} in the quantised one's: the two models do not run the same modules")
    return list(zip(ref, q, strict=True))


@torch.no_grad()
def compare_formats(
    model_fp32: nn.Module,
    model_q: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    layers: list[str] | None = None,
    task: Callable[[nn.Module], dict[str, float]] | None = None,
    tokens: Callable[[Any], Tensor] | None = None,
) -> dict[str, Any]:
    """Compare ``model_q`` (a quantised copy) with ``model_fp32`` on the same inputs.

    For every compared layer and for the final output, over all tokens of all batches:
    ``cosine`` (mean over tokens of the cosine between the two ``(d,)`` vectors),
    ``cosine_min`` (the worst token), ``rel_l1`` (``sum|q - f| / sum|f|``).

    Args:
        model_fp32, model_q: the reference and the quantised model (same module names).
        batches: inputs, e.g. ``input_ids (B, T)`` long tensors.
        forward: ``forward(model, batch) -> output (B, T, d)``; default ``model(batch)``.
            An output ``(B, T)`` of a batch ``(B, T)`` (one logit per token, the RTD
            discriminator's) is read as ``(B, T, 1)``: its cosine per token is 1 where
            the two logits have the same sign, -1 where not.
        layers: module names whose outputs ``(B, T, d)`` to compare; default
            :func:`default_layers` (every block's output hidden states).
        task: ``task(model) -> metrics`` (e.g. masked-token accuracy, perplexity), run
            on both models and reported with their differences.
        tokens: ``tokens(batch) -> (B, T)`` bool, True for the tokens to count (e.g.
            not padding); default every token.

    Returns:
        ``{"layers": {name: stats}, "output": stats, "min_layer_cosine",
        "max_layer_rel_l1", "n_batches", "n_tokens", "task"}`` where ``task`` (present
        only with ``task``) is ``{"fp32": m, "quantized": m, "delta": q - f,
        "relative": (q - f) / |f|}``. A value there is none to give (no token counted,
        no layer compared, a relative change of a metric that is 0 in fp32) is None, not
        NaN, which JSON cannot hold (``headwise eval --format`` prints the report).
    """
    forward = forward if forward is not None else (lambda m, b: m(b))
    layers = default_layers(model_fp32) if layers is None else list(layers)
    stats = {name: _Stats() for name in layers}
    out_stats = _Stats()
    # each compared module's outputs in this batch's forward, in call order
    captured: dict[str, dict[str, list[Tensor]]] = {"ref": {}, "q": {}}
    handles = []
    for tag, model in (("ref", model_fp32), ("q", model_q)):
        modules = dict(model.named_modules())
        for name in layers:
            if name not in modules:
                raise ValueError(f"layers: {name!r} is not a module of the {tag} model")

            def hook(_m, _a, out, _tag=tag, _name=name):
                captured[_tag].setdefault(_name, []).append(_first_tensor(out))

            handles.append(modules[name].register_forward_hook(hook))
    was = (model_fp32.training, model_q.training)
    model_fp32.eval()
    model_q.eval()
    n_batches = 0
    try:
        for batch in batches:
            captured["ref"].clear()
            captured["q"].clear()
            ref = _per_token(_first_tensor(forward(model_fp32, batch)), batch)
            got = _per_token(_first_tensor(forward(model_q, batch)), batch)
            keep = None if tokens is None else _token_mask(tokens(batch), ref).to(ref.device)
            out_stats.add(ref, got, keep)
            for name in layers:
                for a, b in _calls(captured, name):
                    stats[name].add(a, b, keep)
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model_fp32.train(was[0])
        model_q.train(was[1])
    if n_batches == 0:
        raise ValueError("batches is empty: nothing to compare")
    layer_reports = {name: s.report() for name, s in stats.items()}
    report: dict[str, Any] = {
        "layers": layer_reports,
        "output": out_stats.report(),
        "min_layer_cosine": min((r["cosine"] for r in layer_reports.values() if r["cosine"] is not None),
                                default=None),
        "max_layer_rel_l1": max((r["rel_l1"] for r in layer_reports.values() if r["rel_l1"] is not None),
                                default=None),
        "n_batches": n_batches,
        "n_tokens": out_stats.n,
    }
    if task is not None:
        f, q = task(model_fp32), task(model_q)
        report["task"] = {
            "fp32": f,
            "quantized": q,
            "delta": {k: q[k] - f[k] for k in f if k in q},
            "relative": {k: (q[k] - f[k]) / abs(f[k]) if f[k] else None for k in f if k in q},
        }
    return report
