"""Number formats (headwise.formats): int8 numerics against float references, which
modules are replaced, bf16 and its capability warning, impossible formats, saving and
loading, compare_formats and ``headwise eval --format``."""

from __future__ import annotations

import json
import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import headwise
from headwise.attention import MultiHeadAttention
from headwise.formats import (
    Int8Linear,
    Int8MultiHeadAttention,
    bf16_math_support,
    compare_formats,
    load_quantized,
    model_format,
    quantize,
    quantize_per_channel,
    save_quantized,
)
from headwise.formats import convert as convert_mod
from headwise.hardware import precision as precision_mod
from headwise.models import Decoder, EncoderForMLM, EncoderForRTD, ModelConfig

# int8 weights (per channel) and activations (per tensor or per token) keep ~7 bits:
# a random Linear's output is off by ~1e-2 relative, never more than this
INT8_LINEAR_REL_TOL = 3e-2


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=200, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_len=64)
    base.update(kw)
    return ModelConfig(**base)


def rel(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


# ------------------------------------------------------------------ int8 numerics
def test_per_channel_scales_are_row_max_over_127():
    w = torch.randn(6, 10)
    w[2] = 0.0
    w[4] *= 100  # one large row must not coarsen the others
    q, s = quantize_per_channel(w)
    assert q.dtype == torch.int8 and s.shape == (6,)
    nonzero = [0, 1, 3, 4, 5]
    torch.testing.assert_close(s[nonzero], w.abs().amax(1)[nonzero] / 127)
    assert s[2] == 1.0 and torch.all(q[2] == 0)
    assert q.abs().max() == 127
    # round to nearest: every weight within half a step of its row
    assert torch.all((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-7)


@pytest.mark.parametrize("kernel", ["qcpu", "int_mm", "emulate"])
@pytest.mark.parametrize("shape", [(4, 37, 96), (3, 96), (2, 5, 96)])  # 5 rows: int_mm pads to 17
def test_int8_linear_error_bound(kernel, shape):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 44)  # 44: not a multiple of 8 (int_mm pads N)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(44, 96, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(44, generator=g))
    x = torch.randn(*shape, generator=g)
    q = Int8Linear.from_float(lin.weight, lin.bias, kernel=kernel)
    y = q(x)
    assert y.shape == (*shape[:-1], 44) and y.dtype == torch.float32
    assert rel(y, lin(x)) < INT8_LINEAR_REL_TOL
    # the weights alone (dequantised) are far closer than that
    assert rel(q.weight, lin.weight) < 1e-2  # Gaussian rows: step/sqrt(12) ~ 0.8% of their norm


def test_int_mm_path_matches_its_emulation_exactly():
    # the CUDA path (torch._int_mm, also on CPU) and the float emulation compute the same
    # integers; only the float epilogue's rounding differs
    w, b, x = torch.randn(40, 64), torch.randn(40), torch.randn(30, 64)
    a = Int8Linear.from_float(w, b, kernel="int_mm")(x)
    e = Int8Linear.from_float(w, b, kernel="emulate")(x)
    torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_packed_cpu_weights_follow_load_state_dict():
    a = Int8Linear.from_float(torch.randn(16, 32), torch.randn(16))
    b = Int8Linear.from_float(torch.randn(16, 32), torch.randn(16))
    x = torch.randn(5, 32)
    b(x)  # packs b's weights
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
    assert set(a.state_dict()) == {"weight_int8", "weight_scale", "bias", "input_smooth"}


# ------------------------------------------------------------------ which modules
@pytest.mark.parametrize("build", [
    lambda: EncoderForMLM(small_cfg(embedding_size=32, type_vocab_size=2, norm="post")),
    lambda: Decoder(small_cfg(n_kv_heads=2, positions="rope")),
    lambda: EncoderForRTD(small_cfg()),
])
def test_every_linear_replaced_embeddings_and_norms_kept(build):
    torch.manual_seed(0)
    model = build().eval()
    q = quantize(model, "int8")
    assert q is not model and model_format(model) == "fp32" and model_format(q) == "int8"
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert not any(isinstance(m, MultiHeadAttention) and not isinstance(m, Int8MultiHeadAttention)
                   for m in q.modules())
    for name, m in q.named_modules():
        if isinstance(m, (nn.Embedding, nn.LayerNorm)):
            assert m.weight.dtype == torch.float32
            torch.testing.assert_close(m.weight, model.get_submodule(name).weight, rtol=0, atol=0)
    # what is left as parameters: embeddings and norms only
    assert all(("embeddings" in n or "ln" in n or ".norm" in n) for n, _ in q.named_parameters()), \
        [n for n, _ in q.named_parameters()]
    # the original is untouched; inplace converts the model itself
    assert any(type(m) is nn.Linear for m in model.modules())
    assert quantize(model, "int8", inplace=True) is model


def test_quantised_heads_are_dequantised_copies():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, n_kv_heads=2)
    want = layer.heads[1]
    layer = Int8MultiHeadAttention.convert(layer)
    got = layer.heads[1]
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        assert rel(getattr(got, name), getattr(want, name)) < 1e-2, name
    x = torch.randn(2, 7, 32)
    assert layer(x).shape == (2, 7, 32)


def test_cross_attention_layer_is_quantised_too():
    torch.manual_seed(0)
    layer = MultiHeadAttention(32, 4, kdim=24, vdim=24).eval()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 24)
    want = layer(x, ctx)
    layer = Int8MultiHeadAttention.convert(layer)
    assert rel(layer(x, ctx), want) < INT8_LINEAR_REL_TOL * 2


@pytest.mark.parametrize("cls", [EncoderForMLM, Decoder])
def test_tiny_model_layer_cosines_under_int8(cls):
    torch.manual_seed(0)
    cfg = small_cfg(d_model=128, n_layers=4, d_ff=512, vocab_size=500)  # the tiny preset's shape
    model = cls(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (4, 48), generator=torch.Generator().manual_seed(1))
    report = compare_formats(model, quantize(model, "int8"), [ids[:2], ids[2:]])
    assert len(report["layers"]) == cfg.n_layers
    assert report["min_layer_cosine"] >= 0.99
    assert report["output"]["cosine"] >= 0.99


# ------------------------------------------------------------------ bf16
def test_bf16_warns_when_the_device_lacks_bf16_math():
    model = Decoder(small_cfg())
    with mock.patch.object(convert_mod, "bf16_math_support", return_value=(False, "no AVX512_BF16 here")):
        with pytest.warns(UserWarning, match="slow: no AVX512_BF16 here"):
            q = quantize(model, "bf16")
    assert model_format(q) == "bf16"  # converted anyway
    with mock.patch.object(convert_mod, "bf16_math_support", return_value=(True, "AMX")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            quantize(model, "bf16")


@pytest.mark.parametrize("flags, ok, words", [
    ({}, False, "lacks AVX512_BF16 and AMX-BF16"),
    ({"avx512_bf16": True}, True, "AVX512_BF16"),
    ({"amx_bf16": True, "avx512_bf16": True}, True, "AMX_BF16"),
])
def test_bf16_capability_check_reads_the_cpu_flags(flags, ok, words):
    with mock.patch.object(precision_mod, "cpu_capabilities", return_value=flags), \
            mock.patch.object(precision_mod.platform, "machine", return_value="x86_64"):
        got, why = bf16_math_support("cpu")
    assert got is ok and words in why


def test_bf16_model_computes_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    model = EncoderForMLM(small_cfg()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        q = quantize(model, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in q.parameters())
    ids = torch.randint(0, 200, (2, 16))
    logits = q(ids)
    assert logits.dtype == torch.float32
    # MaskedLM runs model.encoder then model.head: both take and return float32
    hidden = q.encoder(ids)
    assert hidden.dtype == torch.float32 and q.head(hidden).dtype == torch.float32
    assert rel(logits, model(ids)) < 3e-2


# ------------------------------------------------------------------ errors
def test_impossible_formats_raise():
    model = Decoder(small_cfg())
    with pytest.raises(ValueError, match=r"format must be one of \('fp32', 'bf16', 'int8'\), got 'int4'"):
        quantize(model, "int4")
    with mock.patch.object(convert_mod, "int8_kernel_for", return_value=None):
        with pytest.raises(ValueError, match=r"format 'int8' has no int8 GEMM on device cpu.*accepted"):
            quantize(model, "int8")
    q = quantize(model, "int8")
    with pytest.raises(ValueError, match="already in format 'int8'"):
        quantize(q, "bf16")
    with pytest.raises(ValueError, match="attention must be None or 'int8'"):
        quantize(model, "int8", attention="int4")


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("fmt", ["int8", "bf16"])
def test_save_load_round_trip_gives_identical_outputs(fmt, tmp_path):
    torch.manual_seed(0)
    model = EncoderForMLM(small_cfg(embedding_size=32)).eval()  # tied decoder + embed_proj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        q = quantize(model, fmt)
    ids = torch.randint(0, 200, (3, 20))
    path = save_quantized(q, tmp_path / f"m-{fmt}.safetensors")
    back = load_quantized(path)
    assert model_format(back) == fmt and type(back) is EncoderForMLM
    with torch.no_grad():
        torch.testing.assert_close(back(ids), q(ids), rtol=0, atol=0)


def test_save_refuses_a_model_it_cannot_rebuild(tmp_path):
    with pytest.raises(TypeError, match="headwise model"):
        save_quantized(nn.Sequential(nn.Linear(4, 4)), tmp_path / "x.safetensors")


# ------------------------------------------------------------------ compare_formats
def test_compare_formats_report():
    torch.manual_seed(0)
    model = Decoder(small_cfg()).eval()
    ids = torch.randint(0, 200, (2, 16))
    same = compare_formats(model, quantize(model, "fp32"), [ids], task=lambda m: {"loss": 2.0})
    assert set(same) >= {"layers", "output", "min_layer_cosine", "max_layer_rel_l1", "n_batches", "n_tokens",
                         "task"}
    assert list(same["layers"]) == ["blocks.0", "blocks.1"]
    assert set(same["layers"]["blocks.0"]) == {"cosine", "cosine_min", "rel_l1"}
    assert same["min_layer_cosine"] == pytest.approx(1.0) and same["max_layer_rel_l1"] == 0.0
    assert same["n_batches"] == 1 and same["n_tokens"] == 32
    assert same["task"]["delta"] == {"loss": 0.0}
    with pytest.raises(ValueError, match="not a module"):
        compare_formats(model, model, [ids], layers=["blocks.7"])


def test_headwise_quantize_is_exported():
    assert headwise.quantize is quantize


def test_cli_eval_format(tmp_path, monkeypatch, capsys):
    from headwise.cli import main

    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    words = "the a cat dog sat ran on under mat tree quickly slowly big small red green".split()
    g = torch.Generator().manual_seed(0)
    text = "\n".join(" ".join(words[int(i)] for i in torch.randint(0, len(words), (60,), generator=g))
                     for _ in range(200))
    (tmp_path / "c.txt").write_text(text)
    run = tmp_path / "mlm"
    assert main(["train", "--objective", "mlm", "--corpus", str(tmp_path / "c.txt"), "--out", str(run),
                 "--steps", "4", "--batch-size", "8", "--block-len", "32", "--vocab-size", "200",
                 "--eval-every", "4", "--eval-batches", "1", "--model", "n_layers=2,d_model=32,n_heads=2,d_ff=64",
                 "--quiet", "--no-sanity-checks"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--batches", "2", "--format", "int8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "int8" and report["compared_model"] == "model"
    assert report["min_layer_cosine"] > 0.99
    assert {"accuracy", "perplexity", "loss"} <= set(report["task"]["quantized"])


def test_int8_linear_on_float16_input_returns_float16():
    q = Int8Linear.from_float(torch.randn(8, 16), None, kernel="emulate")
    assert q(torch.randn(2, 16).half()).dtype == torch.float16


# ------------------------------------------------------------------ SmoothQuant calibration
def _outlier_inputs(n: int = 256, k: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, 3] *= 30.0  # one outlier channel, as BERT-like models have
    return x


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(48, 64, generator=g) * 0.05, torch.randn(48, generator=g)
    x = _outlier_inputs()
    ref = F.linear(x, w, b)
    plain = Int8Linear.from_float(w, b)  # per-tensor activations (CPU op)
    smooth = Int8Linear.from_float(w, b, input_absmax=_outlier_inputs(seed=2).abs().amax(0))
    assert smooth.smoothed and not plain.smoothed
    assert rel(smooth(x), ref) < rel(plain(x), ref) / 2
    # the dequantised weight undoes the smoothing (coarser: the outlier column now sets
    # each row's scale, which is the price SmoothQuant pays on the weight side)
    assert rel(smooth.weight, w) < 5e-2


def test_calibrate_records_every_projection_input():
    from headwise.formats.convert import calibrate

    torch.manual_seed(0)
    model = EncoderForMLM(small_cfg(embedding_size=32)).eval()
    stats = calibrate(model, [torch.randint(0, 200, (2, 16))])
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    qkv = {f"{n}.qkv_proj" for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    assert set(stats) == linears | qkv
    assert stats["encoder.blocks.0.mlp.fc_in"].shape == (64,)
    with pytest.raises(ValueError, match="calibration is empty"):
        calibrate(model, [])


def test_calibrated_model_is_closer_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Decoder(small_cfg(d_model=64)).eval()
    with torch.no_grad():  # give the residual stream an outlier channel
        model.embeddings.tok.weight[:, 5] += 3.0
    ids = torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(3))
    cal = [torch.randint(0, 200, (4, 32), generator=torch.Generator().manual_seed(4))]
    q = quantize(model, "int8", calibration=cal)
    smoothed = {n.rsplit(".", 1)[-1] for n, m in q.named_modules() if isinstance(m, Int8Linear) and m.smoothed}
    assert smoothed == {"qkv_proj", "fc_in"}
    plain = compare_formats(model, quantize(model, "int8"), [ids])
    smooth = compare_formats(model, q, [ids])
    assert smooth["max_layer_rel_l1"] < plain["max_layer_rel_l1"]
    back = load_quantized(save_quantized(q, tmp_path / "sq.safetensors"))
    assert sum(m.smoothed for m in back.modules() if isinstance(m, Int8Linear)) == 2 * 2  # 2 blocks
    with torch.no_grad():
        torch.testing.assert_close(back(ids), q(ids), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"calibration has no effect with format 'bf16' \(used by format 'int8'"):
        quantize(model, "bf16", calibration=cal)
