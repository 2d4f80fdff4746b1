"""capture(): what it records equals what the layer computes, and it leaves no trace."""

import pytest
import torch

from headwise.attention import MultiHeadAttention
from headwise.inspect import attention_layers, capture, weights_capable


def _no_hooks(model):
    return all(not m._head_hooks for _, m in attention_layers(model))


def test_capture_equals_the_layers_own_need_weights_output():
    torch.manual_seed(0)
    layer = MultiHeadAttention(16, 4, dtype=torch.float64)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    kpm = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with capture(layer, ("weights", "z")) as cap:
        out = layer(x, key_padding_mask=kpm, causal=True)
    ref_out, ref_w = layer(x, key_padding_mask=kpm, causal=True, need_weights=True)
    assert cap.names == [""]
    torch.testing.assert_close(cap.weights[0], ref_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    # z is each head's output before W_O: summing z_h @ W_O^h (+ bias) rebuilds the output
    z = cap.z[""]
    assert z.shape == (2, 4, 5, 4)
    rebuilt = sum(z[:, h] @ layer.heads[h].W_O for h in range(4)) + layer.out_proj.bias
    torch.testing.assert_close(rebuilt, out)
    # and z is the weights applied to the values
    _, _, v = layer.project(x)
    torch.testing.assert_close(z, ref_w @ v)


def test_model_layers_are_named_by_path_and_index(mlm):
    ids = torch.randint(5, 120, (3, 7))
    with capture(mlm, ("weights", "z")) as cap:
        mlm(ids)
    assert cap.names == ["encoder.blocks.0.attn", "encoder.blocks.1.attn"]
    assert list(cap.weights) == [0, 1]
    assert cap.weights[1] is cap.weights["encoder.blocks.1.attn"]
    assert cap.weights[-1] is cap.weights[1]
    assert cap.stack("weights").shape == (2, 3, 4, 7, 7)
    assert cap.stack("z").shape == (2, 3, 4, 7, 8)
    torch.testing.assert_close(cap.weights[0].sum(-1), torch.ones(3, 4, 7))
    with pytest.raises(KeyError, match="module path"):
        cap.weights["blocks.9.attn"]


def test_no_hooks_left_and_outputs_unchanged(encoder, decoder):
    for model in (encoder, decoder):
        ids = torch.randint(5, 120, (2, 9))
        before = model(ids)
        with capture(model, "z"):
            during = model(ids)
        assert _no_hooks(model)
        torch.testing.assert_close(during, before, rtol=0, atol=0)  # z-only: same backend, same math
        with capture(model, ("weights", "z")):
            during_w = model(ids)
        assert _no_hooks(model)
        torch.testing.assert_close(during_w, before)  # weight-capable backend: same up to rounding
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)


def test_hooks_are_removed_when_the_block_raises(encoder):
    with pytest.raises(RuntimeError, match="boom"):
        with capture(encoder):
            raise RuntimeError("boom")
    assert _no_hooks(encoder)


def test_weightless_backend_is_switched_for_the_block_and_restored(encoder):
    for _, m in attention_layers(encoder):
        m.backend = "sdpa"
    assert not weights_capable(encoder.blocks[0].attn)
    ids = torch.randint(5, 120, (2, 6))
    ref = encoder(ids)
    with capture(encoder, "weights") as cap:
        out = encoder(ids)
        assert encoder.blocks[0].attn.backend == "auto"
    assert [m.backend for _, m in attention_layers(encoder)] == ["sdpa", "sdpa"]
    assert cap.weights[0].shape == (2, 4, 6, 6)
    torch.testing.assert_close(out, ref)
    # capturing only z never needs weights, so the backend stays as chosen
    with capture(encoder, "z"):
        assert encoder.blocks[0].attn.backend == "sdpa"
        encoder(ids)


def test_keep_all_records_every_forward_and_layer_subsets(decoder):
    ids = torch.randint(5, 120, (1, 4))
    with capture(decoder, "weights", keep="all", layers=["blocks.1.attn"]) as cap:
        caches = decoder.new_kv_caches()
        decoder(ids, caches)
        decoder(ids[:, :1], caches)  # one cached decoding step: (1, H, 1, 5)
    hist = cap.history("weights", 1)
    assert [tuple(t.shape) for t in hist] == [(1, 4, 4, 4), (1, 4, 1, 5)]
    assert 0 not in cap.weights and cap.n_calls == {0: 0, 1: 2}
    with pytest.raises(KeyError, match="nothing captured"):
        cap.weights[0]
    # causal maps: nothing above the diagonal
    assert hist[0].triu(1).abs().max() == 0


def test_errors_name_the_argument(encoder):
    with pytest.raises(ValueError, match="what must be"):
        with capture(encoder, ("weights", "scores")):
            pass
    with pytest.raises(ValueError, match="keep must be"):
        with capture(encoder, keep="first"):
            pass
    with pytest.raises(ValueError, match="layers must hold"):
        with capture(encoder, layers=[5]):
            pass
    with pytest.raises(ValueError, match="no headwise MultiHeadAttention"):
        with capture(torch.nn.Linear(2, 2)):
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        attention_layers("model")


def test_the_layer_obtains_weights_for_its_hooks_and_takes_its_backend_back(encoder):
    """register_head_hook(need_weights=True, switch_to_auto=True) on a layer whose backend
    returns no weights runs it on "auto" until the last such hook is removed; z-only hooks
    and hooks without switch_to_auto change nothing."""
    layer = encoder.blocks[0].attn
    layer.backend = "sdpa"
    assert not layer.can_return_weights()
    seen = []
    z_only = layer.register_head_hook(lambda m, z, w: seen.append(w))
    assert layer.backend == "sdpa"
    strict = layer.register_head_hook(lambda m, z, w: None, need_weights=True)
    assert layer.backend == "sdpa"
    strict.remove()
    first = layer.register_head_hook(lambda m, z, w: seen.append(w), need_weights=True, switch_to_auto=True)
    second = layer.register_head_hook(lambda m, z, w: None, need_weights=True, switch_to_auto=True)
    assert layer.backend == "auto" and layer.can_return_weights()
    encoder(torch.randint(5, 120, (1, 5)))
    assert seen[0] is None and seen[1].shape == (1, 4, 5, 5)
    first.remove()
    assert layer.backend == "auto"  # the second hook still needs the weights
    second.remove()
    assert layer.backend == "sdpa"
    z_only.remove()
    assert layer.backend == "sdpa" and _no_hooks(encoder)
    layer.backend = "math"
    assert layer.can_return_weights()
