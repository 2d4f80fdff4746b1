"""Encoder(rows=...): the last block computed at the selected positions only gives
exactly the selected rows of the full encoder, values and gradients, and runs in full
whenever something is watching that block."""

import pytest
import torch

from headwise.models import Encoder, ModelConfig

V = 50


def config(**kw):
    base = dict(vocab_size=V, d_model=24, n_layers=3, n_heads=3, d_ff=40, max_len=32)
    return ModelConfig(**{**base, **kw})


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (4, 17), generator=g)
    rows = torch.rand(4, 17, generator=g) < 0.2
    rows[2] = False  # a sequence with nothing selected
    rows[3, :] = True  # and one with everything
    pad = torch.zeros(4, 17, dtype=torch.bool)
    pad[1, 12:] = True
    return ids, rows, pad


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_rows_equal_the_full_encoders_rows_float64(norm):
    torch.manual_seed(0)
    enc = Encoder(config(norm=norm)).double()
    ids, rows, pad = data()
    full = enc(ids, pad)
    got = enc(ids, pad, rows=rows)
    assert got.shape == (int(rows.sum()), 24)
    torch.testing.assert_close(got, full[rows], rtol=0, atol=1e-12)
    weights = torch.randn_like(got)
    g_got = torch.autograd.grad((got * weights).sum(), list(enc.parameters()), allow_unused=True)
    g_want = torch.autograd.grad((full[rows] * weights).sum(), list(enc.parameters()),
                                 allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_nothing_selected_and_rope_fall_back():
    torch.manual_seed(0)
    ids, rows, pad = data()
    enc = Encoder(config()).double()
    assert enc(ids, pad, rows=torch.zeros_like(rows)).shape == (0, 24)
    rope = Encoder(config(positions="rope")).double()
    torch.testing.assert_close(rope(ids, pad, rows=rows), rope(ids, pad)[rows])


def test_a_head_hook_sees_every_position():
    torch.manual_seed(0)
    enc = Encoder(config()).double()
    ids, rows, pad = data()
    seen = []
    handle = enc.blocks[-1].attn.register_head_hook(lambda layer, z, w: seen.append(z.shape))
    out = enc(ids, pad, rows=rows)
    handle.remove()
    assert seen == [(4, 3, 17, 8)]
    torch.testing.assert_close(out, enc(ids, pad)[rows])


@pytest.mark.parametrize("kind", ["backward", "global forward"])
def test_a_backward_or_global_hook_sees_every_position(kind):
    """Forward hooks on the last block kept it whole; a backward hook there, or a global
    module hook, saw only the selected rows' tensors. Now they keep it whole too."""
    torch.manual_seed(0)
    enc = Encoder(config()).double()
    ids, rows, pad = data()
    rows[3, 5:] = False  # no sequence has every position selected
    mlp = enc.blocks[-1].mlp
    seen = []
    if kind == "backward":
        handle = mlp.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].shape))
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: seen.append(o.shape) if m is mlp else None)
    try:
        out = enc(ids, pad, rows=rows)
        out.sum().backward()
    finally:
        handle.remove()
    assert seen == [(4, 17, 24)]
