"""Per-head measures on synthetic maps with known answers, and the induction score."""

import math

import pytest
import torch
from synthetic_maps import shifted

from headwise.inspect import (
    MeasureAccumulator,
    head_measures,
    induction_score_from_weights,
    induction_scores,
    repeated_random_tokens,
)


def synthetic(t: int = 6) -> torch.Tensor:
    """(1, L=1, H=5, T, T): previous-token, next-token, self, uniform, half on position 0."""
    sink = torch.zeros(t, t)
    sink[:, 0] += 0.5
    sink += 0.5 * shifted(t, 0)
    heads = [shifted(t, -1), shifted(t, 1), shifted(t, 0), torch.full((t, t), 1.0 / t), sink]
    return torch.stack(heads)[None, None]


def test_offsets_have_the_right_sign():
    m = head_measures(synthetic())
    t = 6
    prev, nxt, self_, uni = 0, 1, 2, 3
    # offset -1 is averaged over the queries that have a previous token (1..T-1)
    assert m.offsets[-1][0, prev] == 1.0 and m.offsets[1][0, prev] == 0.0
    assert m.offsets[1][0, nxt] == 1.0 and m.offsets[-1][0, nxt] == 0.0
    assert m.offsets[0][0, self_] == 1.0 and m.offsets[-1][0, self_] == 0.0 and m.offsets[1][0, self_] == 0
    assert m.offsets[-2][0, prev] == 0.0 and m.offsets[2][0, nxt] == 0.0
    for o in (-2, -1, 0, 1, 2):
        assert m.offsets[o][0, uni] == pytest.approx(1 / t)


def test_entropy_and_normalized_entropy():
    m = head_measures(synthetic())
    assert m.entropy[0, 0] == 0.0 and m.normalized_entropy[0, 2] == 0.0
    assert m.entropy[0, 3] == pytest.approx(math.log(6))
    assert m.normalized_entropy[0, 3] == pytest.approx(1.0)
    # 0.5 / 0.5 split (row 0 is all on position 0: entropy 0)
    assert m.entropy[0, 4] == pytest.approx(5 / 6 * math.log(2))


def test_padding_is_ignored():
    t, n = 6, 4  # sentence of 4 tokens padded to 6
    w = torch.full((1, 1, 1, t, t), 0.5)  # garbage in padded rows/cols
    w[0, 0, 0, :n, :n] = 1.0 / n
    valid = torch.tensor([[True] * n + [False] * 2])
    m = head_measures(w, valid)
    assert m.n_rows == n
    assert m.normalized_entropy[0, 0] == pytest.approx(1.0)
    assert m.offsets[-1][0, 0] == pytest.approx(1 / n)
    assert m.received_count.tolist() == [4, 4, 4, 4, 0, 0]
    assert torch.isnan(m.received[0, 0, 4:]).all()


def test_causal_uniform_is_fully_broad_and_first_row_is_skipped():
    t = 5
    w = torch.tril(torch.ones(t, t))
    w = (w / w.sum(-1, keepdim=True))[None, None, None]
    m = head_measures(w, causal=True)
    assert m.normalized_entropy[0, 0] == pytest.approx(1.0)
    expected = sum(math.log(i) for i in range(1, t + 1)) / t
    assert m.entropy[0, 0] == pytest.approx(expected)
    # position 0 is seen by every query, position 4 by one
    assert m.received_count.tolist() == [5, 4, 3, 2, 1]


def test_special_punct_and_sinks():
    t = 6
    w = synthetic(t)
    special = torch.zeros(1, t, dtype=torch.bool)
    special[0, 0] = special[0, -1] = True
    punct = torch.zeros(1, t, dtype=torch.bool)
    punct[0, 3] = True
    m = head_measures(w, None, special, punct)
    assert m.to_special[0, 4] == pytest.approx((1.0 + 5 * 0.5 + 0.5) / 6)  # row 0 all on 0; row 5 half on itself
    assert m.to_special[0, 3] == pytest.approx(2 / 6)
    assert m.to_punct[0, 2] == pytest.approx(1 / 6)
    sinks = m.sinks()
    assert {(s["head"], s["position"]) for s in sinks} == {(4, 0)} | {(h, p) for h, p in _one_hot_sinks(t)}
    s = next(s for s in sinks if s["head"] == 4)
    assert s["mean_attention"] == pytest.approx((1.0 + 5 * 0.5) / 6)


def _one_hot_sinks(t):
    # previous-token head: position 0 gets rows 0 and 1; next-token: the last position, 2 of 6 rows (> 0.3)
    return {(0, 0), (1, t - 1)}


def test_accumulating_batches_equals_one_batch():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(4, 2, 3, 7, 7, generator=g).softmax(-1)
    valid = torch.rand(4, 7, generator=g) > 0.2
    valid[:, 0] = True
    special = torch.rand(4, 7, generator=g) > 0.7
    whole = head_measures(w, valid, special)
    acc = MeasureAccumulator()
    acc.update(w[:1], valid[:1], special[:1])
    acc.update(w[1:, :, :, :5, :5], valid[1:, :5], special[1:, :5])  # shorter T: buffers must grow later
    acc.update(w[1:], valid[1:], special[1:])
    acc2 = MeasureAccumulator()
    acc2.update(w[:1], valid[:1], special[:1])
    acc2.update(w[1:], valid[1:], special[1:])
    two = acc2.result()
    for name, t in whole.table().items():
        torch.testing.assert_close(two.table()[name], t, msg=name)
    assert acc.result().n_rows == whole.n_rows + int(valid[1:, :5].sum())


def test_induction_score_high_for_induction_map_low_for_random():
    n, t = 8, 17  # [bos] r r
    ind = torch.zeros(t, t)
    ind[:, 0] = 1.0  # first copy: park on BOS
    ind[: n + 1] = 0
    ind[: n + 1, 0] = 1.0
    for i in range(n + 1, t):
        ind[i] = 0
        ind[i, i - n + 1] = 1.0
    assert induction_score_from_weights(ind, n, bos=True) == 1.0
    prev = shifted(t, -1)
    assert induction_score_from_weights(prev, n, bos=True) == 0.0
    g = torch.Generator().manual_seed(0)
    rand = torch.randn(16, t, t, generator=g).softmax(-1)
    assert induction_score_from_weights(rand, n, bos=True).mean() < 0.15
    with pytest.raises(ValueError, match="T = 2"):
        induction_score_from_weights(ind, n)


def test_repeated_random_tokens():
    g = torch.Generator().manual_seed(0)
    x = repeated_random_tokens(10, 4, low=100, high=200, bos_id=1, generator=g)
    assert x.shape == (4, 21) and (x[:, 0] == 1).all()
    assert torch.equal(x[:, 1:11], x[:, 11:])
    assert ((x[:, 1:] >= 100) & (x[:, 1:] < 200)).all()
    assert all(len(set(row[1:11].tolist())) == 10 for row in x)
    with pytest.raises(ValueError, match="low < high"):
        repeated_random_tokens(3, low=5, high=5)


def test_induction_scores_on_a_model(decoder):
    s = induction_scores(decoder, n=6, batch=2, vocab_range=(10, 120))
    assert s.shape == (2, 4) and (s >= 0).all() and (s <= 1).all()
    assert not decoder.training


def test_mask_errors_name_the_argument():
    w = synthetic()
    with pytest.raises(ValueError, match="special must be a bool tensor"):
        head_measures(w, special=torch.zeros(1, 6))
    with pytest.raises(ValueError, match=r"weights must be a tensor \(B, L, H, T, T\)"):
        MeasureAccumulator().update(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no query rows"):
        MeasureAccumulator().result()
