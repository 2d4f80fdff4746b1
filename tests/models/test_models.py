"""Encoder and Decoder: shapes, errors, initialisation, padding, KV-cache decoding."""

import math

import pytest
import torch

from headwise.attention import MultiHeadAttention
from headwise.models import (
    Decoder,
    Encoder,
    EncoderForMLM,
    EncoderForRTD,
    ModelConfig,
    build_electra,
)


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=24)
    return ModelConfig(**{**base, **kw})


def ids(b=2, t=10, v=97, seed=0):
    return torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_hook_names():
    cfg = tiny(type_vocab_size=2, norm="post")
    enc = EncoderForMLM(cfg)
    x = ids()
    assert enc.encoder(x).shape == (2, 10, 32)
    assert enc(x, token_type_ids=torch.ones_like(x)).shape == (2, 10, 97)
    assert EncoderForRTD(cfg)(x).shape == (2, 10)
    dec = Decoder(tiny())
    assert dec(x).shape == (2, 10, 97)
    for model in (enc.encoder, dec):
        assert all(isinstance(b.attn, MultiHeadAttention) for b in model.blocks)


def test_input_errors():
    enc, dec = Encoder(tiny()), Decoder(tiny())
    with pytest.raises(TypeError, match="torch.float32"):
        enc(ids().float())
    with pytest.raises(TypeError, match="input_ids"):
        dec(ids().tolist())
    with pytest.raises(ValueError, match="2-D"):
        dec(ids()[0])
    with pytest.raises(ValueError, match=r"30 exceeds max_len=24"):
        enc(ids(t=30))
    with pytest.raises(ValueError, match=r"30 exceeds max_len=24"):
        dec(ids(t=30))
    Decoder(tiny(positions="rope"))(ids(t=30))  # RoPE has no table to run out of
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        enc(ids(), token_type_ids=torch.zeros_like(ids()))
    with pytest.raises(ValueError, match="embedding_size"):
        Decoder(tiny(embedding_size=16))


def test_initialisation():
    cfg = tiny(d_model=256, n_heads=4, d_ff=1024, n_layers=8, vocab_size=512)
    dec = Decoder(cfg)
    blk = dec.blocks[0]
    residual = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert blk.attn.qkv_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert blk.attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert blk.mlp.fc_out.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert blk.mlp.fc_in.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert dec.embeddings.tok.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert blk.attn.qkv_bias.abs().max() == 0 and blk.mlp.fc_in.bias.abs().max() == 0
    assert torch.all(blk.ln_1.weight == 1) and torch.all(dec.ln_f.bias == 0)


def test_tied_embeddings():
    dec = Decoder(tiny())
    assert dec.lm_head.weight is dec.embeddings.tok.weight
    assert Decoder(tiny(tied_embeddings=False)).lm_head.weight is not None
    mlm = EncoderForMLM(tiny())
    assert mlm.head.decoder.weight is mlm.encoder.embeddings.tok.weight
    gen, disc = build_electra(tiny(embedding_size=16))
    assert gen.encoder.embeddings is disc.encoder.embeddings
    assert gen.head.decoder.weight is disc.encoder.embeddings.tok.weight
    assert gen.encoder.embed_proj.in_features == 16 and gen.cfg.d_model == 8


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_encoder_padding_does_not_change_real_tokens(norm):
    enc = Encoder(tiny(norm=norm)).eval()
    x = ids(t=8)
    padded = torch.cat([x, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    pad = torch.zeros(2, 13, dtype=torch.bool)
    pad[:, 8:] = True
    h = enc(x)
    hp = enc(padded, key_padding_mask=pad)
    torch.testing.assert_close(hp[:, :8], h, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(padded)[:, :8], h, atol=1e-3)  # without the mask it leaks


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_cached_token_by_token_equals_full_forward(positions, n_kv_heads):
    dec = Decoder(tiny(positions=positions, n_kv_heads=n_kv_heads)).eval()
    x = ids(t=12)
    with torch.no_grad():
        full = dec(x)
        caches = dec.new_kv_caches()
        # A 5-token prompt, then one token at a time.
        steps = [dec(x[:, :5], caches)] + [dec(x[:, t : t + 1], caches) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(caches[0]) == 12


def test_decoder_is_causal():
    dec = Decoder(tiny()).eval()
    x = ids(t=10)
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 97
    torch.testing.assert_close(dec(x)[:, :6], dec(y)[:, :6])
    assert not torch.allclose(dec(x)[:, 6:], dec(y)[:, 6:])


def naive_greedy(dec: Decoder, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence every step (no cache)."""
    out = prompt
    for _ in range(n):
        nxt = dec(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_generate_greedy_with_cache_equals_recompute(positions):
    dec = Decoder(tiny(positions=positions)).eval()
    prompt = ids(t=4)
    with torch.no_grad():
        want = naive_greedy(dec, prompt, 12)
    got = dec.generate(prompt, 12, temperature=0.0)
    assert torch.equal(got, want)
    assert torch.equal(dec.generate(prompt, 12, top_k=1), want)


def test_generate_sampling_eos_and_limits():
    dec = Decoder(tiny())
    dec.train()
    a = dec.generate(ids(t=3), 10, top_k=5, generator=torch.Generator().manual_seed(1))
    b = dec.generate(ids(t=3), 10, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 13) and torch.equal(a, b)
    assert dec.training  # the training flag is restored
    eos = int(a[0, 3])  # the first sampled token of row 0 becomes "eos"
    c = dec.generate(ids(t=3), 10, top_k=5, eos_id=eos, generator=torch.Generator().manual_seed(1))
    assert torch.all(c[0, 3:] == eos)
    assert torch.equal(dec.generate(ids(t=3), 0), ids(t=3))
    with pytest.raises(ValueError, match="max_len=24"):
        dec.generate(ids(t=20), 5)
    with pytest.raises(ValueError, match="temperature"):
        dec.generate(ids(t=3), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="kv_caches"):
        dec(ids(), dec.new_kv_caches()[:1])


@pytest.mark.parametrize("kw, needle", [
    # nan reached torch.multinomial ("probability tensor contains either inf, nan ..."), naming nothing
    (dict(temperature=float("nan")), "temperature must be a finite float >= 0"),
    # inf sampled uniformly, which read as the model's own distribution
    (dict(temperature=float("inf")), "temperature must be a finite float >= 0"),
    (dict(temperature=True), "temperature must be"),
    # top_k >= vocab_size left every token in the draw: the setting did nothing
    (dict(top_k=97), "top_k must be None or a positive int below vocab_size=97"),
    (dict(top_k=500), "top_k must be None or a positive int below vocab_size=97"),
    (dict(top_k=2.0), "top_k must be"),
    (dict(eos_id=97), r"eos_id must be None or a token id in \[0, 97\)"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an int >= 0"),
])
def test_generate_refuses_a_setting_it_cannot_use_naming_it(kw, needle):
    dec = Decoder(tiny())
    kw = {"max_new_tokens": 2, **kw}
    with pytest.raises(ValueError, match=needle):
        dec.generate(ids(t=3), **kw)
    assert dec.generate(ids(t=3), 2, top_k=96, generator=torch.Generator().manual_seed(0)).shape == (2, 5)
