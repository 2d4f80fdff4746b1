"""Name what each head does, from its measures, with thresholds stated in one place.

A head may earn several roles; each role has one test, on the measures of
:mod:`headwise.inspect.measures`, the probe of :mod:`headwise.inspect.syntax` and the
induction score (all thresholds in :class:`RoleThresholds`, defaults in
:data:`DEFAULT_THRESHOLDS`):

==================  ===========================================================
role                test
==================  ===========================================================
``previous-token``  mean attention to offset -1 >= ``positional`` (0.5)
``next-token``      mean attention to offset +1 >= ``positional``
``self``            mean attention to offset 0 >= ``positional``
``special``         mean attention to special tokens >= ``special`` (0.5): a
                    "no-op" head parking its attention on [CLS]/[SEP]/BOS
``broad``           normalised entropy >= ``broad`` (0.8): attends nearly evenly
``syntactic:R``     probe accuracy for relation R (better direction) >=
                    baseline accuracy + ``syntactic_margin`` (0.10), over
                    relations with >= ``min_relation_count`` (50) instances
``induction``       induction score >= ``induction`` (0.3)
==================  ===========================================================

The **primary** role is the first the head has in :data:`PRIORITY` (the most specific
behaviour first: an induction head usually also looks broad elsewhere; a positional
head that also beats a baseline is reported as syntactic), else ``"other"``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .measures import HeadMeasures
from .syntax import SyntaxProbe

__all__ = ["RoleThresholds", "DEFAULT_THRESHOLDS", "ROLES", "PRIORITY", "OTHER", "HeadRoles", "assign_roles",
           "role_counts"]


@dataclass(frozen=True)
class RoleThresholds:
    """Every role threshold (fractions of a query's attention unless noted)."""

    #: previous-token / next-token / self: mean attention to offset -1 / +1 / 0.
    positional: float = 0.5
    #: special (no-op): mean attention to special tokens.
    special: float = 0.5
    #: broad: normalised entropy (1 = uniform over the attendable keys).
    broad: float = 0.8
    #: syntactic: accuracy points (as a fraction) above the relation's offset baseline.
    syntactic_margin: float = 0.10
    #: syntactic: a relation needs this many instances to be judged (with 20, one
    #: standard error of an accuracy near 0.5 is already ~0.11, the size of the margin).
    min_relation_count: int = 50
    #: induction: induction score on repeated random tokens.
    induction: float = 0.3

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


DEFAULT_THRESHOLDS = RoleThresholds()
#: the roles without a relation suffix ("syntactic" appears as "syntactic:<relation>").
ROLES: tuple[str, ...] = ("induction", "syntactic", "previous-token", "next-token", "self", "special", "broad")
#: order in which the primary role is chosen.
PRIORITY: tuple[str, ...] = ROLES
#: the primary role of a head that has none of :data:`ROLES`
OTHER = "other"


@dataclass
class HeadRoles:
    """The roles of head ``(layer, head)``: ``roles`` (in :data:`PRIORITY` order;
    syntactic ones as ``"syntactic:<relation>"``, best margin first), ``primary``,
    and ``evidence``: the measured values the tests used."""

    layer: int
    head: int
    roles: list[str]
    primary: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _lh(name: str, t: Tensor | None, shape: tuple[int, int] | None) -> tuple[Tensor | None, tuple[int, int] | None]:
    if t is None:
        return None, shape
    if not isinstance(t, Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be an (L, H) tensor, got {tuple(getattr(t, 'shape', ()))}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, other inputs have (L, H) = {shape}")
    return t.double().cpu(), tuple(t.shape)


def _ge(x: float | None, threshold: float) -> bool:
    return x is not None and not math.isnan(x) and x >= threshold


def assign_roles(
    measures: HeadMeasures | None = None,
    probe: SyntaxProbe | None = None,
    induction: Tensor | None = None,
    thresholds: RoleThresholds = DEFAULT_THRESHOLDS,
) -> list[HeadRoles]:
    """Roles of every head, layer-major (``[l * H + h]``). Any input may be missing;
    its roles are then never given.

    Args:
        measures: token-level :class:`HeadMeasures`.
        probe: :class:`SyntaxProbe` from word-level maps.
        induction: ``(L, H)`` induction scores.
        thresholds: the :class:`RoleThresholds` to apply.
    """
    if not isinstance(thresholds, RoleThresholds):
        raise TypeError(f"thresholds must be a RoleThresholds, got {type(thresholds).__name__}")
    shape = None
    tables: dict[str, Tensor | None] = {}
    if measures is not None:
        for name, t in (
            ("previous-token", measures.offsets.get(-1)),
            ("next-token", measures.offsets.get(1)),
            ("self", measures.offsets.get(0)),
            ("special", measures.to_special),
            ("broad", measures.normalized_entropy),
        ):
            tables[name], shape = _lh(f"measures.{name}", t, shape)
    tables["induction"], shape = _lh("induction", induction, shape)
    margin = best_acc = None
    if probe is not None:
        margin = probe.margin()  # (L, H, R)
        best_acc, _ = probe.best_accuracy()
        if shape is not None and tuple(margin.shape[:2]) != shape:
            raise ValueError(f"probe covers (L, H) = {tuple(margin.shape[:2])}, other inputs {shape}")
        shape = tuple(margin.shape[:2])
        judged = (probe.counts >= thresholds.min_relation_count).tolist()
    if shape is None:
        raise ValueError("assign_roles needs at least one of measures, probe, induction")

    limits = {
        "previous-token": thresholds.positional,
        "next-token": thresholds.positional,
        "self": thresholds.positional,
        "special": thresholds.special,
        "broad": thresholds.broad,
        "induction": thresholds.induction,
    }
    out = []
    n_layers, n_heads = shape
    for layer in range(n_layers):
        for head in range(n_heads):
            found: dict[str, list[str]] = {}
            evidence: dict[str, Any] = {}
            for name, t in tables.items():
                if t is None:
                    continue
                value = float(t[layer, head])
                evidence[name] = None if math.isnan(value) else value
                if _ge(value, limits[name]):
                    found[name] = [name]
            if margin is not None:
                syn = []
                for r, rel in enumerate(probe.relations):
                    m = float(margin[layer, head, r])
                    if judged[r] and _ge(m, thresholds.syntactic_margin):
                        syn.append((m, rel, float(best_acc[layer, head, r])))
                syn.sort(key=lambda x: (-x[0], x[1]))
                if syn:
                    found["syntactic"] = [f"syntactic:{rel}" for _, rel, _ in syn]
                    evidence["syntactic"] = {rel: {"accuracy": a, "margin": m} for m, rel, a in syn}
            roles = [r for p in PRIORITY for r in found.get(p, [])]
            out.append(HeadRoles(layer, head, roles, roles[0] if roles else OTHER, evidence))
    return out


def role_counts(roles: list[HeadRoles]) -> dict[str, int]:
    """How many heads have each primary role."""
    counts: dict[str, int] = {}
    for r in roles:
        key = r.primary.split(":", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts

