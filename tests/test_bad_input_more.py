"""Bad input outside training, found by a second sweep: each case is refused with exit
status 2 and one line naming what was wrong (or, from the API, the exception type torch
or Python would raise, naming the argument), and nothing headwise did not write is
touched."""

from __future__ import annotations

import os

import pytest
from tiny_runs import refused_line as _refused
from tiny_runs import two_step_mlm_run, write_corpus

from headwise.cli import main


@pytest.fixture(scope="module")
def clm_run(tmp_path_factory):
    """A clm run of two steps (about a second)."""
    root = tmp_path_factory.mktemp("bad_input_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", str(root / "cache"))
        corpus = write_corpus(root / "corpus.txt", docs=60)
        run = root / "clm"
        assert main(["train", "--objective", "clm", "--corpus", str(corpus), "--out", str(run), "--steps", "2",
                     "--batch-size", "2", "--block-len", "17", "--model",
                     "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks", "--no-report",
                     "--quiet", "--device", "cpu"]) == 0
        yield run


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("the cat sat on the mat.\na dog ran under the tree.\n")
    return path


# ------------------------------------------------------------------ inspect --out
@pytest.mark.parametrize("out", ["", "  "])
@pytest.mark.parametrize("overwrite", [False, True])
def test_inspect_out_empty_is_refused_not_taken_as_the_working_folder(clm_run, text, tmp_path, monkeypatch,
                                                                      capsys, out, overwrite):
    """Path('') is '.': `inspect --out ''` wrote report.html, figures and a manifest
    into the working folder (train refuses --out '' already)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "mine.txt").write_text("the user's")
    monkeypatch.chdir(cwd)
    line = _refused(["inspect", str(clm_run), "--text", str(text), "--out", out, "--device", "cpu",
                     *(["--overwrite"] if overwrite else [])], capsys)
    assert f"--out {out!r} is empty" in line
    assert sorted(p.name for p in cwd.iterdir()) == ["mine.txt"]


def test_inspect_out_that_is_a_dangling_link_is_refused_before_inspecting(clm_run, text, tmp_path, capsys,
                                                                         monkeypatch):
    """was: the whole inspection ran, then mkdir failed with '/…/out: File exists'."""
    import headwise.app.inspect_command as ic

    link = tmp_path / "out"
    os.symlink(tmp_path / "gone", link)
    monkeypatch.setattr(ic, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing --out"))
    line = _refused(["inspect", str(clm_run), "--text", str(text), "--out", str(link), "--device", "cpu"], capsys)
    assert f"--out {str(link)!r} is a link to" in line and "which does not exist" in line
    assert link.is_symlink() and not (tmp_path / "gone").exists()


# ------------------------------------------------------------------ the attention layer
@pytest.mark.parametrize("theta", [float("nan"), float("inf"), 0.0, -1.0, "1e4"])
def test_rope_theta_that_is_not_a_finite_positive_number_is_refused(theta):
    """was: NaN and inf were accepted, and every rotated query and key became NaN."""
    from headwise.attention import MultiHeadAttention

    with pytest.raises(ValueError, match="rope_theta must be a finite positive float"):
        MultiHeadAttention(8, 2, rope=True, rope_theta=theta)


# ------------------------------------------------------------------ inspect --importance
@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """An MLM run of two steps."""
    with two_step_mlm_run(tmp_path_factory.mktemp("bad_input_mlm"), norm="post") as run:
        yield run


def test_importance_whose_loss_scored_no_token_is_refused_not_reported_as_zeros(mlm_run, tmp_path, capsys):
    """was: with one short sentence the masked-LM objective masked none of its tokens,
    the loss was 0 and the report listed 'most important heads: L0H0 0.00, L0H1 0.00, ...'
    and a flat pruning curve, as if that were a finding."""
    text = tmp_path / "s.txt"
    text.write_text("the cat.\n")
    out = tmp_path / "o"
    line = _refused(["inspect", str(mlm_run), "--text", str(text), "--out", str(out), "--importance",
                     "--importance-sentences", "1", "--examples", "1", "--device", "cpu"], capsys)
    assert "--importance" in line and "does not depend on any head" in line and "--importance-sentences" in line
    assert not out.exists()


# ------------------------------------------------------------------ headwise.inspect
@pytest.fixture(scope="module")
def decoder():
    import torch

    from headwise.models import Decoder, ModelConfig

    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=8)).eval()


def test_pruning_curve_refuses_importance_that_is_not_finite(decoder):
    """was: NaN importance sorted the heads in an arbitrary order and drew a curve from it."""
    import torch

    from headwise.inspect import pruning_curve

    importance = torch.ones(2, 2)
    importance[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"importance must be finite, got 1 NaN"):
        pruning_curve(decoder, importance, [torch.zeros(1, 4, dtype=torch.long)], lambda m, b: 1.0)


def test_means_with_mode_zero_is_refused_not_ignored(decoder):
    import torch

    from headwise.inspect import ablate_heads, pruning_curve

    means = torch.zeros(2, 2, 8)
    with pytest.raises(ValueError, match="means has no effect with mode='zero'"):
        with ablate_heads(decoder, [(0, 0)], means=means):
            pass
    with pytest.raises(ValueError, match="means has no effect with mode='zero'"):
        pruning_curve(decoder, torch.ones(2, 2), [torch.zeros(1, 4, dtype=torch.long)], lambda m, b: 1.0,
                      means=means)


# ------------------------------------------------------------------ inspect of a damaged Hugging Face folder
@pytest.fixture(scope="module")
def hf_folder(mlm_run, tmp_path_factory):
    """The MLM run exported as a Hugging Face BERT folder."""
    from headwise.models.hf import save_pretrained
    from headwise.train.reader import load_run

    run = load_run(mlm_run, device="cpu")
    folder = tmp_path_factory.mktemp("hf") / "bert"
    save_pretrained(run.objective.model, folder)
    run.tokenizer.save(folder)
    return folder


def _damage(folder, name, change):
    import json

    path = folder / name
    if change == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif change == "garbage":
        path.write_text("garbage")
    else:  # drop a field
        d = json.loads(path.read_text())
        del d[change]
        path.write_text(json.dumps(d))


@pytest.mark.parametrize("name,change,needles", [
    ("model.safetensors", "truncate", ["its weights file is damaged or not safetensors"]),
    ("config.json", "vocab_size", ["its config.json lacks the field 'vocab_size'"]),
    ("config.json", "garbage", ["config.json is damaged (not JSON"]),
    ("tokenizer.json", "garbage", ["tokenizer.json is damaged (not JSON"]),
])
def test_inspect_of_a_damaged_hugging_face_folder_names_the_file(hf_folder, text, tmp_path, capsys, name, change,
                                                                 needles):
    """was: a traceback (safetensors' SafetensorError; KeyError: 'vocab_size') or a
    parser message naming no file ('Expecting value: line 1 column 1 (char 0)')."""
    import shutil

    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    assert main(["inspect", str(folder), "--text", str(text), "--out", str(tmp_path / "ok"), "--examples", "1",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    _damage(folder, name, change)
    line = _refused(["inspect", str(folder), "--text", str(text), "--out", str(tmp_path / "o"), "--device", "cpu"],
                    capsys)
    assert f"MODEL {str(folder)!r}" in line
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--text", "--conllu"])
def test_inspect_input_that_is_a_folder_is_called_a_folder(clm_run, tmp_path, capsys, flag):
    """was: "--conllu '…': no such file" (and read_conllu: "does not exist") for a folder that exists."""
    folder = tmp_path / "treebank"
    folder.mkdir()
    line = _refused(["inspect", str(clm_run), flag, str(folder), "--out", str(tmp_path / "o"), "--device", "cpu"],
                    capsys)
    assert f"{flag} {str(folder)!r} is a folder" in line
    assert not (tmp_path / "o").exists()


def test_read_conllu_of_a_folder_says_it_is_a_folder(tmp_path):
    from headwise.inspect import read_conllu

    with pytest.raises(IsADirectoryError, match="is a folder; give a .conllu file"):
        read_conllu(tmp_path)


def _qkv_mask(q_shape=(1, 2, 3, 4), k_shape=(1, 2, 3, 4), v_shape=(1, 2, 3, 4), mask_sizes=(1, 3, 3)):
    import torch

    from headwise.attention import normalize_mask

    b, tq, tk = mask_sizes
    return (torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape),
            normalize_mask(batch=b, n_heads=2, q_len=tq, k_len=tk, device=torch.device("cpu")))


@pytest.mark.parametrize("backend", ["auto", "sdpa", "math", "reference"])
@pytest.mark.parametrize("case,needle", [
    (dict(v_shape=(1, 2, 2, 4)), "k and v must share (batch, heads, seq)"),
    (dict(k_shape=(2, 2, 3, 4), v_shape=(2, 2, 3, 4)), "q and k batch and head_dim"),
    (dict(k_shape=(1, 2, 2, 4), v_shape=(1, 2, 2, 4)), "mask was made for (batch, q_len, k_len) = (1, 3, 3)"),
    (dict(mask_sizes=(1, 5, 3)), "mask was made for (batch, q_len, k_len) = (1, 5, 3)"),
    (dict(mask_sizes=(4, 3, 3)), "but q and k give (1, 3, 3)"),
])
def test_attend_refuses_inconsistent_shapes(backend, case, needle):
    """was: attend() ran each of these (on 'auto' and 'sdpa' all of them) and returned
    an output computed from keys, values or a mask that do not belong together."""
    from headwise.attention import attend

    q, k, v, mask = _qkv_mask(**case)
    with pytest.raises(ValueError) as e:
        attend(q, k, v, mask, backend=backend)
    assert needle in str(e.value), str(e.value)


def test_attend_mask_that_is_not_a_maskspec_is_a_type_error():
    from headwise.attention import attend

    q, k, v, _ = _qkv_mask()
    with pytest.raises(TypeError, match="mask must be a MaskSpec"):  # was AttributeError: 'NoneType' ... 'causal'
        attend(q, k, v, None)


def test_inspect_of_a_model_with_nan_weights_is_refused_naming_the_parameter(hf_folder, text, tmp_path, capsys):
    """was: the inspection ran, every head after the NaN attended with NaN weights, and
    the report named them 'other' (measures null) as if that were what the heads do."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "hf"
    shutil.copytree(hf_folder, folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in sorted(tensors) if k.endswith("attention.self.query.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    line = _refused(["inspect", str(folder), "--text", str(text), "--out", str(tmp_path / "o"), "--device", "cpu"],
                    capsys)
    assert "holds 1 NaN or infinite value(s)" in line and "parameter" in line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ eval --format
@pytest.mark.parametrize("batches", [1, 3])
def test_eval_format_compares_on_at_most_batches(clm_run, tmp_path, capsys, batches):
    """was: `eval --format bf16 --batches 1` compared the formats on 8 batches all the same."""
    import json
    import warnings

    corpus = write_corpus(tmp_path / "other.txt", docs=60, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no native bf16 on this CPU: slow, still right
        assert main(["eval", str(clm_run), "--corpus", str(corpus), "--format", "bf16", "--batches", str(batches),
                     "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_batches"] == batches


@pytest.mark.parametrize("format", ["bf16", "int8"])
def test_eval_format_of_a_clm_run_with_blocks_of_max_len_plus_one(clm_run, capsys, format):
    """was: 'sequence length 17 exceeds max_len=16 of the learned position embeddings':
    the comparison (and int8's calibration) fed whole blocks to the decoder, whose
    objective reads a block's first max_len tokens (--block-len 17, max_len=16 here)."""
    import json
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["eval", str(clm_run), "--format", format, "--batches", "2", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == format and report["n_batches"] >= 1


# ------------------------------------------------------------------ headwise.app.inspect_model options
@pytest.mark.parametrize("kw,needle", [
    (dict(keep_examples=-1), "keep_examples must be an int >= 0, got -1"),
    (dict(induction_len=0), "induction_len must be a positive int, got 0"),
    (dict(ablation_mode="mean"), "ablation_mode='mean' has no effect without metric_fn"),
    (dict(induction=False, induction_len=8), "induction_len=8 has no effect with induction=False"),
    (dict(induction=False, vocab_range=(5, 20)), "vocab_range=(5, 20) has no effect with induction=False"),
])
def test_inspect_options_that_are_invalid_or_would_do_nothing_are_refused(kw, needle):
    """was: keep_examples=-1 was taken as 0, and ablation_mode without a pruning curve or
    the induction settings with induction=False were ignored."""
    from headwise.app import InspectOptions

    with pytest.raises(ValueError) as e:
        InspectOptions(**kw)
    assert needle in str(e.value), str(e.value)


def test_inspect_options_that_are_used_are_accepted():
    from headwise.app import InspectOptions

    InspectOptions(induction=True, induction_len=8, vocab_range=(5, 20), keep_examples=0)
    InspectOptions(loss_fn=lambda m, b: 0, loss_batches=[0], metric_fn=lambda m, b: 0.0, ablation_mode="mean")


def test_importance_sentences_beyond_max_sentences_is_refused(clm_run, text, tmp_path, capsys):
    """was: --importance-sentences 50 --max-sentences 2 scored importance on 2 sentences, saying nothing."""
    line = _refused(["inspect", str(clm_run), "--text", str(text), "--out", str(tmp_path / "o"), "--max-sentences",
                     "2", "--importance", "--importance-sentences", "50", "--device", "cpu"], capsys)
    assert "--importance-sentences 50 is more than --max-sentences 2" in line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ heads.jsonl
_ROW = '{"step": 2, "heads": [{"layer": 0, "head": 0, "role": "broad", "roles": ["broad"], "measures": {}}]}'


@pytest.mark.parametrize("content,needle", [
    ("garbage\n", "heads.jsonl, line 1 is damaged (not JSON"),
    (_ROW + "\n{\"step\": 4, \"heads\": [[\n" + _ROW + "\n", "heads.jsonl, line 2 is damaged"),
    ('{"step": "x", "heads": 5}\n', "heads.jsonl, line 1 is not a head record"),
    ('[1, 2]\n', "heads.jsonl, line 1 is not a head record"),
])
def test_a_damaged_head_record_is_named_not_skipped(tmp_path, content, needle):
    """was: every line that was not JSON was skipped without a word (the report lost its
    roles over training), and a row of another shape gave "'int' object is not iterable"."""
    from headwise.inspect.timeline import read_head_record

    (tmp_path / "heads.jsonl").write_text(content)
    with pytest.raises(ValueError) as e:
        read_head_record(tmp_path)
    assert needle in str(e.value), str(e.value)


def test_a_torn_last_head_record_is_skipped(tmp_path):
    from headwise.inspect.timeline import read_head_record

    (tmp_path / "heads.jsonl").write_text(_ROW + "\n" + _ROW[:30])  # killed while appending
    assert [r["step"] for r in read_head_record(tmp_path)] == [2]


@pytest.mark.parametrize("k_shape,v_shape,v_dtype", [
    ((2, 3, 4), (2, 3, 4), None),  # was: IndexError: tuple index out of range
    ((1, 2, 3, 4), (1, 2, 5, 4), None),  # was: a RuntimeError from inside the copy, the cache left half-made
    ((1, 2, 3, 4), (1, 2, 3, 4), "float64"),  # was: accepted, to fail later inside attention
])
def test_kv_cache_append_refuses_keys_and_values_that_do_not_match(k_shape, v_shape, v_dtype):
    import torch

    from headwise.attention import KVCache

    cache = KVCache()
    v = torch.randn(v_shape, dtype=getattr(torch, v_dtype) if v_dtype else torch.float32)
    with pytest.raises(ValueError, match=r"k and v must be 4-D \(B, Hkv, t, D\) sharing"):
        cache.append(torch.randn(k_shape), v)
    assert len(cache) == 0
    k, v = cache.append(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))  # still usable
    assert k.shape == v.shape == (1, 2, 3, 4)


def test_kv_cache_append_of_something_that_is_not_a_tensor_is_a_type_error():
    from headwise.attention import KVCache

    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):  # was AttributeError
        KVCache().append([1], [2])


@pytest.mark.parametrize("index", ["a", 1.0, True])
def test_layer_heads_index_that_is_not_an_int_is_a_type_error(index):
    """was: IndexError for 'a' and 1.0 (a list raises TypeError), and heads[True] was head 1."""
    from headwise.attention import MultiHeadAttention

    heads = MultiHeadAttention(8, 2).heads
    with pytest.raises(TypeError, match="head index must be an int or a slice"):
        heads[index]
    assert heads[-1].index == 1 and len(heads[0:2]) == 2
    with pytest.raises(IndexError):
        heads[2]


@pytest.mark.parametrize("dropout", ["0.1", None])
def test_layer_dropout_that_is_not_a_number_is_named(dropout):
    """was: TypeError "'<=' not supported between instances of 'float' and 'str'", naming nothing."""
    from headwise.attention import MultiHeadAttention

    with pytest.raises(ValueError, match=r"dropout must be a float in \[0, 1\), got"):
        MultiHeadAttention(8, 2, dropout=dropout)


def test_input_files_with_a_byte_order_mark_are_read_as_text(tmp_path):
    """was: a CoNLL-U file saved with a UTF-8 BOM was refused ("expected 10 tab-separated
    fields, got 1: '\\ufeff# sent_id = 1'") and --text kept '\\ufeff' in its first sentence."""
    from headwise.app.inspect_command import read_text
    from headwise.inspect import read_conllu

    bom = "\ufeff"
    conllu = tmp_path / "t.conllu"
    rows = ["1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_", "2\tcat\tcat\tNOUN\t_\t_\t0\troot\t_\t_"]
    conllu.write_text(bom + "# sent_id = 1\n" + "\n".join(rows) + "\n\n", encoding="utf-8")
    assert [s.words for s in read_conllu(conllu)] == [["The", "cat"]]
    text = tmp_path / "t.txt"
    text.write_text(bom + "the cat sat.\r\nthe dog ran.\r\n", encoding="utf-8")
    assert read_text(text) == ["the cat sat.", "the dog ran."]
