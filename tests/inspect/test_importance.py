"""Head importance (Michel et al. 2019), ablation and the pruning curve."""

import pytest
import torch
import torch.nn.functional as F

from headwise.inspect import (
    ablate_heads,
    attention_layers,
    capture,
    head_importance,
    head_mask,
    head_means,
    heads_to_mask,
    pruning_curve,
)


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 120, (3, 10), generator=g) for _ in range(n)]


def mlm_loss(model, batch):
    logits = model(batch)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.reshape(-1))


def mlm_metric(model, batch):
    return float(mlm_loss(model, batch).detach())


def test_importance_of_a_head_with_zero_wo_block_is_exactly_zero(mlm):
    with torch.no_grad():
        mlm.encoder.blocks[1].attn.heads[2].W_O.zero_()
    imp = head_importance(mlm, batches(), mlm_loss)
    assert imp.shape == (2, 4) and imp.dtype == torch.float64
    assert imp[1, 2] == 0.0
    assert (imp[0] > 0).all() and (imp[1, [0, 1, 3]] > 0).all()
    # normalised per layer by the L2 norm (Michel et al.)
    torch.testing.assert_close(imp.norm(dim=-1), torch.ones(2, dtype=torch.float64))
    assert all(p.grad is None for p in mlm.parameters())
    assert all(not m._head_hooks for _, m in attention_layers(mlm))


def test_importance_is_the_summed_absolute_mask_gradient(mlm):
    data = batches()
    raw = head_importance(mlm, data, mlm_loss, normalize=False)
    expected = torch.zeros(2, 4, dtype=torch.float64)
    for b in data:
        m = torch.ones(2, 4, requires_grad=True)
        with head_mask(mlm, m):
            mlm_loss(mlm, b).backward()
        expected += m.grad.abs().double()
    torch.testing.assert_close(raw, expected)


def test_zero_ablating_a_whole_layer_equals_zeroing_its_out_proj_weight(mlm):
    ids = batches(1)[0]
    with ablate_heads(mlm, [(0, h) for h in range(4)], "zero") as mask:
        ablated = mlm(ids)
    assert mask.tolist() == [[True] * 4, [False] * 4]
    assert all(not m._head_hooks for _, m in attention_layers(mlm))
    with torch.no_grad():
        mlm.encoder.blocks[0].attn.out_proj.weight.zero_()  # the bias stays
    torch.testing.assert_close(ablated, mlm(ids))


def test_mean_ablation_replaces_outputs_with_their_data_mean(mlm):
    data = batches()
    means = head_means(mlm, data, mlm_metric)
    assert means.shape == (2, 4, 8)
    with capture(mlm, "z") as cap, torch.no_grad():
        zs = []
        for b in data:
            mlm(b)
            zs.append(cap.stack("z"))  # (L, B, H, T, Dh)
    ref = torch.cat(zs, 1).double().mean((1, 3))
    torch.testing.assert_close(means, ref)
    # valid() restricts the average to chosen positions
    first_only = head_means(mlm, data, mlm_metric, valid=lambda b: torch.arange(b.shape[1])[None].expand_as(b) == 0)
    torch.testing.assert_close(first_only, torch.cat(zs, 1).double()[:, :, :, 0].mean(1))
    # inside the ablation, later hooks (capture) see the mean in place of head (1, 3) only
    with ablate_heads(mlm, [(1, 3)], "mean", means=means), capture(mlm, "z") as cap, torch.no_grad():
        mlm(data[0])
    z = cap.z[1]
    torch.testing.assert_close(z[:, 3], means[1, 3].float().expand_as(z[:, 3]))
    torch.testing.assert_close(z[:, :3], zs[0][1][:, :3])


def test_pruning_curve_removes_least_important_heads_first(mlm):
    data = batches(1)
    importance = torch.arange(8, dtype=torch.float64).flip(0).reshape(2, 4)  # head (1, 3) least important

    def zeroed_heads(model, batch):
        with capture(model, "z") as cap:
            model(batch)
        z = cap.stack("z")  # (L, B, H, T, Dh)
        return float((z.abs().amax((1, 3, 4)) == 0).sum())

    def first_removed(model, batch):
        with capture(model, "z") as cap:
            model(batch)
        return float(cap.z[1][:, 3].abs().max() == 0)

    curve = pruning_curve(mlm, importance, data, zeroed_heads, include_all=True)
    assert [f for f, _ in curve] == pytest.approx([i / 10 for i in range(11)])
    assert [m for _, m in curve] == [float(round(f * 8)) for f, _ in curve]
    assert pruning_curve(mlm, importance, data, first_removed, step=0.125)[1] == (0.125, 1.0)
    # the endpoints are the plain model and the model with every W_O zeroed
    curve = pruning_curve(mlm, importance, data, mlm_metric, include_all=True)
    assert curve[0][1] == pytest.approx(mlm_metric(mlm, data[0]))
    with torch.no_grad():
        for _, m in attention_layers(mlm):
            m.out_proj.weight.zero_()
    assert curve[-1][1] == pytest.approx(mlm_metric(mlm, data[0]), rel=1e-5)


def test_pruning_curve_mean_mode_computes_means(mlm):
    curve = pruning_curve(mlm, torch.rand(2, 4), batches(1), mlm_metric, mode="mean", step=0.5)
    assert [f for f, _ in curve] == [0.0, 0.5]


def test_errors_name_the_argument(mlm):
    with pytest.raises(ValueError, match="mode must be one of"):
        with ablate_heads(mlm, [(0, 0)], "noise"):
            pass
    with pytest.raises(ValueError, match="needs means"):
        with ablate_heads(mlm, [(0, 0)], "mean"):
            pass
    with pytest.raises(ValueError, match=r"\(layer, head\) pairs within \(L, H\) = \(2, 4\)"):
        heads_to_mask([(2, 0)], (2, 4))
    with pytest.raises(ValueError, match="must be bool"):
        heads_to_mask(torch.ones(2, 4), (2, 4))
    with pytest.raises(ValueError, match="scalar tensor"):
        head_importance(mlm, batches(1), lambda m, b: m(b))
    with pytest.raises(ValueError, match="batches is empty"):
        head_importance(mlm, [], mlm_loss)
    with pytest.raises(ValueError, match=r"importance must be a tensor of shape \(L, H\)"):
        pruning_curve(mlm, torch.rand(3), batches(1), mlm_metric)
    with pytest.raises(ValueError, match="step must be"):
        pruning_curve(mlm, torch.rand(2, 4), batches(1), mlm_metric, step=0)
