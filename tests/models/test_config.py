"""ModelConfig validation, JSON round trip, presets and the ELECTRA generator config."""

import dataclasses
import json

import pytest

from headwise.models import PRESETS, ModelConfig, generator_config, get_preset

BASE = dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4)


def test_defaults_resolve():
    cfg = ModelConfig(**BASE)
    assert cfg.d_ff == 128 and cfg.head_dim == 8 and cfg.n_kv_heads == 4 and cfg.embedding_size == 32


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("vocab_size", 0, "positive int"),
        ("d_model", 32.0, "positive int"),
        ("n_layers", True, "positive int"),
        ("n_heads", 5, "divide d_model"),
        ("head_dim", -1, "positive int"),
        ("n_kv_heads", 3, "must divide n_heads"),
        ("d_ff", 0, "positive int"),
        ("max_len", 0, "positive int"),
        ("positions", "alibi", "['learned', 'rope']"),
        ("norm", "sandwich", "['pre', 'post']"),
        ("activation", "gelu_new", "'gelu_tanh'"),
        ("dropout", 1.0, "[0, 1)"),
        ("attn_dropout", -0.1, "[0, 1)"),
        ("layer_norm_eps", 0.0, "positive float"),
        ("type_vocab_size", -1, "int >= 0"),
        ("embedding_size", 0, "positive int"),
        ("tied_embeddings", 1, "bool"),
        ("bias", "yes", "bool"),
        ("init_std", 0, "positive float"),
        ("attn_backend", "", "backend"),
    ],
)
def test_validation_names_field_value_and_accepted(field, value, accepted):
    with pytest.raises(ValueError) as info:
        ModelConfig(**{**BASE, field: value})
    msg = str(info.value)
    assert field in msg and (repr(value) in msg or str(value) in msg)
    assert accepted in msg


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        ModelConfig(**{**BASE, "head_dim": 7, "positions": "rope"})


def test_replace_revalidates():
    cfg = ModelConfig(**BASE)
    with pytest.raises(ValueError, match="norm"):
        dataclasses.replace(cfg, norm="middle")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip_file_and_dir(tmp_path, name):
    cfg = get_preset(name)
    written = cfg.to_json(tmp_path)  # a directory: writes config.json inside
    assert written.endswith("config.json")
    assert ModelConfig.from_json(tmp_path) == cfg
    path = tmp_path / "other.json"
    cfg.to_json(path)
    assert ModelConfig.from_json(path) == cfg
    assert json.loads(path.read_text())["d_model"] == cfg.d_model


def test_from_dict_rejects_unknown_fields():
    d = ModelConfig(**BASE).to_dict()
    d["n_layer"] = 3
    with pytest.raises(ValueError, match="n_layer"):
        ModelConfig.from_dict(d)


def test_get_preset_overrides_and_unknown_name():
    cfg = get_preset("tiny", vocab_size=777)
    assert cfg.vocab_size == 777 and cfg.d_model == PRESETS["tiny"].d_model
    with pytest.raises(ValueError, match="'bert-huge'"):
        get_preset("bert-huge")


def test_generator_config_is_a_quarter_wide_and_shares_embedding_width():
    disc = get_preset("electra-small")
    gen = generator_config(disc)
    assert (gen.d_model, gen.n_heads, gen.d_ff, gen.n_layers) == (64, 1, 256, 12)
    assert gen.embedding_size == disc.embedding_size == 128
    tiny = generator_config(get_preset("tiny"))
    assert tiny.d_model == 32 and tiny.embedding_size == 128  # projects the shared 128-wide table
    with pytest.raises(ValueError, match="fraction"):
        generator_config(disc, 0.0)


def test_derived_fields_resolve_once_and_save_as_given(tmp_path):
    cfg = ModelConfig(**BASE, n_kv_heads=2)
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.embedding_size) == (8, 2, 32)
    assert cfg.is_default("head_dim") and not cfg.is_default("n_kv_heads")
    d = cfg.to_dict()
    assert d["head_dim"] is None and d["embedding_size"] is None and d["n_kv_heads"] == 2
    # files that lack the derived fields, or hold them resolved, load to the same config
    old = {k: v for k, v in d.items() if k not in ("head_dim", "embedding_size")}
    assert ModelConfig.from_dict(old) == cfg == ModelConfig(**BASE, n_kv_heads=2, head_dim=8, embedding_size=32)
    # a variant derives what was left to default from its own sizes; given values stay
    wide = dataclasses.replace(cfg, d_model=64)
    assert (wide.head_dim, wide.embedding_size, wide.n_kv_heads) == (16, 64, 2)
    pinned = cfg.replace(d_model=64, head_dim=8)
    assert pinned.head_dim == 8 and not pinned.is_default("head_dim") and pinned.embedding_size == 64
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\)"):
        cfg.replace(n_layer=3)
