"""Edge cases of eval, generate, the number formats and Hugging Face import/export, found by a probe."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tiny_runs import refused_line as _refused
from tiny_runs import write_corpus

from headwise.cli import main
from headwise.formats import compare_formats, quantize
from headwise.models import EncoderForRTD, ModelConfig


def _train(root, objective: str, *extra: str):
    """A run of two steps (about a second) in ``root / objective``."""
    run = root / objective
    assert main(["train", "--objective", objective, "--corpus", str(root / "corpus.txt"), "--out", str(run),
                 "--steps", "2", "--warmup", "1", "--batch-size", "2",
                 "--block-len", "17" if objective == "clm" else "16",
                 "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=16", "--no-sanity-checks",
                 "--no-report", "--quiet", "--device", "cpu", *extra]) == 0
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A clm and an rtd run of two steps each."""
    root = tmp_path_factory.mktemp("eval_generate_probe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWISE_CACHE", str(root / "cache"))
        write_corpus(root / "corpus.txt", docs=60)
        yield {objective: _train(root, objective) for objective in ("clm", "rtd")}


def _eval_report(run, capsys, *extra: str) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no native bf16 on this CPU: slow, still right
        assert main(["eval", str(run), "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ eval --format of an rtd run
@pytest.mark.parametrize("format", ["bf16", "int8"])
def test_eval_format_of_an_rtd_run_counts_every_token_and_reports_no_perplexity_of_the_summed_loss(
        runs, capsys, format):
    """was: "n_tokens": 4 for 2 batches of 2 x 16 tokens (the discriminator's (B, T) logits
    were compared as B vectors of T values), and a "perplexity" of 9e16, exp of the loss
    that sums the generator's MLM loss and 50 x the discriminator's."""
    report = _eval_report(runs["rtd"], capsys, "--format", format, "--batches", "2")
    assert report["n_batches"] == 2 and report["n_tokens"] == 2 * 2 * 16
    assert "perplexity" not in report["task"]["fp32"]
    assert report["output"]["cosine"] > 0.9  # one logit per token: mostly of the same sign


def test_compare_formats_reads_one_value_per_token_as_a_token_each():
    torch.manual_seed(0)
    model = EncoderForRTD(ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2))
    ids = torch.randint(0, 40, (3, 7))
    report = compare_formats(model, quantize(model, "int8"), [ids])
    assert report["n_tokens"] == 3 * 7
    assert report["layers"]["encoder.blocks.0"]["cosine"] > 0.99


def test_compare_formats_of_a_layer_the_forward_never_calls_names_it():
    """was: KeyError 'encoder.blocks' (a ModuleList: named, never called)."""
    model = EncoderForRTD(ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2))
    with pytest.raises(ValueError, match=r"layers: 'encoder.blocks' did not run in the forward of the fp32 model"):
        compare_formats(model, quantize(model, "int8"), [torch.randint(0, 40, (2, 5))], layers=["encoder.blocks"])


def test_compare_formats_compares_every_call_of_a_module_that_runs_twice():
    """was: only a module's last call in a forward was compared (the one that agrees here)."""

    class Twice(torch.nn.Module):
        def __init__(self, first_sign: float) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, bias=False)
            self.first_sign = first_sign

        def forward(self, x):
            self.lin(self.first_sign * x)
            return self.lin(x)

    torch.manual_seed(0)
    ref, other = Twice(1.0), Twice(-1.0)
    other.load_state_dict(ref.state_dict())
    report = compare_formats(ref, other, [torch.randn(2, 3, 4)], layers=["lin"])
    assert report["output"]["cosine"] == pytest.approx(1.0)
    assert report["layers"]["lin"]["cosine"] == pytest.approx(0.0)  # mean of the first calls' -1 and the second's 1


# ------------------------------------------------------------------ load_quantized of damaged input
def test_load_quantized_of_a_folder_says_it_is_a_folder(tmp_path):
    """was: OSError 'No such device (os error 19)', naming no path."""
    from headwise.formats import load_quantized

    with pytest.raises(IsADirectoryError, match=f"load_quantized: {str(tmp_path)!r} is a folder"):
        load_quantized(tmp_path)


@pytest.mark.parametrize("change,needle", [
    (dict(config="{"), "its config metadata is not JSON"),  # was: a bare JSONDecodeError
    (dict(config='{"vocab_size": 50}'), "cannot be built: ModelConfig.__init__() missing"),  # was: a TypeError
    (dict(headwise_format="fp16"), "cannot be built: format must be one of"),  # was: naming no file
    (dict(model_class="Encoder"), "its tensors do not fit the Encoder its metadata describes (Missing key(s)"),
    (dict(attention_backends='{"blocks.0": "math"}'),
     "its attention_backends metadata is damaged: 'blocks.0' is not an attention layer"),
    (dict(attention_backends='{"blocks.0.attn": "fast"}'), "attention_backends metadata is damaged: backend must be"),
], ids=["config_not_json", "config_incomplete", "format", "model_class", "backend_layer", "backend_name"])
def test_load_quantized_of_a_file_with_damaged_metadata_names_the_file(tmp_path, change, needle):
    """was: load_state_dict's RuntimeError of many lines, or errors that named no file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from headwise.formats import load_quantized, save_quantized
    from headwise.models import Decoder

    path = save_quantized(Decoder(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2)),
                          tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    save_file(tensors, tmp_path / "x.safetensors", metadata={**meta, **change})
    with pytest.raises(ValueError) as e:
        load_quantized(tmp_path / "x.safetensors")
    assert str(e.value).startswith(f"{tmp_path / 'x.safetensors'}: ") and needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("format", ["fp32", "int8"])
def test_save_and_load_quantized_keep_each_attention_layers_backend(tmp_path, format):
    """was: quantize(attention="int8") (or a layer's backend set by hand) came back from
    load_quantized as the config's "auto", without a word."""
    from headwise.attention import MultiHeadAttention
    from headwise.formats import load_quantized, save_quantized
    from headwise.models import Decoder

    model = Decoder(ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2))
    if format == "int8":
        model = quantize(model, "int8", attention="int8")
    else:
        model.blocks[1].attn.backend = "math"
    loaded = load_quantized(save_quantized(model, tmp_path / "m.safetensors"))

    def backends(m):
        return {n: a.backend for n, a in m.named_modules() if isinstance(a, MultiHeadAttention)}

    assert backends(loaded) == backends(model)
    assert set(backends(model).values()) != {"auto"}


# ------------------------------------------------------------------ bench
def test_bench_runs_a_script_that_imports_its_sibling_script(tmp_path, capsys):
    """was: ModuleNotFoundError 'No module named train_throughput' (a traceback) from
    `headwise bench gelu`, `cpu_linear` and `malloc`, which import the bench folder's
    train_throughput.py: `python bench/gelu.py` has the folder on sys.path, runpy did not."""
    import sys

    for n in (1, 2):  # two folders with a sibling of the same name: each run imports its own
        bench = tmp_path / f"bench{n}"
        bench.mkdir()
        (bench / "probe_sibling.py").write_text(f"VALUE = {n}\n")
        (bench / "uses.py").write_text(
            "import argparse, pathlib\nimport probe_sibling\np = argparse.ArgumentParser()\n"
            "p.add_argument('--out', type=pathlib.Path)\n"
            "p.parse_args().out.write_text(str(probe_sibling.VALUE))\n")
        path_before = list(sys.path)
        assert main(["bench", "--bench-dir", str(bench), "uses", "--out", str(tmp_path / f"{n}.txt")]) == 0
        assert (tmp_path / f"{n}.txt").read_text() == str(n)
        assert sys.path == path_before and "probe_sibling" not in sys.modules


@pytest.mark.parametrize("argv", [
    ["planner", "--reps", "0"],  # was: taken as "not given", 7 runs per shape without a word
    ["formats", "--batch", "0"],  # was: IndexError 'amax(): Expected reduction dim 0 to have non-zero size'
    ["formats", "--warmup", "-1"],
    ["train_throughput", "--steps", "0"],  # was: ZeroDivisionError 'float division by zero'
    ["gelu", "--pairs", "0"],  # was: 'no median for empty data', naming no flag
    ["cpu_linear", "--probes", "0"],
    ["malloc", "--steps", "0"],
    ["inspect_minilm", "--batch-size", "0"],
    ["attention_bf16_cpu", "--rounds", "0"],
    ["shakespeare", "--iters", "0"],
], ids=lambda a: " ".join(a))
def test_bench_script_counts_that_are_not_positive_are_refused_naming_the_flag(argv, tmp_path, capsys):
    assert main(["bench", *argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert f"argument {argv[1]}: must be an integer >= {0 if argv[2] == '-1' else 1}, got '{argv[2]}'" in err, err
    assert "Traceback" not in err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("argv,needle", [
    (["formats", "--accuracy", "--batch", "4"], "--batch has no effect with --accuracy, which times nothing"),
    (["formats", "--accuracy", "--seq", "8", "--quick"], "--seq and --quick have no effect with --accuracy"),
    (["formats", "--quick", "--repeats", "9"], "--repeats has no effect with --quick, which sets batch 4, 3 repeats"),
    (["formats", "--sentences", "10"], "--sentences has no effect without --accuracy"),
    (["inspect_minilm", "--quick", "--sentences", "5"], "--sentences has no effect with --quick, which sets 50"),
    (["planner", "--gpu", "h100"], "--gpu h100 has no effect with --device cpu"),
    (["train_throughput", "--profile", "--rounds", "2"], "--rounds has no effect with --profile"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bench_settings_a_script_would_override_or_not_use_are_refused(argv, needle, tmp_path, capsys):
    """was: ignored without a word (--quick set batch 4 over --batch; --accuracy timed nothing with
    --batch; the speed run read no --sentences; planner's CPU run no --gpu; --profile no --rounds)."""
    assert main(["bench", *argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "r.json").exists()


def test_bench_train_throughput_profile_runs_with_the_cpu_linear_and_adamw_given(monkeypatch):
    """was: --profile returned before --cpu-linear was applied, and profiled the fused AdamW
    whatever --adamw said."""
    import importlib.util
    import sys
    from pathlib import Path

    from headwise.kernels import cpu_linear

    path = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_train_throughput_probe", path)
    tt = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tt)  # (its dataclasses look their module up)
    spec.loader.exec_module(tt)
    seen = []
    monkeypatch.setattr(tt, "profile_pair", lambda *a, adamw="fused", **kw: seen.append(
        (cpu_linear.cpu_linear_choice()["setting"], adamw)))
    before = cpu_linear.cpu_linear_choice()["setting"]
    try:
        assert tt.main(["--profile", "--sizes", "tiny", "--objectives", "clm", "--cpu-linear", "torch",
                        "--adamw", "default"]) == {}
    finally:
        cpu_linear.set_cpu_linear(before)
    assert seen == [("torch", "default")]


# ------------------------------------------------------------------ int8 on the CPU: each token its own
def test_an_int8_decoder_on_the_cpu_stays_causal_and_its_kv_cache_gives_the_full_forwards_tokens():
    """was: quantized::linear_dynamic's one activation scale per tensor made every token's
    output depend on the others: the logits of position 3 moved (by ~0.2) when token 9 changed
    or another sequence joined the batch, and greedy generation with the KV cache (one token
    per forward) drifted from the full forwards' tokens."""
    torch.manual_seed(0)
    from headwise.models import Decoder

    model = quantize(Decoder(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_len=64,
                                         init_std=0.3)).eval(), "int8")
    a = torch.randint(0, 50, (1, 10))
    b = a.clone()
    b[0, 9] = (a[0, 9] + 7) % 50
    with torch.no_grad():
        la, lb = model(a), model(b)
        lc = model(torch.cat([a, torch.randint(0, 50, (1, 10))]))[:1]
    torch.testing.assert_close(la[:, :9], lb[:, :9], rtol=0, atol=0)
    torch.testing.assert_close(la, lc, rtol=0, atol=0)
    ids = torch.randint(0, 50, (3, 5))
    full = ids
    with torch.no_grad():
        for _ in range(12):
            full = torch.cat([full, model(full)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.generate(ids, 12, temperature=0), full)


def test_an_int8_decoder_keeps_its_token_scales_through_save_and_load(tmp_path):
    from headwise.formats import Int8Linear, load_quantized, save_quantized
    from headwise.models import Decoder

    model = quantize(Decoder(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4)), "int8")
    back = load_quantized(save_quantized(model, tmp_path / "d.safetensors"))
    assert all(m.token_scales for m in back.modules() if isinstance(m, Int8Linear))
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), rtol=0, atol=0)


# ------------------------------------------------------------------ Hugging Face import
@pytest.mark.parametrize("dtype,needle", [
    ("bfloat16", "got 'bfloat16' (a str: give torch.bfloat16)"),  # was: "Invalid device string: 'bfloat16'"
    ("fp16", "got 'fp16'"),
    (torch.int64, "got torch.int64"),  # was: load_state_dict's many-line RuntimeError
    (torch.complex64, "got torch.complex64"),  # was: accepted, then "embedding does not support ... complex"
])
def test_from_pretrained_dtype_that_is_not_a_float_dtype_is_refused(tmp_path, dtype, needle):
    from headwise.models import Decoder
    from headwise.models.hf import from_pretrained, save_pretrained

    save_pretrained(Decoder(ModelConfig(vocab_size=60, d_model=24, n_layers=1, n_heads=4)), tmp_path / "m")
    with pytest.raises(TypeError, match="dtype must be None or a floating-point torch.dtype") as e:
        from_pretrained(tmp_path / "m", dtype=dtype)
    assert needle in str(e.value) and "torch.fp16" not in str(e.value)
    assert from_pretrained(tmp_path / "m", dtype=torch.bfloat16).model.lm_head.weight.dtype == torch.bfloat16


# ------------------------------------------------------------------ KV caches
def test_decoder_kv_caches_of_different_lengths_are_refused_not_half_used():
    """was: the new tokens were placed after block 0's cached ones and block 1 attended to
    its own (empty) cache only: logits of a sequence no one asked for, without a word."""
    from headwise.models import Decoder

    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, max_len=64)).eval()
    filled = model.new_kv_caches()
    model(torch.randint(0, 50, (2, 3)), filled)
    with pytest.raises(ValueError, match=r"kv_caches must all hold the same number of tokens .*got \[3, 0\]"):
        model(torch.randint(0, 50, (2, 1)), [filled[0], model.new_kv_caches()[1]])
    with pytest.raises(TypeError, match="kv_caches must hold KVCache objects .* got dict at index 1"):
        model(torch.randint(0, 50, (2, 1)), [filled[0], {}])


# ------------------------------------------------------------------ Hugging Face export
def test_save_pretrained_leaves_a_users_file_of_its_temporary_names_alone(tmp_path):
    """was: overwrite=True wrote the weights to FOLDER/model.safetensors.tmp and the config to
    FOLDER/config.json.tmp, then renamed them away: a user's files of those names were lost."""
    from headwise.models import Decoder
    from headwise.models.hf import from_pretrained, save_pretrained

    folder = tmp_path / "m"
    folder.mkdir()
    mine = {name: f"the user's own {name}" for name in ("model.safetensors.tmp", "config.json.tmp", "notes.txt")}
    for name, text in mine.items():
        (folder / name).write_text(text)
    model = Decoder(ModelConfig(vocab_size=60, d_model=24, n_layers=1, n_heads=4)).eval()
    save_pretrained(model, folder, overwrite=True)
    assert {name: (folder / name).read_text() for name in mine} == mine
    assert sorted(p.name for p in folder.iterdir()) == sorted([*mine, "config.json", "model.safetensors"])
    ids = torch.randint(0, 60, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(folder).model(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("mask,error,needle", [
    (torch.ones(2, 3, dtype=torch.long), TypeError, "must return a bool tensor (True = count the token), got dtype "
                                                    "torch.int64; give mask.bool()"),
    (torch.ones(6, dtype=torch.bool), ValueError, "mask of the output's tokens, shape (2, 3), got (6,)"),
    (torch.ones(2, 2, dtype=torch.bool), ValueError, "shape (2, 3), got (2, 2)"),  # was: an IndexError
], ids=["long", "flat", "short"])
def test_compare_formats_tokens_mask_that_is_not_a_bool_mask_of_the_tokens_is_refused(mask, error, needle):
    """was: an integer 0/1 mask (an attention_mask) was taken as indices, comparing rows 0 and 1
    over and over: the cosine of other tokens than the mask's, without a word."""
    torch.manual_seed(0)
    ref, other = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    with pytest.raises(error) as e:
        compare_formats(ref, other, [torch.randn(2, 3, 4)], layers=[], tokens=lambda _: mask)
    assert needle in str(e.value), str(e.value)


def _strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(word):
        raise ValueError(f"not JSON: {word}")
    return json.loads(text, parse_constant=refuse)


def test_compare_formats_reports_none_not_nan_where_there_is_no_value():
    """was: NaN for the relative change of a metric that is 0 in fp32 and for a layer that
    counted no token, which `headwise eval --format` printed as NaN: not JSON (jq refuses it)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    report = compare_formats(model, model, [torch.randn(2, 3, 4)], layers=["0"],
                             tokens=lambda _: torch.zeros(2, 3, dtype=torch.bool),
                             task=lambda m: {"accuracy": 0.0, "loss": 2.0})
    assert report["task"]["relative"] == {"accuracy": None, "loss": 0.0}
    assert report["output"] == {"cosine": None, "cosine_min": None, "rel_l1": None}
    assert report["min_layer_cosine"] is None and report["max_layer_rel_l1"] is None
    _strict_json(json.dumps(report))


def test_eval_format_prints_json_that_strict_parsers_read(runs, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["eval", str(runs["rtd"]), "--device", "cpu", "--format", "bf16", "--batches", "1"]) == 0
    report = _strict_json(capsys.readouterr().out)
    zero = [k for k, v in report["task"]["fp32"].items() if v == 0]  # (gen_accuracy after 2 steps)
    assert zero and all(report["task"]["relative"][k] is None for k in zero)


@pytest.mark.parametrize("damage,error,needle", [
    ("index_list", ValueError, "model.safetensors.index.json has no weight_map from tensor names to shard files "
                               "(got NoneType)"),  # was: AttributeError 'list' object has no attribute 'values'
    ("index_no_map", ValueError, "has no weight_map"),  # was: KeyError 'weight_map', called config.json's
    ("bin_garbage", ValueError, "pytorch_model.bin is not a PyTorch weights file that torch.load reads safely "
                                "(Unsupported operand"),  # was: pickle's UnpicklingError, a traceback
])
def test_from_pretrained_of_a_damaged_weights_index_or_bin_names_the_file(tmp_path, capsys, damage, error, needle):
    from headwise.models import Decoder
    from headwise.models.hf import from_pretrained, save_pretrained

    folder = tmp_path / "m"
    save_pretrained(Decoder(ModelConfig(vocab_size=60, d_model=24, n_layers=1, n_heads=4)), folder)
    (folder / "model.safetensors").unlink()
    if damage == "index_list":
        (folder / "model.safetensors.index.json").write_text('["model-1.safetensors"]')
    elif damage == "index_no_map":
        (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    else:
        (folder / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(error) as e:
        from_pretrained(folder)
    assert needle in str(e.value), str(e.value)
    text = tmp_path / "t.txt"
    text.write_text("a few words\n")
    line = _refused(["inspect", str(folder), "--text", str(text), "--out", str(tmp_path / "o"), "--device", "cpu"],
                    capsys)
    assert needle.split(" (")[0] in line and "config.json lacks" not in line


# ------------------------------------------------------------------ plan
@pytest.mark.parametrize("argv,needle", [
    (["--preset", "gpt2-small", "--n-kv-heads", "5"],
     "--n-heads 12 (preset gpt2-small's), --head-dim 64 (preset gpt2-small's), --n-kv-heads 5: n_kv_heads (5) "
     "must divide n_heads (12)"),
    (["--preset", "gpt2-small", "--d-model", "1000"],
     "--d-model 1000, --n-heads 12 (preset gpt2-small's): n_heads (12) must divide d_model (1000)"),
])
def test_plan_of_an_impossible_head_layout_names_the_flags_and_where_each_value_came_from(argv, needle, capsys):
    """was: 'n_kv_heads (5) must divide n_heads (12)', naming no flag (and not that 12 was the preset's)."""
    assert needle in _refused(["plan", *argv, "--top", "0"], capsys)


# ------------------------------------------------------------------ sampling
def test_top_k_holds_at_a_huge_temperature_where_denormals_are_flushed():
    """was: at temperature 1.7e308 logits within 0.5 of each other scaled to subnormals, which
    flush to 0 where denormals are flushed (the trainer sets it): all tied with the k-th, so
    top_k=5 drew among all 50 tokens."""
    from headwise.models.decoder import _sample

    was = bool(torch.tensor(1e-310, dtype=torch.float64).mul(1.0) == 0)  # flushing already?
    flushed = torch.set_flush_denormal(True)
    try:
        logits = (torch.arange(50, dtype=torch.float32) * 0.01)[None].repeat(2000, 1)
        drawn = _sample(logits, 1.7e308, 5, torch.Generator().manual_seed(0))
    finally:
        torch.set_flush_denormal(was)
    assert flushed and set(drawn.tolist()) == {45, 46, 47, 48, 49}


def test_greedy_decoding_with_top_k_is_refused_not_ignored():
    from headwise.models import Decoder

    dec = Decoder(ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, max_len=16))
    with pytest.raises(ValueError, match=r"top_k=5 with temperature=0: greedy decoding .* changes nothing"):
        dec.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0, top_k=5)


def test_generate_stops_where_a_document_of_the_corpus_ends(tmp_path, monkeypatch, capsys):
    """was: generation ran past the end-of-text token into the start of another document
    (the decoded text dropped the token itself, so two documents read as one)."""
    monkeypatch.setenv("HEADWISE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": "ab"}) + "\n" for _ in range(600)))
    run = tmp_path / "run"
    assert main(["train", "--objective", "clm", "--corpus", str(tmp_path / "docs.jsonl"), "--out", str(run),
                 "--tokenizer-kind", "char", "--steps", "150", "--warmup", "1", "--lr", "1e-2", "--batch-size", "8",
                 "--block-len", "17", "--model", "n_layers=1,d_model=32,n_heads=2,d_ff=64,max_len=32",
                 "--no-sanity-checks", "--no-report", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "a", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip() == "ab"
