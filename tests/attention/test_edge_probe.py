"""Edge cases a probe of the attention layer, its CPU backends and kernels, the
torch drop-in and the int8 formats found wrong: each test failed before its fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from headwise.kernels import cpu_linear


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
