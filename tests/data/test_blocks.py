"""Token blocks: packing layout, dtype, on-disk cache, atomic writes, splits, sampler."""

import os
import pickle

import numpy as np
import pytest
import torch

from headwise.data import (
    BlockSampler,
    Corpus,
    TokenBlocks,
    build_blocks,
    load_corpus,
    token_dtype,
    train_tokenizer,
)
from headwise.data.tokenizer import Tokenizer

# char ids: specials 0..5 ([PAD] [UNK] [CLS] [SEP] [MASK] <|endoftext|>), then a=6 .. e=10
A, B, C, D, E = 6, 7, 8, 9, 10
CLS, SEP, EOS = 2, 3, 5


@pytest.fixture(scope="module")
def chars():
    return train_tokenizer(["abcde"], "char", 100)


def _corpus(*docs):
    return Corpus.from_texts(list(docs), name="toy")


def test_encoder_full_sentence_packing(chars, tmp_path):
    blocks = build_blocks(_corpus("abc", "de", "aab"), chars, block_len=5, cache_dir=tmp_path,
                          val_fraction=0)
    # stream: a b c SEP d e SEP a a b SEP  (11 tokens) -> 3 per block -> 3 blocks
    assert blocks.style == "encoder" and blocks.n_tokens == 11 and len(blocks) == 3
    assert blocks[0].tolist() == [CLS, A, B, C, SEP]
    assert blocks[1].tolist() == [CLS, SEP, D, E, SEP]
    assert blocks[2].tolist() == [CLS, SEP, A, A, SEP]
    assert blocks[0].dtype == np.int64 and blocks[0].shape == (5,)


def test_decoder_packing(chars, tmp_path):
    blocks = build_blocks(_corpus("abc", "de", "aab"), chars, block_len=4, style="decoder",
                          cache_dir=tmp_path, val_fraction=0)
    # stream: a b c EOS d e EOS a a b EOS -> 2 full blocks of 4, tail dropped
    assert len(blocks) == 2
    x = blocks.batch([1, 0])
    assert x.dtype == torch.int64 and x.shape == (2, 4)
    assert x.tolist() == [[D, E, EOS, A], [A, B, C, EOS]]
    assert torch.equal(blocks.batch(torch.tensor([1])), x[:1])
    assert [b.tolist() for b in blocks.iter_batches(3)] == [x.flip(0).tolist()]


def test_bpe_defaults_to_decoder_and_round_trips(tmp_path):
    text = "one head sees the past, two heads see more.\n" * 20
    tok = train_tokenizer([text], "bpe", 300)
    blocks = build_blocks(_corpus(text), tok, block_len=16, cache_dir=tmp_path, val_fraction=0)
    assert blocks.style == "decoder"
    stream = np.concatenate([blocks[i] for i in range(len(blocks))])
    assert text.startswith(tok.decode(stream))


def test_dtype_choice_and_file_size(chars, tmp_path):
    assert token_dtype(8192) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    blocks = build_blocks(_corpus("abcde" * 10), chars, block_len=8, cache_dir=tmp_path)
    assert blocks.dtype == np.uint16
    assert os.path.getsize(blocks.path) == blocks.n_tokens * 2


def test_second_call_reuses_file(chars, tmp_path, monkeypatch):
    corpus = _corpus("abcde" * 20, "edcba" * 20)
    first = build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    assert not first.from_cache
    mtime = os.stat(first.path).st_mtime_ns

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(Tokenizer, "encode_batch", no_tokenising)
    again = build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    other_len = build_blocks(corpus, chars, block_len=6, cache_dir=tmp_path)  # same stream
    assert again.from_cache and other_len.from_cache
    assert again.path == first.path == other_len.path
    assert os.stat(first.path).st_mtime_ns == mtime
    assert torch.equal(again.batch(range(len(again))), first.batch(range(len(first))))
    with pytest.raises(AssertionError, match="tokenised again"):  # new content, new key
        build_blocks(_corpus("abcde" * 21), chars, block_len=8, cache_dir=tmp_path)


def test_killed_write_leaves_nothing_trusted(chars, tmp_path, monkeypatch):
    corpus = Corpus.from_texts(["abcde" * 5] * 600, name="big")  # > one encode group
    real = Tokenizer.encode_batch
    calls = []

    def dies_midway(self, texts, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode_batch", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    assert os.listdir(tmp_path / "blocks") == []  # no partial file, no temp file
    monkeypatch.setattr(Tokenizer, "encode_batch", real)
    blocks = build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    assert not blocks.from_cache and blocks.n_tokens == 600 * 26


def test_truncated_cache_file_is_rebuilt(chars, tmp_path):
    corpus = _corpus("abcde" * 20)
    first = build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    with open(first.path, "r+b") as f:
        f.truncate(10)
    again = build_blocks(corpus, chars, block_len=8, cache_dir=tmp_path)
    assert not again.from_cache and again.n_tokens == first.n_tokens


def test_smaller_than_one_block(chars, tmp_path):
    with pytest.raises(ValueError, match=r"corpus 'toy'.*smaller than one block.*4 tokens.*block_len=8"):
        build_blocks(_corpus("abc"), chars, block_len=8, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="block_len"):
        build_blocks(_corpus("abc"), chars, block_len=2, cache_dir=tmp_path)
    bpe = train_tokenizer(["some text here"] * 3, "bpe", 260)
    with pytest.raises(ValueError, match=r"style='encoder' needs \[SEP\]"):
        build_blocks(_corpus("abc"), bpe, block_len=4, style="encoder", cache_dir=tmp_path)


def test_index_errors(chars, tmp_path):
    blocks = build_blocks(_corpus("abcde" * 4), chars, block_len=7, cache_dir=tmp_path)
    with pytest.raises(IndexError, match="out of range"):
        blocks.batch([0, len(blocks)])
    with pytest.raises(TypeError, match="int"):
        blocks[0.5]


def test_split_deterministic_disjoint_covering(chars, tmp_path):
    corpus = _corpus("abcde" * 200)
    blocks = build_blocks(corpus, chars, block_len=6, cache_dir=tmp_path, val_fraction=0.1)
    n = len(blocks)
    train, val = blocks.split("train"), blocks.split("val")
    assert len(val) == round(0.1 * n) and len(train) + len(val) == n
    assert not set(train.block_ids) & set(val.block_ids)
    again = build_blocks(corpus, chars, block_len=6, cache_dir=tmp_path, val_fraction=0.1)
    assert np.array_equal(again.split("val").block_ids, val.block_ids)
    other = build_blocks(corpus, chars, block_len=6, cache_dir=tmp_path, val_fraction=0.1, seed=1)
    assert not np.array_equal(other.split("val").block_ids, val.block_ids)
    # val is spread over the corpus, not the last blocks
    assert val.block_ids.min() < n // 2 < val.block_ids.max()
    assert torch.equal(val.batch([0]), blocks.batch([int(val.block_ids[0])]))
    tiny = build_blocks(corpus, chars, block_len=6, cache_dir=tmp_path, val_fraction=0.0001)
    assert len(tiny.split("val")) == 1  # a positive fraction never gives an empty val set
    with pytest.raises(ValueError, match="'train' or 'val'"):
        blocks.split("test")


def test_pickle_reopens_file(chars, tmp_path):
    blocks = build_blocks(_corpus("abcde" * 10), chars, block_len=6, cache_dir=tmp_path)
    train = blocks.split("train")
    train.batch([0])  # opens the memmap
    clone = pickle.loads(pickle.dumps(train))
    assert torch.equal(clone.batch(range(len(clone))), train.batch(range(len(train))))
    assert len(pickle.dumps(train)) < 2000  # the path travels, not the tokens


def test_sampler_epochs_and_resume():
    s = BlockSampler(n_blocks=10, batch_size=3, seed=7)
    assert s.steps_per_epoch == 3
    epoch0 = [i for step in range(3) for i in s.batch_indices(step)]
    assert len(set(epoch0)) == 9 and set(epoch0) <= set(range(10))
    epoch1 = [i for step in range(3, 6) for i in s.batch_indices(step)]
    assert epoch1 != epoch0 and s.epoch(5) == 1
    resumed = BlockSampler(10, 3, seed=7)  # a fresh object, as after a restart
    assert [resumed.batch_indices(k) for k in (5, 4, 17)] == [s.batch_indices(k) for k in (5, 4, 17)]
    assert sorted(s.permutation(4).tolist()) == list(range(10))
    assert not np.array_equal(BlockSampler(10, 3, seed=8).permutation(0), s.permutation(0))


def test_sampler_sharding():
    s = BlockSampler(n_blocks=50, batch_size=8, seed=0)
    for step in (0, 5, 6, 13):
        shards = [s.batch_indices(step, rank=r, world_size=4) for r in range(4)]
        assert all(len(x) == 2 for x in shards)
        flat = [i for x in shards for i in x]
        assert len(set(flat)) == 8 and flat == s.batch_indices(step)
    with pytest.raises(ValueError, match="divide batch_size"):
        s.batch_indices(0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        s.batch_indices(0, rank=4, world_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        BlockSampler(4, 5)


def test_view_sampler(chars, tmp_path):
    blocks = build_blocks(_corpus("abcde" * 30), chars, block_len=6, cache_dir=tmp_path)
    train = blocks.split("train")
    sampler = train.sampler(batch_size=4, seed=0)
    x = train.batch(sampler.batch_indices(0))
    assert x.shape == (4, 6) and (x[:, 0] == CLS).all()


def test_tinyshakespeare_char_blocks(shared_data, tmp_path):
    corpus = load_corpus(os.path.join(shared_data, "tinyshakespeare.txt"))
    text = next(iter(corpus))
    tok = train_tokenizer(corpus, "char", 256)
    blocks = build_blocks(corpus, tok, block_len=256, style="decoder", cache_dir=tmp_path)
    assert len(blocks) == (len(text) + 1) // 256 and blocks.dtype == np.uint16
    assert tok.decode(blocks[3]) == text[3 * 256 : 4 * 256]


def test_token_blocks_direct_errors(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(20, dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="style"):
        TokenBlocks(path, dtype="uint16", n_tokens=20, block_len=4, style="bert")
    with pytest.raises(ValueError, match="cls_id"):
        TokenBlocks(path, dtype="uint16", n_tokens=20, block_len=4, style="encoder")
    blocks = TokenBlocks(path, dtype="uint16", n_tokens=20, block_len=4, style="decoder")
    assert len(blocks) == 5 and blocks[4].tolist() == [16, 17, 18, 19]
