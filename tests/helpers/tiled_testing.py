"""Shared by the tiled-kernel tests (tests/kernels/test_tiled*.py): inputs laid out as
the layer makes them, and the kernels' output, log-sum-exp and gradients next to the
float64 reference's."""

from __future__ import annotations

import torch
from reference_math import attention_reference

from headwise.kernels import tiled_attention_lse

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


def make_qkv(b, h, hkv, tq, tk, d, dv=None, dtype=torch.float32, seed=0, device=DEV):
    """q, k, v as the layer makes them: (B, H, T, D) views of (B, T, H, D) buffers."""
    g = torch.Generator().manual_seed(seed)
    dv = d if dv is None else dv

    def rnd(t, n, width):
        x = torch.randn(b, t, n, width, generator=g).to(device=device, dtype=dtype)
        return x.transpose(1, 2).requires_grad_()

    return rnd(tq, h, d), rnd(tk, hkv, d), rnd(tk, hkv, dv)


def run_both(q, k, v, *, causal, key_lengths, seed=1):
    """Output, lse and gradients of the kernels and of the float64 reference."""
    out, lse = tiled_attention_lse(q, k, v, causal=causal, key_lengths=key_lengths)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_out, ref_lse = attention_reference(q64, k64, v64, causal=causal, key_lengths=key_lengths)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    return (out, lse, grads), (ref_out, ref_lse, ref_grads)


def rms(x, ref):
    """The root-mean-square difference of ``x`` from the float64 ``ref``."""
    return (x.double() - ref).pow(2).mean().sqrt().item()
