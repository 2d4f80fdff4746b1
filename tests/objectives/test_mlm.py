"""Masked LM: corruption statistics, whole-word masking, loss positions, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from headwise.models import EncoderForMLM
from headwise.objectives import MaskedLM, TokenMasker


def masker(kit, **kw) -> TokenMasker:
    return TokenMasker(
        vocab_size=kit.V, mask_id=kit.MASK, pad_id=kit.PAD, special_ids=kit.SPECIALS, **kw
    )


def test_masking_statistics(kit):
    batch = kit.make_batch(64, 256, pad_tail=40)
    inputs, selected = masker(kit)(batch, torch.Generator().manual_seed(1))
    special = torch.isin(batch, torch.tensor(kit.SPECIALS))
    assert not selected[special].any()  # never a special or padding
    assert torch.equal(inputs[~selected], batch[~selected])  # unselected stay as they were
    frac = selected.sum() / (~special).sum()
    assert frac.item() == pytest.approx(0.15, abs=0.01)
    n = selected.sum().item()
    as_mask = (inputs[selected] == kit.MASK).sum().item() / n
    unchanged = (inputs[selected] == batch[selected]).sum().item() / n
    random = 1 - as_mask - unchanged
    assert as_mask == pytest.approx(0.8, abs=0.03)
    assert unchanged == pytest.approx(0.1, abs=0.02)  # (+1/V from random draws of itself)
    assert random == pytest.approx(0.1, abs=0.02)
    replaced = inputs[selected & (inputs != kit.MASK) & (inputs != batch)]
    assert not torch.isin(replaced, torch.tensor(kit.SPECIALS)).any()  # random ids are ordinary


def test_masking_is_reproducible_with_a_generator(kit):
    batch = kit.make_batch(4, 32)
    m = masker(kit)
    a = m(batch, torch.Generator().manual_seed(3))
    b = m(batch, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_whole_word_masking_never_splits_a_word(kit):
    batch = kit.make_batch(32, 256, pad_tail=30)
    cont = kit.continuation_table()
    _, selected = masker(kit, is_continuation=cont, whole_word=True)(
        batch, torch.Generator().manual_seed(2)
    )
    special = torch.isin(batch, torch.tensor(kit.SPECIALS))
    assert not selected[special].any()
    n_words = n_selected_words = 0
    for row, sel, spec in zip(batch.tolist(), selected.tolist(), special.tolist(), strict=True):
        t = 0
        while t < len(row):
            if spec[t]:
                t += 1
                continue
            end = t + 1
            while end < len(row) and cont[row[end]] and not spec[end]:
                end += 1
            word = sel[t:end]
            if not cont[row[t]]:  # a complete word (not a stray piece after a special)
                assert all(word) or not any(word), (row[t:end], word)
                n_words += 1
                n_selected_words += word[0]
            t = end
    assert n_words > 1000
    assert n_selected_words / n_words == pytest.approx(0.15, abs=0.02)


def test_masker_argument_errors(kit):
    with pytest.raises(ValueError, match="mask_id"):
        TokenMasker(vocab_size=kit.V, mask_id=kit.V, pad_id=kit.PAD)
    with pytest.raises(ValueError, match="mask_prob"):
        masker(kit, mask_prob=0.0)
    with pytest.raises(ValueError, match="sum to at most 1"):
        masker(kit, mask_token_prob=0.9, random_token_prob=0.2)
    with pytest.raises(ValueError, match="is_continuation"):
        masker(kit, whole_word=True)
    with pytest.raises(ValueError, match=f"\\({kit.V},\\)"):
        masker(kit, is_continuation=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.long"):
        masker(kit)(kit.make_batch(2, 8).float())


def test_loss_is_cross_entropy_on_selected_positions_only(kit, tok):
    torch.manual_seed(0)
    model = EncoderForMLM(kit.tiny_config()).eval()
    objective = MaskedLM.from_tokenizer(tok, model)
    batch = kit.make_batch(4, 48, pad_tail=10)
    out = objective(batch, torch.Generator().manual_seed(5))
    # Replay the same corruption, run the full model and score selected positions only.
    inputs, selected = objective.masker(batch, torch.Generator().manual_seed(5))
    logits = model(inputs, key_padding_mask=batch == kit.PAD)
    labels = batch.masked_fill(~selected, -100)
    want = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    # Logits at unselected positions carry no loss: perturbing them changes nothing.
    noisy = logits + 100.0 * torch.randn_like(logits) * (~selected)[..., None]
    assert F.cross_entropy(noisy.flatten(0, 1), labels.flatten()).item() == pytest.approx(
        want.item(), rel=1e-5
    )
    assert out.metrics["n_selected"] == selected.sum().item()
    assert set(out.metrics) == {"loss", "accuracy", "n_selected"}


def test_initial_loss_is_log_vocab(kit, tok):
    torch.manual_seed(0)
    objective = MaskedLM.from_tokenizer(tok, EncoderForMLM(kit.tiny_config()))
    out = objective(kit.make_batch(8, 64), torch.Generator().manual_seed(0))
    # Logits start near zero (std ~ 0.02 * sqrt(d_model) ~ 0.1), so the loss is ln V + O(0.01).
    assert out.loss.item() == pytest.approx(math.log(kit.V), abs=0.1)


def test_vocab_mismatch_is_an_error(kit, tok):
    with pytest.raises(ValueError, match="vocab_size=1000"):
        MaskedLM.from_tokenizer(tok, EncoderForMLM(kit.tiny_config(vocab_size=500)))


def test_tiny_model_overfits_one_batch(kit, tok):
    torch.manual_seed(0)
    model = EncoderForMLM(kit.tiny_config(d_model=64, d_ff=128))
    objective = MaskedLM.from_tokenizer(tok, model, mask_prob=0.3)
    batch = kit.make_batch(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(80):
        out = objective(batch, g)
        first = first if first is not None else out.metrics["loss"]
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.metrics["loss"] < 0.4 * first
