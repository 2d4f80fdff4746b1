"""headwise.nn.MultiheadAttention against torch.nn.MultiheadAttention: cases a sweep of
bad or unusual input found where the two disagreed (outputs, or the exception type a
caller written against torch catches)."""

from __future__ import annotations

import pytest
import torch

from headwise.nn import DtypeError, DtypeRuntimeError, MultiheadAttention, ShapeError

E, H = 8, 2


def _pair(**kw):
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, H, **kw).eval()
    ours = MultiheadAttention(E, H, **kw).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _torch_error(theirs, *args, **kw) -> tuple[type, str]:
    with pytest.raises(Exception) as e:
        theirs(*args, **kw)
    return type(e.value), str(e.value)


@pytest.mark.parametrize("tgt_len,src_len", [(3, 5), (5, 3)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_is_causal_hint_with_more_or_fewer_keys_than_queries_matches_torch(tgt_len, src_len, batch_first):
    """torch takes the hint as sdpa's is_causal, a top-left triangle; headwise's causal
    flag is bottom-right (for a KV cache): it gave other outputs when L != S."""
    theirs, ours = _pair(batch_first=batch_first)
    shape = (lambda t: (2, t, E)) if batch_first else (lambda t: (t, 2, E))
    q, kv = torch.randn(shape(tgt_len)), torch.randn(shape(src_len))
    mask = torch.zeros(tgt_len, src_len, dtype=torch.bool)  # not read: the hint decides
    want, _ = theirs(q, kv, kv, attn_mask=mask, is_causal=True, need_weights=False)
    got, _ = ours(q, kv, kv, attn_mask=mask, is_causal=True, need_weights=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("need_weights", [False, True])
def test_bf16_input_under_autocast_runs_as_in_torch(need_weights):
    """was: TypeError "query has dtype torch.bfloat16 but the module's weights are
    torch.float32", where torch's module runs (autocast casts the weights)."""
    theirs, ours = _pair(batch_first=True)
    x = torch.randn(2, 3, E).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, want_w = theirs(x, x, x.float(), need_weights=need_weights)
        got, got_w = ours(x, x, x.float(), need_weights=need_weights)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)
    if need_weights:
        torch.testing.assert_close(got_w.float(), want_w.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("key_width,value_width,which", [(5, 6, "key"), (4, 7, "value"), (5, 7, "key")])
def test_kdim_vdim_mismatch_raises_torchs_assertion(key_width, value_width, which):
    theirs, ours = _pair(kdim=4, vdim=6)
    q, k, v = torch.randn(3, 2, E), torch.randn(5, 2, key_width), torch.randn(5, 2, value_width)
    kind, text = _torch_error(theirs, q, k, v)
    assert kind is AssertionError and which in text
    for caught in (AssertionError, ValueError):  # was a RuntimeError: `except AssertionError` missed it
        with pytest.raises(caught) as e:
            ours(q, k, v)
        assert isinstance(e.value, ShapeError) and text in str(e.value)


@pytest.mark.parametrize("name", ["key_padding_mask", "attn_mask"])
def test_mask_of_integer_dtype_raises_torchs_assertion(name):
    theirs, ours = _pair()
    x = torch.randn(3, 2, E)
    mask = {"key_padding_mask": torch.zeros(2, 3, dtype=torch.int64),
            "attn_mask": torch.zeros(3, 3, dtype=torch.int64)}[name]
    kind, text = _torch_error(theirs, x, x, x, **{name: mask})
    assert kind is AssertionError
    for caught in (AssertionError, TypeError):
        with pytest.raises(caught) as e:
            ours(x, x, x, **{name: mask})
        assert isinstance(e.value, DtypeError) and text in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("name", ["key_padding_mask", "attn_mask"])
def test_mask_that_is_not_a_tensor_raises_type_error_naming_it(name):
    theirs, ours = _pair()
    x = torch.randn(3, 2, E)
    mask = [[0.0] * 3] * (2 if name == "key_padding_mask" else 3)
    assert _torch_error(theirs, x, x, x, **{name: mask})[0] is TypeError
    with pytest.raises(TypeError, match=f"{name} must be None or a torch.Tensor, got list"):  # was AttributeError
        ours(x, x, x, **{name: mask})


@pytest.mark.parametrize("which", ["query", "key"])
def test_input_of_another_dtype_than_the_weights_raises_runtime_error(which):
    theirs, ours = _pair()
    x = torch.randn(3, 2, E)
    args = [x, x.clone(), x.clone()]
    args[["query", "key"].index(which)] = x.double()
    kind, text = _torch_error(theirs, *args)
    assert kind is RuntimeError
    for caught in (RuntimeError, TypeError):  # was a TypeError only: `except RuntimeError` missed it
        with pytest.raises(caught) as e:
            ours(*args)
        assert isinstance(e.value, DtypeRuntimeError) and text in str(e.value) and which in str(e.value)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("name", ["key_padding_mask", "attn_mask"])
def test_float_mask_of_another_dtype_than_the_query_is_refused_as_torch_refuses_it(name, need_weights):
    """was: accepted (cast to the query's dtype) where torch raises a RuntimeError."""
    theirs, ours = _pair()
    x = torch.randn(3, 2, E)
    mask = {"key_padding_mask": torch.zeros(2, 3, dtype=torch.float64),
            "attn_mask": torch.zeros(3, 3, dtype=torch.float64)}[name]
    assert _torch_error(theirs, x, x, x, need_weights=need_weights, **{name: mask})[0] is RuntimeError
    with pytest.raises(RuntimeError, match=f"{name} has dtype torch.float64 but query has torch.float32"):
        ours(x, x, x, need_weights=need_weights, **{name: mask})


def test_float_mask_dropped_by_the_causal_hint_is_not_read_as_in_torch():
    theirs, ours = _pair()
    x = torch.randn(3, 2, E)
    mask = torch.zeros(3, 3, dtype=torch.float64)
    want, _ = theirs(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
    got, _ = ours(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("args", [(8.0, 2), ("8", 2), (8, None)])
def test_sizes_that_are_not_ints_raise_type_error_as_in_torch(args):
    with pytest.raises(TypeError):
        torch.nn.MultiheadAttention(*args)
    with pytest.raises(TypeError, match="must be an int, got"):  # was ValueError "must be a positive int"
        MultiheadAttention(*args)


def test_sizes_below_one_still_raise_value_error_as_in_torch():
    for args in ((0, 1), (8, 0), (8, -2)):
        with pytest.raises(ValueError):
            torch.nn.MultiheadAttention(*args)
        with pytest.raises(ValueError, match="must be a positive int"):
            MultiheadAttention(*args)


def _masks(n, length):
    kpm = torch.zeros(n, length, dtype=torch.bool)
    kpm[1, -2:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(length)
    return [{}, {"src_key_padding_mask": kpm}, {"src_mask": causal}, {"src_mask": causal, "is_causal": True},
            {"src_mask": causal == float("-inf"), "src_key_padding_mask": kpm}]


@pytest.mark.parametrize("case", range(5))
def test_drop_in_inside_torchs_transformer_encoder_layer_in_inference(case):
    """torch's TransformerEncoderLayer (batch_first, eval, no grad) takes its fast path,
    which calls self_attn.merge_masks: the drop-in raised AttributeError there."""
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    ours = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    ours.load_state_dict(theirs.state_dict())
    attn = MultiheadAttention(16, 4, batch_first=True)
    attn.load_state_dict(theirs.self_attn.state_dict())
    ours.self_attn = attn
    x = torch.randn(2, 5, 16)
    kw = _masks(2, 5)[case]
    with torch.no_grad():
        torch.testing.assert_close(ours(x, **kw), theirs(x, **kw), atol=1e-5, rtol=1e-4)


def test_merge_masks_matches_torchs():
    theirs, ours = _pair(batch_first=True)
    q = torch.randn(2, 5, E)
    kpm = torch.rand(2, 5) < 0.3
    for attn_mask in (None, torch.rand(5, 5) < 0.3, torch.rand(2 * H, 5, 5) < 0.3, torch.randn(5, 5)):
        for key_padding_mask in (None, kpm):
            if attn_mask is not None and attn_mask.is_floating_point() and key_padding_mask is not None:
                key_padding_mask = torch.zeros(2, 5).masked_fill(kpm, float("-inf"))
            want = theirs.merge_masks(attn_mask, key_padding_mask, q)
            got = ours.merge_masks(attn_mask, key_padding_mask, q)
            assert got[1] == want[1]
            if want[0] is None:
                assert got[0] is None
            else:
                assert got[0].shape == want[0].shape and torch.equal(got[0], want[0])


@pytest.mark.parametrize("weights,inputs", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16),
                                            (torch.float16, torch.bfloat16)])
def test_any_input_autocast_casts_runs_as_in_torch(weights, inputs):
    """was: refused unless the input had the autocast dtype itself (float32 input to a
    bf16 module, or float16 input, under autocast: torch runs both)."""
    theirs, ours = _pair(batch_first=True)
    theirs.to(weights)
    ours.to(weights)
    x = torch.randn(2, 3, E).to(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = theirs(x, x, x)
        got, _ = ours(x, x, x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=3e-2)


def test_float64_input_under_autocast_is_refused_as_in_torch():
    theirs, ours = _pair(batch_first=True)
    x = torch.randn(2, 3, E, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _torch_error(theirs, x, x, x)[0] is RuntimeError
        with pytest.raises(RuntimeError, match="query has dtype torch.float64"):
            ours(x, x, x)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_training_with_dropout_returns_the_dropped_weights_the_output_used_as_torch(average, batch_first):
    """was: the weights before dropout (every row summing to 1), where torch returns the
    weights after dropout, the ones its output was computed with; with the same seed
    both now draw the same dropout mask."""
    theirs, ours = _pair(dropout=0.5, batch_first=batch_first)
    theirs.train()
    ours.train()
    x = torch.randn(3, 4, E, requires_grad=True)
    torch.manual_seed(5)
    want, want_w = theirs(x, x, x, average_attn_weights=average)
    torch.manual_seed(5)
    got, got_w = ours(x, x, x, average_attn_weights=average)
    torch.testing.assert_close(got_w, want_w)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])
