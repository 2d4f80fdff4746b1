"""The chunked projection + cross-entropy equals the unfused one, in value and in
every gradient (float64), whatever the chunking; and the objectives use it."""

import pytest
import torch
import torch.nn.functional as F

from headwise.objectives import fused_loss
from headwise.objectives.fused_loss import linear_cross_entropy

N, D, V = 37, 16, 50


def problem(bias=True, ignored=(3, 17, 36), seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[list(ignored)] = -100
    return h, w, b, t


def grads(loss, tensors):
    return torch.autograd.grad(loss, [x for x in tensors if x is not None])


def reference(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction="sum")


def max_error(chunk_rows, bias=True):
    """Largest difference between fused and unfused: loss, d/dh, d/dw, d/db."""
    h, w, b, t = problem(bias)
    got, _ = linear_cross_entropy(h, w, b, t, chunk_rows=chunk_rows)
    want = reference(h, w, b, t)
    errors = [(got - want).abs().item()]
    # a non-unit incoming gradient, as from loss / n or loss / accum
    for a, e in zip(grads(0.37 * got, (h, w, b)), grads(0.37 * want, (h, w, b)), strict=True):
        errors.append((a - e).abs().max().item())
    return max(errors)


@pytest.mark.parametrize("chunk_rows", [1, 5, 8, 36, 37, 1000])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_unfused_float64(chunk_rows, bias):
    assert max_error(chunk_rows, bias) < 1e-10


def test_hits_and_no_grad_path():
    h, w, b, t = problem()
    logits = F.linear(h, w, b)
    want_hits = ((logits.argmax(1) == t) & (t != -100)).sum()
    # make some rows hit
    with torch.no_grad():
        t2 = torch.where(t == -100, t, logits.argmax(1))
        t2[::3] = t[::3]
    got, hits = linear_cross_entropy(h, w, b, t2, chunk_rows=7, return_hits=True)
    assert hits.item() == ((logits.argmax(1) == t2) & (t2 != -100)).sum().item() > 0
    assert linear_cross_entropy(h, w, b, t, chunk_rows=7, return_hits=True)[1].item() == want_hits.item()
    with torch.no_grad():
        loss, none = linear_cross_entropy(h, w, b, t2, chunk_rows=7)
    assert none is None
    torch.testing.assert_close(loss, reference(h, w, b, t2).detach())


def test_every_row_ignored_gives_zero_and_zero_grads():
    h, w, b, t = problem()
    t[:] = -100
    loss, _ = linear_cross_entropy(h, w, b, t, chunk_rows=8)
    assert loss.item() == 0.0
    for g in grads(loss, (h, w, b)):
        assert torch.count_nonzero(g) == 0


def test_a_chunking_that_skips_rows_is_caught(monkeypatch):
    """Mutation check: the comparison above must notice chunks that miss rows (here,
    the last, shorter chunk is dropped)."""
    assert max_error(8) < 1e-10
    honest = fused_loss._row_chunks

    def skips_last(n, rows):
        chunks = list(honest(n, rows))
        return iter(chunks[:-1])

    monkeypatch.setattr(fused_loss, "_row_chunks", skips_last)
    assert max_error(8) > 1e-3


def test_autocast_bf16_close_to_fp32():
    h, w, b, t = (x.float() if x is not None and x.is_floating_point() else x for x in problem())
    h, w, b = (x.detach().requires_grad_() for x in (h, w, b))
    want = reference(h, w, b, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = linear_cross_entropy(h, w, b, t, chunk_rows=8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0.0)
    gh, gw, gb = grads(got, (h, w, b))
    assert gh.dtype == gw.dtype == gb.dtype == torch.float32
    for a, e in zip((gh, gw, gb), grads(want, (h, w, b)), strict=True):
        assert (a - e).norm() / e.norm() < 3e-2


def test_objectives_match_their_unfused_losses(kit, tok):
    from headwise.models import Decoder, EncoderForMLM
    from headwise.objectives import CausalLM, MaskedLM

    torch.manual_seed(0)
    cfg = kit.tiny_config()
    clm = CausalLM.from_tokenizer(tok, Decoder(cfg)).double()
    batch = kit.make_batch(3, 20)
    out = clm(batch)
    logits = clm.model(batch[:, :-1])
    want = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    torch.testing.assert_close(out.loss, want)
    quiet = clm(batch, metrics=False)
    assert quiet.metrics == {}
    torch.testing.assert_close(quiet.loss, want)

    mlm = MaskedLM.from_tokenizer(tok, EncoderForMLM(kit.tiny_config(type_vocab_size=0))).double()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = mlm(batch, generator=g1)
    inputs, selected = mlm.masker(batch, g2)
    logits = mlm.model.head(mlm.model.encoder(inputs)[selected])
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, batch[selected]))
    assert out.metrics["accuracy"] == pytest.approx(
        (logits.argmax(-1) == batch[selected]).double().mean().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_target_whose_probability_underflows_keeps_its_exact_loss(dtype):
    """On the CPU the loss comes from the targets' softmax probabilities; a target so
    improbable that its probability underflows to 0 (logit 200 below the row's best in
    float32, 1000 in float64) still scores ``logsumexp - z_t``, not inf, with the
    unfused gradients."""
    gap = 200.0 if dtype == torch.float32 else 1000.0
    g = torch.Generator().manual_seed(3)
    h = torch.zeros(6, 2, dtype=dtype)
    h[:, 0] = 1.0
    h[:, 1] = torch.randn(6, generator=g, dtype=dtype)
    w = torch.zeros(5, 2, dtype=dtype)
    w[:, 1] = torch.randn(5, generator=g, dtype=dtype)
    w[0, 0] = gap  # class 0 leads every row by about `gap`
    h.requires_grad_()
    w.requires_grad_()
    t = torch.tensor([1, 0, 2, 4, -100, 3])  # rows 0, 2, 3, 5: probability exp(-gap)
    assert F.softmax(F.linear(h, w), 1).detach()[0, 1] == 0  # it does underflow
    got, _ = linear_cross_entropy(h, w, None, t, chunk_rows=4)
    want = reference(h, w, None, t)
    assert torch.isfinite(got) and got.item() > 3 * gap
    tol = dict(rtol=1e-6, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(got, want, **tol)
    for a, e in zip(grads(got, (h, w)), grads(want, (h, w)), strict=True):
        torch.testing.assert_close(a, e, **tol)


@pytest.mark.parametrize("kind", ["backward", "global forward"])
def test_a_hooked_head_is_called_not_bypassed(kit, tok, kind):
    """The fused path reads the head's weights without calling it; a backward hook on
    the head, or a global module hook (torch.nn.modules.module.register_module_*), was
    then silently never run. Such a head takes the unfused path, with the same loss."""
    from headwise.models import Decoder
    from headwise.objectives import CausalLM

    torch.manual_seed(0)
    clm = CausalLM.from_tokenizer(tok, Decoder(kit.tiny_config())).double()
    batch = kit.make_batch(2, 12)
    want = clm(batch, metrics=False).loss
    calls = []
    head = clm.model.lm_head
    if kind == "backward":
        handle = head.register_full_backward_hook(lambda m, gi, go: calls.append(m))
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: calls.append(m) if m is head else None)
    try:
        got = clm(batch, metrics=False).loss
        got.backward()
    finally:
        handle.remove()
    assert calls and calls[0] is head
    torch.testing.assert_close(got, want)
