"""Does a head track syntax? The probe of Clark et al. (2019), section 4.1.

Each head is used as a parser that needs no training: for a word, its prediction is
the word it attends to most (argmax of its word-level attention row, over the
sentence's real words; special tokens are never candidates, and the word itself is a
candidate unless ``exclude_self``). For every dependency relation R and every head we
score both directions:

* ``dep->head``: the dependent attends most to its syntactic head;
* ``head->dep``: the head attends most to that dependent.

Beside each relation stands the best **fixed-offset baseline**: always predict the
word at relative offset ``o`` from the dependent (``det`` -> +1: the determiner's head
is usually the next word); its accuracy is the share of R's instances whose head
sits at the most common offset (the same for the reverse direction with ``-o``).
Root words (no head word) are not scored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .conllu import Sentence

__all__ = ["DIRECTIONS", "SyntaxProbe", "SyntaxAccumulator", "probe_syntax", "scored_relations"]

#: index 0 = the dependent attends to its head, 1 = the head attends to the dependent.
DIRECTIONS: tuple[str, ...] = ("dep->head", "head->dep")


@dataclass
class SyntaxProbe:
    """Probe results over ``R`` relations for ``L x H`` heads.

    Attributes:
        relations: relation names ``(R,)``.
        counts: ``(R,)`` scored instances of each relation.
        accuracy: ``(2, L, H, R)`` float64, per direction (see :data:`DIRECTIONS`);
            NaN for a relation with no instance.
        baseline_offset: ``(R,)`` best fixed offset from the dependent to its head
            (None without instances).
        baseline_accuracy: ``(R,)`` its accuracy.
    """

    relations: list[str]
    counts: Tensor
    accuracy: Tensor
    baseline_offset: list[int | None]
    baseline_accuracy: Tensor

    def best_accuracy(self) -> tuple[Tensor, Tensor]:
        """``(accuracy (L, H, R), direction (L, H, R))``: each head's better direction."""
        acc = torch.nan_to_num(self.accuracy, nan=-1.0)
        best, direction = acc.max(0)
        return torch.where(best < 0, torch.full_like(best, float("nan")), best), direction

    def margin(self) -> Tensor:
        """``(L, H, R)``: each head's better-direction accuracy minus the relation's
        offset-baseline accuracy (NaN where a relation has no instance)."""
        best, _ = self.best_accuracy()
        return best - self.baseline_accuracy[None, None, :]

    def best(self, min_count: int = 1) -> list[dict[str, Any]]:
        """One row per relation with at least ``min_count`` instances, most frequent
        first: ``{"relation", "count", "layer", "head", "direction", "accuracy",
        "baseline_offset", "baseline_accuracy"}`` for the best head and direction."""
        rows = []
        _, n_layers, n_heads, _ = self.accuracy.shape
        for r in sorted(range(len(self.relations)), key=lambda r: (-int(self.counts[r]), self.relations[r])):
            if int(self.counts[r]) < max(min_count, 1):
                continue
            flat = torch.nan_to_num(self.accuracy[..., r], nan=-1.0).reshape(-1)
            i = int(flat.argmax())
            d, rest = divmod(i, n_layers * n_heads)
            layer, head = divmod(rest, n_heads)
            rows.append(
                {
                    "relation": self.relations[r],
                    "count": int(self.counts[r]),
                    "layer": layer,
                    "head": head,
                    "direction": DIRECTIONS[d],
                    "accuracy": float(flat[i]),
                    "baseline_offset": self.baseline_offset[r],
                    "baseline_accuracy": float(self.baseline_accuracy[r]),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: the best-head table and the full accuracies
        (``accuracy[direction][relation]`` = ``(L, H)`` nested lists)."""
        return {
            "directions": list(DIRECTIONS),
            "relations": list(self.relations),
            "counts": [int(c) for c in self.counts],
            "baseline_offset": list(self.baseline_offset),
            "baseline_accuracy": [_num(x) for x in self.baseline_accuracy.tolist()],
            "best": self.best(),
            "accuracy": {
                d: {rel: _nan_to_none(self.accuracy[k, :, :, r].tolist()) for r, rel in enumerate(self.relations)}
                for k, d in enumerate(DIRECTIONS)
            },
        }


def _num(x: float) -> float | None:
    return None if x != x else x


def _nan_to_none(rows: list[list[float]]) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in rows]


def scored_relations(relations: Iterable[Sequence[str]], heads: Iterable[Sequence[int]]) -> list[str]:
    """The relations the probe scores, sorted, given each sentence's per-word relations
    and head indices: those of words that have a head word (the root's ``root`` never is)."""
    return sorted({r for rs, hs in zip(relations, heads, strict=True) for r, h in zip(rs, hs, strict=True) if h >= 0})


class SyntaxAccumulator:
    """Accumulates :class:`SyntaxProbe` counts over batches of word-level maps.

    Args:
        relations: every relation name that can occur (others are ignored).
        n_layers, n_heads: the maps' ``L`` and ``H``.
        exclude_self: never predict the word itself.
    """

    def __init__(self, relations: Sequence[str], n_layers: int, n_heads: int, *, exclude_self: bool = False):
        self.relations = list(dict.fromkeys(relations))
        self.rel_index = {r: i for i, r in enumerate(self.relations)}
        self.exclude_self = exclude_self
        n_rel = len(self.relations)
        self._correct = torch.zeros(2, n_rel, n_layers, n_heads, dtype=torch.float64)
        self._counts = torch.zeros(n_rel, dtype=torch.long)
        self._offsets: list[Counter] = [Counter() for _ in range(n_rel)]
        self._shape = (n_layers, n_heads)

    def relation_ids(self, relations: Sequence[str]) -> Tensor:
        """``(len(relations),)`` long: each relation's index, -1 (skipped) for one not scored."""
        return torch.tensor([self.rel_index.get(r, -1) for r in relations], dtype=torch.long)

    @torch.no_grad()
    def update(self, word_maps: Tensor, word_valid: Tensor, heads: Tensor, rel_ids: Tensor) -> None:
        """Add a batch.

        Args:
            word_maps: ``(B, L, H, W, W)`` word-level attention (rows attend to columns).
            word_valid: ``(B, W)`` bool, True for real words (False: padding, or a word
                that got no pieces).
            heads: ``(B, W)`` long, 0-based index of each word's head, -1 for the
                root and padding.
            rel_ids: ``(B, W)`` long, index into ``relations``, -1 to skip.
        """
        if not isinstance(word_maps, Tensor) or word_maps.dim() != 5:
            raise ValueError(f"word_maps must be (B, L, H, W, W), got {tuple(getattr(word_maps, 'shape', ()))}")
        b, n_layers, n_heads, w, _ = word_maps.shape
        if (n_layers, n_heads) != self._shape:
            raise ValueError(f"word_maps have (L, H) = {(n_layers, n_heads)}, the accumulator {self._shape}")
        for name, t in (("word_valid", word_valid), ("heads", heads), ("rel_ids", rel_ids)):
            if tuple(t.shape) != (b, w):
                raise ValueError(f"{name} must have shape (B, W) = {(b, w)}, got {tuple(t.shape)}")
        dev = word_maps.device
        word_valid, heads, rel_ids = word_valid.to(dev), heads.to(dev), rel_ids.to(dev)
        keys_ok = word_valid[:, None, None, None, :].expand(b, 1, 1, w, w)
        if self.exclude_self:
            keys_ok = keys_ok & ~torch.eye(w, dtype=torch.bool, device=dev)
        scores = word_maps.float().masked_fill(~keys_ok, float("-inf"))
        pred = scores.argmax(-1)  # (B, L, H, W)

        safe_heads = heads.clamp(min=0)
        head_ok = torch.gather(word_valid, 1, safe_heads) & (heads >= 0)
        inst = word_valid & head_ok & (rel_ids >= 0)
        bi, di = inst.nonzero(as_tuple=True)
        if bi.numel() == 0:
            return
        hi, ri = heads[bi, di], rel_ids[bi, di]
        # pred[b, :, :, d] for each instance -> (N, L, H)
        dep_to_head = (pred[bi, :, :, di] == hi[:, None, None]).double()
        head_to_dep = (pred[bi, :, :, hi] == di[:, None, None]).double()
        ri_cpu = ri.cpu()
        self._correct[0].index_add_(0, ri_cpu, dep_to_head.cpu())
        self._correct[1].index_add_(0, ri_cpu, head_to_dep.cpu())
        self._counts += torch.bincount(ri_cpu, minlength=len(self.relations))
        for r, off in zip(ri_cpu.tolist(), (hi - di).tolist(), strict=True):
            self._offsets[r][off] += 1

    def result(self) -> SyntaxProbe:
        counts = self._counts.clone()
        denom = torch.where(counts > 0, counts.double(), torch.full_like(counts.double(), float("nan")))
        acc = (self._correct / denom[None, :, None, None]).permute(0, 2, 3, 1).contiguous()
        offsets: list[int | None] = []
        base_acc = torch.full((len(self.relations),), float("nan"), dtype=torch.float64)
        for r, c in enumerate(self._offsets):
            if not c:
                offsets.append(None)
                continue
            # most frequent offset; ties go to the nearer, then the positive one
            off, n = max(c.items(), key=lambda kv: (kv[1], -abs(kv[0]), kv[0]))
            offsets.append(off)
            base_acc[r] = n / int(counts[r])
        return SyntaxProbe(self.relations, counts, acc, offsets, base_acc)


def probe_syntax(
    word_maps: Sequence[Tensor],
    sentences: Sequence[Sentence],
    *,
    base_relations: bool = True,
    exclude_self: bool = False,
) -> SyntaxProbe:
    """The probe over ``sentences`` given each sentence's word-level maps
    ``(L, H, W, W)`` over exactly its ``W`` words (specials removed), in the order of
    ``sentence.tokens``. ``base_relations`` tabulates ``nmod`` rather than
    ``nmod:poss``."""
    if len(word_maps) != len(sentences):
        raise ValueError(f"got {len(word_maps)} word_maps for {len(sentences)} sentences; need one per sentence")
    if not sentences:
        raise ValueError("sentences is empty")
    n_layers, n_heads = word_maps[0].shape[:2]
    relations = [s.relations(base_relations) for s in sentences]
    acc = SyntaxAccumulator(scored_relations(relations, (s.heads for s in sentences)), n_layers, n_heads,
                            exclude_self=exclude_self)
    for i, (m, s, rels) in enumerate(zip(word_maps, sentences, relations, strict=True)):
        if m.dim() != 4 or m.shape[-1] != len(s) or m.shape[-2] != len(s):
            raise ValueError(
                f"word_maps[{i}] must be (L, H, W, W) with W = {len(s)} words, got {tuple(m.shape)}"
            )
        w = len(s)
        acc.update(
            m[None],
            torch.ones(1, w, dtype=torch.bool),
            torch.tensor([s.heads]),
            acc.relation_ids(rels)[None],
        )
    return acc.result()
