"""bench/shakespeare.py's scoring: the split, the 64-character windows, the loss of
models whose loss is known, and the nanoGPT data it writes."""

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_shakespeare", ROOT / "bench" / "shakespeare.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_split_is_nanogpts_first_90_percent():
    text = "abcdefghij" * 7  # 70 characters
    train, val = bench.split_text(text)
    assert (len(train), len(val)) == (63, 7) and train + val == text


def test_windows_are_non_overlapping_and_score_every_token_once():
    ids = np.arange(200)
    x, y = bench.windows(ids, 64)
    assert x.shape == y.shape == (3, 64)  # (200 - 1) // 64
    for k in range(3):
        assert x[k].tolist() == list(range(64 * k, 64 * k + 64))
        assert y[k].tolist() == list(range(64 * k + 1, 64 * k + 65))
    assert y.flatten().tolist() == list(range(1, 193))  # each target once, in order
    assert bench.windows(np.arange(65), 64)[0].shape == (1, 64)  # 64 inputs + 1 target suffice
    with pytest.raises(ValueError, match="no window"):
        bench.windows(np.arange(64), 64)


def test_loss_of_known_models():
    vocab = 7
    ids = np.random.default_rng(0).integers(0, vocab, 1000)
    # a uniform model: ln V per token
    uniform = bench.window_loss(lambda x: torch.zeros(*x.shape, vocab), ids, batch_size=5)
    assert uniform == pytest.approx(math.log(vocab), rel=1e-6)
    # a model that puts probability p on the true next token (it is told the targets)
    p = 0.6
    _, y = bench.windows(ids)
    targets = iter(y.split(3))

    def told(x):
        t = next(targets)
        logits = torch.full((*x.shape, vocab), math.log((1 - p) / (vocab - 1)))
        return logits.scatter(-1, t[..., None], math.log(p))

    assert bench.window_loss(told, ids, batch_size=3) == pytest.approx(-math.log(p), rel=1e-5)


def test_loss_of_a_decoder_is_its_clm_loss_on_overlapping_blocks():
    # window k is the CLM block ids[64k : 64k + 65] (64 inputs, 64 targets); the batch
    # size of the scoring does not change the number
    from headwise.models import Decoder, get_preset
    from headwise.objectives import CausalLM

    torch.manual_seed(0)
    model = Decoder(get_preset("shakespeare-char", vocab_size=11, n_layers=1, d_model=32, d_ff=64)).eval()
    ids = np.random.default_rng(2).integers(0, 11, 64 * 5 + 7)
    blocks = torch.stack([torch.as_tensor(ids[64 * k : 64 * k + 65]) for k in range(5)])
    with torch.no_grad():
        expected = CausalLM(model)(blocks).loss.item()
    assert bench.window_loss(model, ids, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert bench.window_loss(model, ids, batch_size=1) == pytest.approx(expected, rel=1e-5)


def test_nanogpt_data_written_like_its_prepare(tmp_path):
    src = tmp_path / "nanoGPT"
    (src / "config").mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py"):
        (src / name).write_text("# stub\n")
    text = "To be, or not to be:\nthat is the question.\n" * 5
    dst = tmp_path / "copy"
    dst.mkdir()
    bench.prepare_nanogpt(src, dst, text)
    data = dst / "data" / "shakespeare_char"
    meta = pickle.loads((data / "meta.pkl").read_bytes())
    itos = meta["itos"]
    assert meta["vocab_size"] == len(set(text)) and sorted(itos.values()) == sorted(set(text))
    train = np.fromfile(data / "train.bin", dtype=np.uint16)
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    assert "".join(itos[int(i)] for i in train) + "".join(itos[int(i)] for i in val) == text
    assert len(train) == int(len(text) * 0.9)
    assert sorted(p.name for p in src.iterdir()) == ["config", "configurator.py", "model.py", "train.py"]


def test_nanogpt_iterations_replace_max_and_decay_iters():
    assert bench.nanogpt_args(2000) == bench.NANOGPT_ARGS
    args = bench.nanogpt_args(500)
    assert "--max_iters=500" in args and "--lr_decay_iters=500" in args
    assert not any(a in args for a in ("--max_iters=2000", "--lr_decay_iters=2000"))


def test_missing_data_skips(tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "r.json")]) == 0
    assert "SKIP" in capsys.readouterr().out and not (tmp_path / "r.json").exists()
