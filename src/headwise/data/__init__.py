"""Data: corpus sources, tokenizer training, token blocks on disk.

Text flows ``load_corpus(spec)`` -> ``train_tokenizer`` / ``Tokenizer.load`` ->
``build_blocks`` -> ``TokenBlocks.split("train")`` + ``BlockSampler``::

    corpus = load_corpus("stdlib-docs")
    tok = load_or_train_tokenizer(corpus, "wordpiece", 8192)
    blocks = build_blocks(corpus, tok, block_len=128)
    train, val = blocks.split("train"), blocks.split("val")
    sampler = train.sampler(batch_size=32, seed=0)
    x = train.batch(sampler.batch_indices(step))   # (32, 128) int64
"""

from .blocks import BlockSampler, TokenBlocks, build_blocks, token_dtype
from .cache import default_cache_dir
from .corpus import STDLIB_CODE, STDLIB_DOCS, Corpus, is_builtin_corpus, load_corpus, stdlib_root
from .tokenizer import Tokenizer
from .tokenizer_training import load_or_train_tokenizer, train_tokenizer

__all__ = [
    "Corpus",
    "load_corpus",
    "is_builtin_corpus",
    "stdlib_root",
    "STDLIB_DOCS",
    "STDLIB_CODE",
    "Tokenizer",
    "train_tokenizer",
    "load_or_train_tokenizer",
    "TokenBlocks",
    "BlockSampler",
    "build_blocks",
    "default_cache_dir",
    "token_dtype",
]
