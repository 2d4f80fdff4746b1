"""headwise.models.hf: import tiny randomly initialised transformers models (BERT, GPT-2,
Llama) saved to local folders, compare outputs with transformers' own forward to 1e-5
in fp32, export back and reload with transformers. Nothing is fetched from a hub."""

import json

import pytest
import torch

from headwise.models import Decoder, Encoder, EncoderForMLM, ModelConfig
from headwise.models.hf import from_pretrained, read_hf_weights, save_pretrained

transformers = pytest.importorskip("transformers")

V, D, L, H, FF, T_MAX = 96, 32, 2, 4, 64, 40
TOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def batch(seq: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (2, seq), generator=g)
    types = torch.randint(0, 2, (2, seq), generator=g)
    pad = torch.zeros(2, seq, dtype=torch.bool)
    pad[1, 8:] = True  # second sequence is right-padded
    return ids, types, pad


def bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=FF, max_position_embeddings=T_MAX, **kw,
    )


def llama_config(**kw):
    kw = {"num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}} | kw
    return transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
        intermediate_size=FF, max_position_embeddings=T_MAX, rms_norm_eps=1e-5, **kw,
    )


def gpt2_config(**kw):
    return transformers.GPT2Config(
        vocab_size=V, n_embd=D, n_layer=L, n_head=H, n_positions=T_MAX,
        bos_token_id=0, eos_token_id=0, **kw,
    )


def save_hf(model, folder):
    """Randomise every parameter (HF zero-inits biases and sets norms to 1, which would
    hide a bias or norm mapped to the wrong place), then save_pretrained."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + centre)
    model.save_pretrained(folder)
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """name -> (folder, transformers model), built once per module."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    made = {}
    specs = {
        "bert": lambda: transformers.BertModel(bert_config()),
        "bert_mlm": lambda: transformers.BertForMaskedLM(bert_config()),
        "bert_mlm_untied": lambda: transformers.BertForMaskedLM(bert_config(tie_word_embeddings=False)),
        "gpt2": lambda: transformers.GPT2LMHeadModel(gpt2_config()),
        "gpt2_base": lambda: transformers.GPT2Model(gpt2_config(activation_function="gelu")),
        "llama": lambda: transformers.LlamaForCausalLM(llama_config()),
        "llama_bias": lambda: transformers.LlamaForCausalLM(llama_config(attention_bias=True, mlp_bias=True)),
        "llama_tied": lambda: transformers.LlamaForCausalLM(
            llama_config(tie_word_embeddings=True, num_key_value_heads=1, head_dim=16)
        ),
    }
    for name, build in specs.items():
        folder = root / name
        made[name] = (folder, save_hf(build(), folder))
    return made


# ------------------------------------------------------------------ import: outputs
def test_bert_model_hidden_states_with_padding(hf_dir):
    folder, hf = hf_dir["bert"]
    loaded = from_pretrained(folder)
    ours = loaded.model
    assert type(ours) is Encoder and not ours.training
    ids, types, pad = batch()
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=types, attention_mask=(~pad).long()).last_hidden_state
        got = ours(ids, key_padding_mask=pad, token_type_ids=types)
    assert max_diff(got[~pad], want[~pad]) < TOL
    assert set(loaded.extras) == {"pooler.dense.weight", "pooler.dense.bias"}


@pytest.mark.parametrize("name", ["bert_mlm", "bert_mlm_untied"])
def test_bert_for_masked_lm_logits(hf_dir, name):
    folder, hf = hf_dir[name]
    ours = from_pretrained(folder).model
    assert type(ours) is EncoderForMLM
    tied = ours.head.decoder.weight is ours.encoder.embeddings.tok.weight
    assert tied == (name == "bert_mlm")
    ids, types, pad = batch()
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=types, attention_mask=(~pad).long()).logits
        got = ours(ids, key_padding_mask=pad, token_type_ids=types)
    assert max_diff(got[~pad], want[~pad]) < TOL


def test_gpt2_lm_head_logits(hf_dir):
    folder, hf = hf_dir["gpt2"]
    ours = from_pretrained(folder).model
    assert type(ours) is Decoder and ours.lm_head.weight is ours.embeddings.tok.weight
    ids, _, _ = batch()
    with torch.no_grad():
        assert max_diff(ours(ids), hf(input_ids=ids).logits) < TOL


def test_gpt2_model_without_head_reads_embeddings_as_head(hf_dir):
    folder, hf = hf_dir["gpt2_base"]
    ours = from_pretrained(folder).model
    assert ours.cfg.activation == "gelu" and ours.cfg.tied_embeddings
    ids, _, _ = batch()
    with torch.no_grad():
        hidden = hf(input_ids=ids).last_hidden_state
        assert max_diff(ours(ids), hidden @ hf.wte.weight.T) < TOL


@pytest.mark.parametrize("name", ["llama", "llama_tied", "llama_bias"])
def test_llama_logits_gqa_rope_rmsnorm_swiglu(hf_dir, name):
    folder, hf = hf_dir[name]
    ours = from_pretrained(folder).model
    cfg = ours.cfg
    assert (cfg.norm_type, cfg.activation, cfg.positions) == ("rmsnorm", "swiglu", "rope")
    assert cfg.bias == (name == "llama_bias")
    assert cfg.rope_theta == 5e5 and cfg.n_kv_heads == (1 if name == "llama_tied" else 2)
    assert (ours.lm_head.weight is ours.embeddings.tok.weight) == (name == "llama_tied")
    ids, _, _ = batch()
    with torch.no_grad():
        assert max_diff(ours(ids), hf(input_ids=ids).logits) < TOL


def test_dtype_argument_and_checkpoint_dtype(hf_dir):
    folder, _ = hf_dir["llama"]
    assert from_pretrained(folder).model.embeddings.tok.weight.dtype == torch.float32
    ours = from_pretrained(folder, dtype=torch.bfloat16).model
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}


# ------------------------------------------------------------------ folder layouts
@pytest.mark.parametrize("sub", ["", "0_Transformer"])
def test_sentence_transformers_folder(hf_dir, tmp_path, sub):
    folder, hf = hf_dir["bert"]
    st = tmp_path / "st"
    (st / sub).mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        (st / sub / f.name).write_bytes(f.read_bytes())
    modules = [
        {"idx": 0, "name": "0", "path": sub, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (st / "modules.json").write_text(json.dumps(modules))
    ours = from_pretrained(st).model
    assert type(ours) is Encoder
    ids, _, _ = batch()
    with torch.no_grad():
        assert max_diff(ours(ids), hf(input_ids=ids).last_hidden_state) < TOL


def test_pytorch_bin_and_sharded_safetensors(hf_dir, tmp_path):
    folder, hf = hf_dir["llama"]
    ids, _, _ = batch()
    with torch.no_grad():
        want = hf(input_ids=ids).logits
    state = read_hf_weights(folder)
    config = (folder / "config.json").read_text()

    as_bin = tmp_path / "bin"
    as_bin.mkdir()
    (as_bin / "config.json").write_text(config)
    torch.save(state, as_bin / "pytorch_model.bin")

    from safetensors.torch import save_file

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config)
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(sharded / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))

    for f in (as_bin, sharded):
        with torch.no_grad():
            assert max_diff(from_pretrained(f).model(ids), want) < TOL


def test_tokenizer_is_loaded_and_exported(hf_dir, tmp_path):
    folder = _copy(hf_dir["bert"][0], tmp_path / "with_vocab")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "head", "##s", "attend"]
    (folder / "vocab.txt").write_text("\n".join(words + [f"w{i}" for i in range(V - len(words))]) + "\n")
    ours = from_pretrained(folder)
    assert ours.tokenizer is not None
    assert ours.tokenizer("heads attend")["input_ids"] == [2, 5, 6, 7, 3]
    assert from_pretrained(folder, tokenizer=False).tokenizer is None
    assert from_pretrained(hf_dir["bert"][0]).tokenizer is None  # no tokenizer files there
    out = save_pretrained(ours, tmp_path / "exported")
    again = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert again("heads attend")["input_ids"] == [2, 5, 6, 7, 3]


# ------------------------------------------------------------------ export
def _random_headwise(kind: str) -> torch.nn.Module:
    torch.manual_seed(3)
    common = {"vocab_size": V, "d_model": D, "n_layers": L, "n_heads": H, "d_ff": FF, "max_len": T_MAX}
    if kind == "bert":
        m = Encoder(ModelConfig(**common, norm="post", type_vocab_size=2, layer_norm_eps=1e-12))
    elif kind == "bert_mlm":
        m = EncoderForMLM(ModelConfig(**common, norm="post", type_vocab_size=0, tied_embeddings=False))
    elif kind == "gpt2":
        m = Decoder(ModelConfig(**common, activation="gelu_tanh"))
    else:
        m = Decoder(ModelConfig(
            **common, n_kv_heads=2, positions="rope", rope_theta=1234.0, norm_type="rmsnorm",
            activation="swiglu", bias=False, tied_embeddings=False, layer_norm_eps=1e-6,
        ))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # norms and biases away from 1/0, as in save_hf
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


@pytest.mark.parametrize(
    "kind,auto",
    [("bert", "AutoModel"), ("bert_mlm", "AutoModelForMaskedLM"), ("gpt2", "AutoModelForCausalLM"),
     ("llama", "AutoModelForCausalLM")],
)
def test_export_loads_in_transformers_with_equal_outputs(tmp_path, kind, auto):
    ours = _random_headwise(kind)
    out = save_pretrained(ours, tmp_path / kind, family=kind.split("_")[0])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    hf = getattr(transformers, auto).from_pretrained(out, local_files_only=True).eval()
    ids, types, pad = batch()
    with torch.no_grad():
        if kind == "bert":
            want = hf(input_ids=ids, token_type_ids=types, attention_mask=(~pad).long()).last_hidden_state
            got = ours(ids, key_padding_mask=pad, token_type_ids=types)
            got, want = got[~pad], want[~pad]
        elif kind == "bert_mlm":  # no token types: the exported zero table adds nothing
            want = hf(input_ids=ids, attention_mask=(~pad).long()).logits[~pad]
            got = ours(ids, key_padding_mask=pad)[~pad]
        else:
            want, got = hf(input_ids=ids).logits, ours(ids)
    assert max_diff(got, want) < TOL
    # ... and back into headwise: the same weights.
    back = from_pretrained(out).model
    assert back.cfg == ours.cfg.__class__(**{**ours.cfg.to_dict(), "type_vocab_size": back.cfg.type_vocab_size})
    theirs = back.state_dict()
    for k, v in ours.state_dict().items():
        if k.endswith("tok_type.weight") and ours.cfg.type_vocab_size == 0:
            continue
        assert torch.equal(theirs[k], v), k


@pytest.mark.parametrize(
    "name", ["bert", "bert_mlm", "bert_mlm_untied", "gpt2", "llama", "llama_tied", "llama_bias"]
)
def test_hf_to_headwise_to_hf_same_weights(hf_dir, tmp_path, name):
    folder, _ = hf_dir[name]
    out = save_pretrained(from_pretrained(folder), tmp_path / "again")
    before, after = read_hf_weights(folder), read_hf_weights(out)
    assert sorted(before) == sorted(after)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    cfg_before = json.loads((folder / "config.json").read_text())
    cfg_after = json.loads((out / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "n_embd", "num_key_value_heads", "tie_word_embeddings", "rope_parameters"):
        assert cfg_before.get(key) == cfg_after.get(key), key


def test_export_refuses_non_empty_folder_unless_overwrite(tmp_path):
    ours = _random_headwise("gpt2")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(ours, dest, family="gpt2")
    (dest / "pytorch_model.bin").write_bytes(b"stale")
    save_pretrained(ours, dest, family="gpt2", overwrite=True)
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["config.json", "model.safetensors", "notes.txt"]  # the stale weights are gone


def test_export_names_every_setting_the_family_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match=r"family='gpt2'.*positions='rope'.*norm_type='rmsnorm'.*bias=False"):
        save_pretrained(_random_headwise("llama"), tmp_path / "x", family="gpt2")
    with pytest.raises(ValueError, match="family must be one of"):
        save_pretrained(_random_headwise("gpt2"), tmp_path / "y", family="t5")


# ------------------------------------------------------------------ errors
def _copy(folder, dest):
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_unknown_model_type_names_it_and_the_supported(hf_dir, tmp_path):
    bad = _copy(hf_dir["bert"][0], tmp_path / "t5")
    cfg = json.loads((bad / "config.json").read_text()) | {"model_type": "t5"}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_type='t5'.*\['bert', 'gpt2', 'llama'\]"):
        from_pretrained(bad)


def test_missing_weights_file_names_the_folder(hf_dir, tmp_path):
    bad = _copy(hf_dir["gpt2"][0], tmp_path / "noweights")
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="noweights"):
        from_pretrained(bad)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        from_pretrained(tmp_path / "nowhere")


def test_shape_mismatch_names_the_tensor(hf_dir, tmp_path):
    bad = _copy(hf_dir["llama"][0], tmp_path / "shape")
    cfg = json.loads((bad / "config.json").read_text()) | {"num_key_value_heads": 4}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(16, 32\).*\(32, 32\)"):
        from_pretrained(bad)


def test_unused_tensors_raise_unless_not_strict(hf_dir, tmp_path):
    from safetensors.torch import save_file

    bad = _copy(hf_dir["bert"][0], tmp_path / "cls")
    state = read_hf_weights(bad) | {"classifier.weight": torch.zeros(3, D)}
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="classifier.weight.*strict=False"):
        from_pretrained(bad)
    assert type(from_pretrained(bad, strict=False).model) is Encoder


def test_unsupported_features_are_refused(hf_dir, tmp_path):
    bad = _copy(hf_dir["llama"][0], tmp_path / "scaled")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        from_pretrained(bad)
