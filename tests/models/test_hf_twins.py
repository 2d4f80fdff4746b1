"""Numerical twins: copy a small randomly initialised Hugging Face BERT / ELECTRA /
GPT-2 into the headwise model of the same preset shape and compare outputs. This pins
down what parameter counts cannot: post- vs pre-norm order, GELU variant, LayerNorm
placement and epsilon, the embedding projection, and the heads."""

import pytest
import torch

from headwise.models import Decoder, EncoderForMLM, EncoderForRTD, ModelConfig

transformers = pytest.importorskip("transformers")

V, D, L, H, FF, T_MAX = 120, 32, 2, 4, 64, 40


def load(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights appear under both names in our state dict; nothing else may be absent.
    assert set(missing) <= {"head.decoder.weight", "lm_head.weight"}, missing
    assert not unexpected


def bert_layers(sd: dict, prefix: str, n_layers: int) -> dict:
    out = {}
    for i in range(n_layers):
        p, q = f"{prefix}encoder.layer.{i}.", f"encoder.blocks.{i}."
        att = p + "attention.self."
        out[q + "attn.qkv_weight"] = torch.cat([sd[att + n + ".weight"] for n in ("query", "key", "value")])
        out[q + "attn.qkv_bias"] = torch.cat([sd[att + n + ".bias"] for n in ("query", "key", "value")])
        for ours, theirs in (
            ("attn.out_proj", "attention.output.dense"),
            ("ln_1", "attention.output.LayerNorm"),
            ("mlp.fc_in", "intermediate.dense"),
            ("mlp.fc_out", "output.dense"),
            ("ln_2", "output.LayerNorm"),
        ):
            for w in ("weight", "bias"):
                out[f"{q}{ours}.{w}"] = sd[f"{p}{theirs}.{w}"]
    emb = prefix + "embeddings."
    for ours, theirs in (
        ("tok", "word_embeddings"),
        ("pos", "position_embeddings"),
        ("tok_type", "token_type_embeddings"),
    ):
        out[f"encoder.embeddings.{ours}.weight"] = sd[f"{emb}{theirs}.weight"]
    out["encoder.embeddings.ln.weight"] = sd[emb + "LayerNorm.weight"]
    out["encoder.embeddings.ln.bias"] = sd[emb + "LayerNorm.bias"]
    return out


def inputs():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, V, (2, 12), generator=g)
    types = torch.randint(0, 2, (2, 12), generator=g)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 9:] = True
    return input_ids, types, pad


def encoder_config(**kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=V, d_model=D, n_layers=L, n_heads=H, d_ff=FF, max_len=T_MAX, norm="post",
        activation="gelu", layer_norm_eps=1e-12, type_vocab_size=2, **kw,
    )


def test_bert_for_masked_lm_twin():
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=FF, max_position_embeddings=T_MAX, attn_implementation="eager",
    )
    hf = transformers.BertForMaskedLM(hf_cfg).eval()
    sd = hf.state_dict()
    state = bert_layers(sd, "bert.", L)
    cls = "cls.predictions."
    state.update({
        "head.dense.weight": sd[cls + "transform.dense.weight"],
        "head.dense.bias": sd[cls + "transform.dense.bias"],
        "head.ln.weight": sd[cls + "transform.LayerNorm.weight"],
        "head.ln.bias": sd[cls + "transform.LayerNorm.bias"],
        "head.decoder.bias": sd[cls + "bias"],
    })
    ours = EncoderForMLM(encoder_config()).eval()
    load(ours, state)
    x, types, pad = inputs()
    want = hf(input_ids=x, token_type_ids=types, attention_mask=(~pad).long()).logits
    got = ours(x, key_padding_mask=pad, token_type_ids=types)
    real = ~pad
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_electra_discriminator_twin():
    torch.manual_seed(0)
    hf_cfg = transformers.ElectraConfig(
        vocab_size=V, embedding_size=16, hidden_size=D, num_hidden_layers=L,
        num_attention_heads=H, intermediate_size=FF, max_position_embeddings=T_MAX,
        attn_implementation="eager",
    )
    hf = transformers.ElectraForPreTraining(hf_cfg).eval()
    sd = hf.state_dict()
    state = bert_layers(sd, "electra.", L)
    state.update({
        "encoder.embed_proj.weight": sd["electra.embeddings_project.weight"],
        "encoder.embed_proj.bias": sd["electra.embeddings_project.bias"],
        "head.dense.weight": sd["discriminator_predictions.dense.weight"],
        "head.dense.bias": sd["discriminator_predictions.dense.bias"],
        "head.out.weight": sd["discriminator_predictions.dense_prediction.weight"],
        "head.out.bias": sd["discriminator_predictions.dense_prediction.bias"],
    })
    ours = EncoderForRTD(encoder_config(embedding_size=16)).eval()
    load(ours, state)
    x, types, pad = inputs()
    want = hf(input_ids=x, token_type_ids=types, attention_mask=(~pad).long()).logits
    got = ours(x, key_padding_mask=pad, token_type_ids=types)
    torch.testing.assert_close(got[~pad], want[~pad], atol=1e-4, rtol=1e-4)


def test_gpt2_twin():
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=T_MAX,
        attn_implementation="eager",
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    sd = hf.state_dict()
    state = {
        "embeddings.tok.weight": sd["transformer.wte.weight"],
        "embeddings.pos.weight": sd["transformer.wpe.weight"],
        "ln_f.weight": sd["transformer.ln_f.weight"],
        "ln_f.bias": sd["transformer.ln_f.bias"],
    }
    for i in range(L):
        p, q = f"transformer.h.{i}.", f"blocks.{i}."
        # GPT-2's Conv1D stores (in, out): transpose to Linear's (out, in).
        state[q + "attn.qkv_weight"] = sd[p + "attn.c_attn.weight"].T
        state[q + "attn.qkv_bias"] = sd[p + "attn.c_attn.bias"]
        for ours, theirs in (
            ("attn.out_proj", "attn.c_proj"), ("mlp.fc_in", "mlp.c_fc"), ("mlp.fc_out", "mlp.c_proj")
        ):
            state[f"{q}{ours}.weight"] = sd[f"{p}{theirs}.weight"].T
            state[f"{q}{ours}.bias"] = sd[f"{p}{theirs}.bias"]
        for ln in ("ln_1", "ln_2"):
            state[f"{q}{ln}.weight"] = sd[f"{p}{ln}.weight"]
            state[f"{q}{ln}.bias"] = sd[f"{p}{ln}.bias"]
    ours = Decoder(
        ModelConfig(
            vocab_size=V, d_model=D, n_layers=L, n_heads=H, d_ff=4 * D, max_len=T_MAX,
            norm="pre", activation="gelu_tanh", layer_norm_eps=1e-5,
        )
    ).eval()
    load(ours, state)
    x, _, _ = inputs()
    torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=1e-4, rtol=1e-4)
