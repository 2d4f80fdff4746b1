"""Parameter counts equal those of the Hugging Face namesakes, built from their default
configs on the meta device (no memory, no download). Like with like:

* bert-base  Encoder        == BertModel(BertConfig(), add_pooling_layer=False)
* bert-base  EncoderForMLM  == BertForMaskedLM(BertConfig())       (decoder tied)
* gpt2-small Decoder        == GPT2LMHeadModel(GPT2Config())       (lm_head tied)
* electra-small EncoderForRTD == ElectraForPreTraining(ElectraConfig())
* its generator EncoderForMLM == ElectraForMaskedLM at 1/4 width (64, 1 head, FFN 256)
"""

import pytest
import torch

from headwise.models import (
    Decoder,
    Encoder,
    EncoderForMLM,
    build_electra,
    count_parameters,
    get_preset,
)

transformers = pytest.importorskip("transformers")


def hf_count(cls, config, **kwargs) -> int:
    with torch.device("meta"):
        model = cls(config, **kwargs)
    return sum(p.numel() for p in model.parameters())


def ours(build) -> int:
    with torch.device("meta"):
        return count_parameters(build())


def test_bert_base():
    cfg = get_preset("bert-base")
    bert = transformers.BertConfig()
    assert ours(lambda: Encoder(cfg)) == hf_count(
        transformers.BertModel, bert, add_pooling_layer=False
    )
    assert ours(lambda: EncoderForMLM(cfg)) == hf_count(transformers.BertForMaskedLM, bert)
    assert ours(lambda: EncoderForMLM(cfg)) == 109_514_298


def test_gpt2_small():
    n = ours(lambda: Decoder(get_preset("gpt2-small")))
    assert n == hf_count(transformers.GPT2LMHeadModel, transformers.GPT2Config())
    assert n == 124_439_808


def test_electra_small_discriminator_and_generator():
    with torch.device("meta"):
        gen, disc = build_electra(get_preset("electra-small"))
    electra = dict(embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    assert count_parameters(disc) == hf_count(
        transformers.ElectraForPreTraining, transformers.ElectraConfig(**electra)
    )
    small_gen = dict(electra, hidden_size=64, num_attention_heads=1, intermediate_size=256)
    assert count_parameters(gen) == hf_count(
        transformers.ElectraForMaskedLM, transformers.ElectraConfig(**small_gen)
    )
    # The pair shares the embeddings, so together they hold fewer than the two apart.
    shared = count_parameters(disc.encoder.embeddings)
    pair = count_parameters(torch.nn.ModuleList([gen, disc]))
    assert pair == count_parameters(gen) + count_parameters(disc) - shared
