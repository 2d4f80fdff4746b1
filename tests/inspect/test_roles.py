"""Role detectors on synthetic maps whose answer is known, including offset signs."""

import pytest
import torch
from synthetic_maps import shifted

from headwise.inspect import (
    DEFAULT_THRESHOLDS,
    RoleThresholds,
    SyntaxProbe,
    assign_roles,
    head_measures,
    role_counts,
)

T = 8
SPECIAL = torch.zeros(1, T, dtype=torch.bool)
SPECIAL[0, 0] = SPECIAL[0, -1] = True


def maps() -> torch.Tensor:
    """(1, L=1, H=7, T, T): prev, next, self, specials, uniform, 40/40/20 prev/next/self mix, sharp random."""
    g = torch.Generator().manual_seed(0)
    special = torch.zeros(T, T)
    special[:, 0] = 0.7
    special[:, -1] = 0.3
    heads = [
        shifted(T, -1),
        shifted(T, 1),
        shifted(T, 0),
        special,
        torch.full((T, T), 1.0 / T),
        0.4 * shifted(T, -1) + 0.4 * shifted(T, 1) + 0.2 * shifted(T, 0),
        (torch.randn(T, T, generator=g) * 6).softmax(-1),
    ]
    return torch.stack(heads)[None, None]


def roles_by_head(**kw):
    m = head_measures(maps(), None, SPECIAL)
    return {r.head: r for r in assign_roles(m, **kw)}


def test_each_detector_finds_its_head_and_only_it():
    r = roles_by_head()
    assert r[0].roles == ["previous-token"] and r[0].primary == "previous-token"
    assert r[1].roles == ["next-token"] and r[1].primary == "next-token"
    assert r[2].roles == ["self"]
    assert r[3].roles == ["special"]
    assert r[4].roles == ["broad"]
    assert r[5].roles == [] and r[5].primary == "other"  # neither offset reaches 0.5
    assert "broad" not in r[6].roles and "previous-token" not in r[6].roles
    assert r[0].evidence["previous-token"] == pytest.approx(1.0)
    assert r[0].evidence["next-token"] == pytest.approx(0.0)


def test_sign_of_offsets_is_not_confused():
    # transpose a previous-token map: it becomes a next-token one, and vice versa
    m = head_measures(maps().flip(-1).flip(-2))
    r = {x.head: x for x in assign_roles(m)}
    assert r[0].primary == "next-token" and "previous-token" not in r[0].roles
    assert r[1].primary == "previous-token" and "next-token" not in r[1].roles


def test_thresholds_move_the_decision():
    m = head_measures(maps(), None, SPECIAL)
    loose = {x.head: x for x in assign_roles(m, thresholds=RoleThresholds(positional=0.5, special=0.5))}
    assert loose[5].roles == []
    looser = {x.head: x for x in assign_roles(m, thresholds=RoleThresholds(positional=0.39))}
    assert looser[5].roles == ["previous-token", "next-token"]  # several roles; primary by PRIORITY
    assert looser[5].primary == "previous-token"
    assert DEFAULT_THRESHOLDS.to_dict()["induction"] == 0.3


def _probe(acc_head: float, baseline: float, count: int) -> SyntaxProbe:
    acc = torch.full((2, 1, 7, 1), 0.1, dtype=torch.float64)
    acc[0, 0, 6, 0] = acc_head
    return SyntaxProbe(["det"], torch.tensor([count]), acc, [1], torch.tensor([baseline], dtype=torch.float64))


def test_syntactic_needs_a_margin_over_the_baseline_and_enough_instances():
    m = head_measures(maps(), None, SPECIAL)
    hit = {x.head: x for x in assign_roles(m, _probe(0.71, 0.6, 50))}
    assert hit[6].roles == ["syntactic:det"] and hit[6].primary == "syntactic:det"
    assert hit[6].evidence["syntactic"]["det"]["margin"] == pytest.approx(0.11)
    near = {x.head: x for x in assign_roles(m, _probe(0.69, 0.6, 50))}
    assert near[6].roles == []
    rare = {x.head: x for x in assign_roles(m, _probe(0.95, 0.6, 5))}
    assert rare[6].roles == []


def test_induction_role_and_primary_priority():
    m = head_measures(maps(), None, SPECIAL)
    ind = torch.zeros(1, 7, dtype=torch.float64)
    ind[0, 4] = 0.9  # the uniform head also scores as induction: induction is primary
    ind[0, 5] = 0.29
    r = {x.head: x for x in assign_roles(m, induction=ind)}
    assert r[4].roles == ["induction", "broad"] and r[4].primary == "induction"
    assert r[5].roles == []
    counts = role_counts(list(r.values()))
    assert counts["induction"] == 1 and counts["previous-token"] == 1 and sum(counts.values()) == 7


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        assign_roles()
    with pytest.raises(ValueError, match="induction must be an"):
        assign_roles(induction=torch.zeros(3))
    m = head_measures(maps())
    with pytest.raises(ValueError, match="other inputs"):
        assign_roles(m, induction=torch.zeros(2, 7))
    with pytest.raises(TypeError, match="RoleThresholds"):
        assign_roles(m, thresholds={"broad": 0.8})
