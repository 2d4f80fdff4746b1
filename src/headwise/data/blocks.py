"""Token blocks: a corpus tokenised once into a flat file on disk, read as
fixed-length blocks.

Layout. Every document is encoded without specials and followed by a separator,
giving one flat *stream* that is written once as a raw ``uint16`` array (``uint32``
when the largest id does not fit) and memory-mapped afterwards:

* ``style="decoder"`` (GPT-2 style, the default for BPE):
  stream ``doc1 <eos> doc2 <eos> ...``; block ``i`` is
  ``stream[i*L : (i+1)*L]``. The objective shifts inside the block (inputs
  ``block[:-1]``, targets ``block[1:]``).
* ``style="encoder"`` (RoBERTa's "full-sentences" packing, the default for
  WordPiece): stream ``doc1 [SEP] doc2 [SEP] ...``; block ``i`` is
  ``[CLS] + stream[i*(L-2) : (i+1)*(L-2)] + [SEP]``. Blocks cross document
  boundaries, each document boundary is marked by ``[SEP]``, and every block has
  the BERT frame. Nothing is padded.

The trailing partial block is dropped. Because blocks are views of the stream,
the cache key covers only what shapes the stream (corpus content, the
``tokenizer.json`` content, the separator style, the format version), so another
``block_len`` reuses the same file.

The train/validation split is by block index: blocks are ranked by a seeded
64-bit hash of their index and the first ``round(val_fraction * n)`` form the
validation set, deterministic given the seed. :class:`BlockSampler` gives the
training order as a pure function of the step, so a resumed run continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..checks import is_int
from .cache import default_cache_dir
from .corpus import Corpus, load_corpus
from .tokenizer import Tokenizer

__all__ = [
    "TokenBlocks",
    "BlockSampler",
    "build_blocks",
    "token_dtype",
    "STYLES",
]

BlockStyle = Literal["encoder", "decoder"]
STYLES: tuple[str, ...] = ("encoder", "decoder")
_FORMAT_VERSION = 1
# Documents are encoded in groups so the Rust side can parallelise within a group
# while memory stays bounded to one group's ids.
_ENCODE_GROUP = 256

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id (``0 .. vocab_size-1``) fits, else ``uint32``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size={vocab_size} does not fit uint32 token ids")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic): a fixed,
    version-independent hash, so a split never moves with a numpy upgrade."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _M64


def _validation_mask(n_blocks: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean ``(n_blocks,)``: True for validation blocks."""
    mask = np.zeros(n_blocks, dtype=bool)
    n_val = int(round(val_fraction * n_blocks))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val == 0:
        return mask
    if n_val >= n_blocks:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training blocks out of {n_blocks}; "
            "use a smaller val_fraction (0 disables validation) or a larger corpus"
        )
    seed_mix = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    keys = _splitmix64(np.arange(n_blocks, dtype=np.uint64) ^ seed_mix)
    # Stable sort: ties (astronomically unlikely) fall back to index order.
    mask[np.argsort(keys, kind="stable")[:n_val]] = True
    return mask


class TokenBlocks:
    """Fixed-length token blocks over a memory-mapped token stream.

    ``blocks[i]`` is an ``int64`` numpy array of shape ``(block_len,)``;
    ``blocks.batch(idx)`` a ``torch.LongTensor`` of shape ``(len(idx), block_len)``.
    ``split("train")`` / ``split("val")`` return views over a subset of blocks;
    indices of a view are positions within that view.

    Picklable (the file is reopened lazily), so it can cross into DataLoader workers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dtype: np.dtype | str,
        n_tokens: int,
        block_len: int,
        style: str,
        cls_id: int | None = None,
        sep_id: int | None = None,
        name: str = "",
        val_fraction: float = 0.0,
        seed: int = 0,
        indices: np.ndarray | None = None,
        from_cache: bool = False,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if style == "encoder" and (cls_id is None or sep_id is None):
            raise ValueError(
                f"style='encoder' needs cls_id and sep_id, got cls_id={cls_id}, sep_id={sep_id}"
            )
        min_len = 3 if style == "encoder" else 2
        if not is_int(block_len) or block_len < min_len:
            raise ValueError(
                f"block_len must be an int >= {min_len} for style={style!r}, got {block_len!r}"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.n_tokens = int(n_tokens)
        self.block_len = block_len
        self.style = style
        self.cls_id = cls_id
        self.sep_id = sep_id
        self.name = name
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.from_cache = from_cache
        self._stream_per_block = block_len - 2 if style == "encoder" else block_len
        self.n_total_blocks = self.n_tokens // self._stream_per_block
        if self.n_total_blocks == 0:
            raise ValueError(
                f"corpus {name!r} is smaller than one block: {self.n_tokens} tokens, but "
                f"block_len={block_len} needs {self._stream_per_block} stream tokens per "
                f"block (style={style!r}); use a smaller block_len or a larger corpus"
            )
        self._indices = (
            np.arange(self.n_total_blocks, dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )
        self._mm: np.ndarray | None = None

    # -------------------------------------------------------------- file access
    @property
    def tokens(self) -> np.ndarray:
        """The whole token stream, shape ``(n_tokens,)``, memory-mapped read-only."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._mm

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        return state

    # ---------------------------------------------------------------- blocks
    def __len__(self) -> int:
        return len(self._indices)

    @property
    def block_ids(self) -> np.ndarray:
        """Global block indices (into the unsplit blocks) of this view, ``(len(self),)``."""
        return self._indices

    def _global(self, idx: np.ndarray) -> np.ndarray:
        n = len(self._indices)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"block index {int(bad)} out of range for {n} blocks")
        return self._indices[idx]

    def _gather(self, global_ids: np.ndarray) -> np.ndarray:
        """``(B, block_len)`` int64 blocks for global block ids ``(B,)``."""
        per = self._stream_per_block
        starts = global_ids * per
        body = self.tokens[starts[:, None] + np.arange(per)].astype(np.int64)
        if self.style == "decoder":
            return body
        out = np.empty((len(global_ids), self.block_len), dtype=np.int64)
        out[:, 0] = self.cls_id
        out[:, 1:-1] = body
        out[:, -1] = self.sep_id
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"block index must be an int, got {type(i).__name__}; use batch()")
        return self._gather(self._global(np.array([int(i)])))[0]

    def batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Blocks at ``indices`` (positions in this view) as a ``(B, block_len)``
        ``torch.LongTensor``."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return torch.from_numpy(self._gather(self._global(idx)))

    def iter_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every block of this view in order, as ``(B, block_len)`` batches (the last
        one may be smaller); for evaluation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self))))

    # ----------------------------------------------------------------- splits
    def split(self, which: str) -> TokenBlocks:
        """The ``"train"`` or ``"val"`` blocks (of the whole set; deterministic given
        ``seed`` and ``val_fraction``)."""
        if which not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {which!r}")
        val = _validation_mask(self.n_total_blocks, self.val_fraction, self.seed)
        ids = np.flatnonzero(val if which == "val" else ~val).astype(np.int64)
        return self._view(ids)

    def _view(self, ids: np.ndarray) -> TokenBlocks:
        view = object.__new__(TokenBlocks)
        view.__dict__.update(self.__dict__)
        view._indices = ids
        view._mm = self._mm
        return view

    def sampler(self, batch_size: int, seed: int = 0) -> BlockSampler:
        """A :class:`BlockSampler` over this view's blocks."""
        return BlockSampler(len(self), batch_size, seed)

    def __repr__(self) -> str:
        return (
            f"TokenBlocks(name={self.name!r}, blocks={len(self)}, block_len={self.block_len}, "
            f"style={self.style!r}, tokens={self.n_tokens}, dtype={self.dtype.name})"
        )


class BlockSampler:
    """Shuffled epochs over ``n_blocks`` blocks, computed from the step alone.

    Epoch ``e`` visits the blocks in a permutation drawn from ``(seed, e)``; it has
    ``steps_per_epoch = n_blocks // batch_size`` steps, and the ``n_blocks %
    batch_size`` blocks left at its end are skipped that epoch (they come up in
    other epochs). ``batch_indices(step)`` needs no state, so resuming at step ``s``
    is calling it with ``s``. ``batch_size`` is the global batch; with
    ``world_size`` ranks each rank gets a disjoint, contiguous ``batch_size //
    world_size`` slice, and the slices together are the global batch.
    """

    def __init__(self, n_blocks: int, batch_size: int, seed: int = 0) -> None:
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        if batch_size < 1 or batch_size > n_blocks:
            raise ValueError(
                f"batch_size must be in [1, n_blocks={n_blocks}], got {batch_size}; "
                "lower the batch size or use a larger corpus / smaller block_len"
            )
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.n_blocks = n_blocks
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = n_blocks // batch_size
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def epoch(self, step: int) -> int:
        """Epoch that ``step`` falls in."""
        return step // self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """Block order of ``epoch``, ``(n_blocks,)`` int64."""
        if epoch != self._perm_epoch:
            # Memoised for speed only: the result depends on (seed, epoch) alone.
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.seed >> 32, epoch])
            self._perm = rng.permutation(self.n_blocks).astype(np.int64)
            self._perm_epoch = epoch
        return self._perm

    def batch_indices(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Block indices of ``step`` for ``rank`` of ``world_size``: a list of
        ``batch_size // world_size`` ints."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if world_size < 1 or self.batch_size % world_size:
            raise ValueError(
                f"world_size must be >= 1 and divide batch_size={self.batch_size}, "
                f"got {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        epoch, j = divmod(step, self.steps_per_epoch)
        start = j * self.batch_size
        local = self.batch_size // world_size
        lo = start + rank * local
        return self.permutation(epoch)[lo : lo + local].tolist()


# ---------------------------------------------------------------------- building


def _default_style(tokenizer: Tokenizer) -> str:
    return "decoder" if tokenizer.kind == "bpe" else "encoder"


def _separator(tokenizer: Tokenizer, style: str) -> int:
    sep = tokenizer.sep_id if style == "encoder" else tokenizer.eos_id
    if sep is None:
        need = "[SEP]" if style == "encoder" else "an end-of-text token (<|endoftext|>)"
        raise ValueError(
            f"style={style!r} needs {need}, which the {tokenizer.kind} tokenizer lacks"
        )
    if style == "encoder" and tokenizer.cls_id is None:
        raise ValueError(f"style='encoder' needs [CLS], which the {tokenizer.kind} tokenizer lacks")
    return sep


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name or name)[:40] or "corpus"


def _tokenize_to_file(
    corpus: Corpus, tokenizer: Tokenizer, separator: int, dtype: np.dtype, path: Path
) -> int:
    """Write the stream to ``path`` atomically; returns its token count."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            group: list[str] = []

            def flush() -> int:
                written = 0
                for ids in tokenizer.encode_batch(group):
                    ids.append(separator)
                    np.asarray(ids, dtype=dtype).tofile(f)
                    written += len(ids)
                group.clear()
                return written

            for doc in corpus.documents():
                group.append(doc)
                if len(group) >= _ENCODE_GROUP:
                    n += flush()
            if group:
                n += flush()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A killed or failed run leaves nothing that a later run could trust.
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def _write_json_atomic(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def build_blocks(
    corpus: Corpus | str | os.PathLike[str],
    tokenizer: Tokenizer,
    block_len: int,
    *,
    style: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.01,
    seed: int = 0,
) -> TokenBlocks:
    """Tokenise ``corpus`` into a cached token stream and view it as blocks.

    Args:
        corpus: a :class:`Corpus` or a spec for :func:`load_corpus`.
        tokenizer: the :class:`Tokenizer` whose ids are stored.
        block_len: tokens per block ``L``; blocks are ``(L,)``.
        style: ``"encoder"`` (``[CLS] ... [SEP]`` frames, ``[SEP]`` between
            documents) or ``"decoder"`` (``<|endoftext|>`` between documents);
            defaults to ``"decoder"`` for BPE and ``"encoder"`` otherwise.
        cache_dir: where ``blocks/<name>-<key>.bin`` (+ ``.json``) live; defaults to
            :func:`default_cache_dir`. An existing, complete file is reused without
            tokenising.
        val_fraction, seed: the deterministic train/validation split used by
            :meth:`TokenBlocks.split`.

    Returns the :class:`TokenBlocks` over all blocks; ``.split("train")`` and
    ``.split("val")`` give the two parts. Raises ``ValueError`` when the corpus is
    smaller than one block.
    """
    corpus = load_corpus(corpus)
    style = style if style is not None else _default_style(tokenizer)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    min_len = 3 if style == "encoder" else 2
    if not is_int(block_len) or block_len < min_len:
        raise ValueError(
            f"block_len must be an int >= {min_len} for style={style!r}, got {block_len!r}"
        )
    separator = _separator(tokenizer, style)
    dtype = token_dtype(tokenizer.vocab_size)

    key_src = json.dumps(
        {
            "format": _FORMAT_VERSION,
            "corpus": corpus.content_hash,
            "tokenizer": tokenizer.fingerprint,
            "style": style,
            "separator": separator,
            "dtype": dtype.name,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / "blocks"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe_name(corpus.name)}-{key}"
    bin_path, meta_path = folder / f"{stem}.bin", folder / f"{stem}.json"

    meta = _read_meta(meta_path, bin_path, dtype)
    from_cache = meta is not None
    if meta is None:
        t0 = time.perf_counter()
        n_tokens = _tokenize_to_file(corpus, tokenizer, separator, dtype, bin_path)
        meta = {
            "format": _FORMAT_VERSION,
            "corpus": corpus.name,
            "corpus_hash": corpus.content_hash,
            "tokenizer_hash": tokenizer.fingerprint,
            "style": style,
            "dtype": dtype.name,
            "n_tokens": n_tokens,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        # Written after the .bin is in place: a meta file vouches for a whole stream.
        _write_json_atomic(meta_path, meta)

    return TokenBlocks(
        bin_path,
        dtype=dtype,
        n_tokens=int(meta["n_tokens"]),
        block_len=block_len,
        style=style,
        cls_id=tokenizer.cls_id,
        sep_id=tokenizer.sep_id,
        name=corpus.name,
        val_fraction=val_fraction,
        seed=seed,
        from_cache=from_cache,
    )


def _read_meta(meta_path: Path, bin_path: Path, dtype: np.dtype) -> dict | None:
    """The cache entry's metadata when the entry is complete and consistent, else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        size = bin_path.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("format") != _FORMAT_VERSION or meta.get("dtype") != dtype.name:
        return None
    if size != int(meta.get("n_tokens", -1)) * dtype.itemsize:
        return None
    return meta
