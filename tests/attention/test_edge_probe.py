"""Edge cases a probe of the attention layer, its CPU backends and kernels, the
torch drop-in and the int8 formats found wrong: each test failed before its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headwise.attention import MultiHeadAttention, RotaryEmbedding, attend, normalize_mask
from headwise.formats import Int8Linear, compare_formats
from headwise.kernels import cpu_linear
from headwise.nn import MultiheadAttention


@pytest.fixture
def onednn_linear(monkeypatch):
    """float32 CPU linears through oneDNN for this test (the process choice put back after)."""
    if not cpu_linear.onednn_available():
        pytest.skip("this torch has no oneDNN linear")
    for name in ("_setting", "_decided", "_why"):
        monkeypatch.setattr(cpu_linear, name, getattr(cpu_linear, name))
    cpu_linear.set_cpu_linear("onednn")


@pytest.mark.parametrize("bias", [torch.arange(16.0)[::2], torch.tensor(0.5).expand(8)], ids=["strided", "expanded"])
def test_onednn_linear_with_a_non_contiguous_bias_adds_the_bias(onednn_linear, bias):
    """was: oneDNN's op read a strided or expanded bias as if contiguous, so linear()
    added the wrong numbers (off by up to ~2.5 here) without a word."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 16, generator=g), torch.randn(8, 16, generator=g)
    assert cpu_linear.onednn_applies(x, w, bias)
    want = F.linear(x.double(), w.double(), bias.double())
    torch.testing.assert_close(cpu_linear.linear(x, w, bias).double(), want, atol=1e-5, rtol=1e-5)


def _qkv_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=g) for shape in ((2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6)))
    return q, k, v, normalize_mask(batch=2, n_heads=4, q_len=3, k_len=5, device=q.device)


@pytest.mark.parametrize("backend", ["reference", "math", "sdpa", "auto"])
@pytest.mark.parametrize("change,error,needle", [
    (lambda q, k, v: (q, k.double(), v.double()), TypeError, "one dtype"),
    (lambda q, k, v: (q.bfloat16(), k, v), TypeError, "one dtype"),
    (lambda q, k, v: (q.long(), k.long(), v.long()), TypeError, "floating-point"),
    (lambda q, k, v: (q, k.to("meta"), v.to("meta")), ValueError, "one device"),
], ids=["k_v_float64", "q_bfloat16", "integer", "meta_keys"])
def test_attend_names_q_k_v_of_mixed_dtypes_or_devices(backend, change, error, needle):
    """was: 'expected scalar type Float but found Double' from inside a backend's matmul
    (or, for keys on the meta device, a result from the reference and math backends)."""
    q, k, v, mask = _qkv_mask()
    with pytest.raises(error, match=needle):
        attend(*change(q, k, v), mask, backend=backend)


@pytest.mark.parametrize("backend", ["reference", "math", "sdpa"])
@pytest.mark.parametrize("kw,needle", [(dict(dropout_p=-0.5), "dropout_p must be"),
                                       (dict(dropout_p=1.5), "dropout_p must be"),
                                       (dict(scale="x"), "scale must be")])
def test_attend_refuses_a_dropout_outside_0_1_and_a_scale_that_is_no_number(backend, kw, needle):
    """was: dropout_p=-0.5 ran as no dropout without a word; 1.5 and scale='x' failed
    inside torch's dropout, matmul or sdpa."""
    q, k, v, mask = _qkv_mask()
    with pytest.raises(ValueError, match=needle):
        attend(q, k, v, mask, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["reference", "math", "sdpa"])
def test_attend_refuses_a_mask_built_for_another_number_of_heads(backend):
    """was: IndexError (reference) or 'The size of tensor a (4) must match the size of
    tensor b (3)' (math, sdpa) from inside the backend."""
    q, k, v, _ = _qkv_mask()
    mask = normalize_mask(batch=2, n_heads=3, q_len=3, k_len=5, device=q.device,
                          attn_mask=torch.zeros(1, 3, 3, 5))
    with pytest.raises(ValueError, match=r"normalize_mask\(n_heads=...\) must be given q's number of heads, 4"):
        attend(q, k, v, mask, backend=backend)


@pytest.mark.parametrize("kernel", ["qcpu", "int_mm", "emulate"])
@pytest.mark.parametrize("smoothed", [False, True])
def test_int8_linear_passes_the_input_gradient_of_its_dequantised_weight(kernel, smoothed):
    """was: the gradient of x came only through the activation scale's max (emulate,
    int_mm: one nonzero entry per row) or not at all (qcpu: x.grad None), so gradients
    through a quantised model (head importance, saliency) were wrong without a word."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(12, 16, generator=g), torch.randn(12, generator=g)
    absmax = torch.rand(16, generator=g) * 4 if smoothed else None
    m = Int8Linear.from_float(w, b, kernel=kernel, input_absmax=absmax)
    x = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    dy = torch.randn(2, 5, 12, generator=g)
    y = m(x)
    with torch.no_grad():
        torch.testing.assert_close(y, m(x))  # the same int8 result with and without grad
    (gx,) = torch.autograd.grad((y * dy).sum(), x)
    torch.testing.assert_close(gx.double(), dy.double() @ m.weight.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, dy @ w, atol=0.1, rtol=0.05)  # and near the float layer's


@pytest.mark.parametrize("head_dim", [0, -2, 8.0, "8"])
def test_rotary_embedding_refuses_a_head_dim_that_is_no_positive_int(head_dim):
    """was: 0, -2 and 8.0 accepted, '8' a TypeError from the string formatting of the
    evenness check."""
    with pytest.raises(ValueError, match="head_dim must be a positive int"):
        RotaryEmbedding(head_dim)


@pytest.mark.parametrize("x,error,needle", [
    (torch.randn(1, 2, 3, 6), ValueError, r"shape \(\.\.\., T, head_dim=8\)"),
    (torch.randn(8), ValueError, r"shape \(\.\.\., T, head_dim=8\)"),
    (torch.ones(1, 2, 3, 8, dtype=torch.long), TypeError, "floating-point"),
], ids=["other_width", "one_dim", "integer"])
def test_rotary_embedding_names_an_input_it_cannot_rotate(x, error, needle):
    """was: 'The size of tensor a (6) must match the size of tensor b (8)', an IndexError,
    or integer 'rotations' by cos and sin rounded to integers."""
    with pytest.raises(error, match=needle):
        RotaryEmbedding(8)(x)


def test_compare_formats_counts_a_batch_that_keeps_no_token_as_none():
    """was: RuntimeError 'min(): Expected reduction dim to be specified for
    input.numel() == 0' from a batch whose tokens() mask is all False (one all padding)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    batches = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    masks = iter([torch.zeros(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)])
    report = compare_formats(model, model, batches, layers=[], tokens=lambda _: next(masks))
    assert report["n_tokens"] == 6
    assert report["output"] == {"cosine": pytest.approx(1.0), "cosine_min": pytest.approx(1.0), "rel_l1": 0.0}


def test_compare_formats_reads_equal_zero_outputs_as_agreeing():
    """was: cosine 0 (and cosine_min 0, as if orthogonal) for tokens whose output is the
    zero vector in both models, though rel_l1 said they agree exactly."""
    model = torch.nn.Linear(4, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    report = compare_formats(model, model, [torch.randn(2, 3, 4)], layers=[])
    assert report["output"] == {"cosine": 1.0, "cosine_min": 1.0, "rel_l1": 0.0}


@pytest.mark.parametrize("kw,error,needle", [
    (dict(kdim=4.0), TypeError, "kdim must be None or an int"),
    (dict(vdim="3"), TypeError, "vdim must be None or an int"),
    (dict(kdim=-1), RuntimeError, "kdim must be None or an int >= 0"),
    (dict(dropout="0.1"), TypeError, "dropout must be a float in"),
    (dict(dtype=torch.int64), RuntimeError, "dtype must be None or a floating-point dtype"),
])
def test_drop_in_constructor_names_a_bad_kdim_vdim_dropout_or_dtype(kw, error, needle):
    """was: torch.empty's 'argument size failed to unpack ...', 'Trying to create tensor
    with negative dimension -1', Python's \"'<=' not supported between 'float' and 'str'\",
    or 'Only Tensors of floating point ... can require gradients', none naming the
    argument (the exception types stay those torch raises, where it raises)."""
    with pytest.raises(error, match=needle):
        MultiheadAttention(8, 2, **kw)


def test_layer_refuses_weights_of_an_integer_dtype_naming_dtype():
    """was: 'Only Tensors of floating point and complex dtype can require gradients' from
    nn.Parameter, naming nothing."""
    with pytest.raises(TypeError, match="dtype must be None or a floating-point dtype, got torch.int64"):
        MultiHeadAttention(8, 2, dtype=torch.int64)


@pytest.mark.parametrize("args", [(-1, 4), (4, 4.0), (0, 4)])
def test_int8_linear_refuses_sizes_that_are_no_positive_int(args):
    """was: torch.zeros' 'Dimension size must be non-negative' or 'argument size failed to
    unpack', naming neither in_features nor out_features (and 0 input features accepted,
    for a layer from_float could never fill)."""
    with pytest.raises(ValueError, match=r"(in|out)_features must be a positive int"):
        Int8Linear(*args)
