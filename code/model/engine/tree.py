"""Draft trees: what every drafter proposes and the engine verifies.

A draft is a flat list of nodes in topological order (a parent always comes before its children).
`parents[i] == -1` means node i hangs off the root, i.e. the last token already emitted. A chain is
the special case parents = [-1, 0, 1, ...].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..errors import UserError


class DraftError(UserError):
    """A drafter produced a tree the engine cannot verify (over the cap, malformed)."""


@dataclass
class DraftTree:
    tokens: list[int]
    parents: list[int]
    # Optional draft distribution q(. | parent context) per node, shape [n, vocab]; None = point masses.
    probs: torch.Tensor | None = None
    source: str = ""
    # Auxiliary nodes: computed in the same forward but never accepted (Lookahead's Jacobi branch).
    # Each sees the past, the root and the aux nodes `aux_mask` allows; `aux_depths` are positions after the root.
    aux_tokens: list[int] = field(default_factory=list)
    aux_depths: list[int] = field(default_factory=list)
    aux_mask: np.ndarray | None = None
    # Filled by `validate`: depth of each node (root children have depth 1).
    depths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        """Nodes the target computes for this draft (the root excluded)."""
        return len(self.tokens) + len(self.aux_tokens)

    @classmethod
    def chain(cls, tokens: list[int], source: str = "") -> "DraftTree":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), source=source)

    @classmethod
    def from_paths(cls, paths: list[list[int]], source: str = "") -> "DraftTree":
        """Merge token paths (each a continuation of the root) into a prefix tree."""
        tokens, parents, index = [], [], {}
        for path in paths:
            parent = -1
            for depth in range(len(path)):
                key = tuple(path[: depth + 1])
                node = index.get(key)
                if node is None:
                    node = index[key] = len(tokens)
                    tokens.append(path[depth])
                    parents.append(parent)
                parent = node
        return cls(tokens, parents, source=source)

    def validate(self, max_nodes: int, vocab_size: int) -> None:
        n = len(self.tokens)
        if len(self.parents) != n:
            raise DraftError(f"draft has {n} tokens but {len(self.parents)} parents")
        if self.size > max_nodes:
            raise DraftError(f"draft of {self.size} nodes exceeds the tree cap of {max_nodes}")
        depths = []
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise DraftError(f"node {i} has parent {p}: parents must come before their children")
            depths.append(1 if p < 0 else depths[p] + 1)
        every = self.tokens + self.aux_tokens
        if every and not (0 <= min(every) and max(every) < vocab_size):
            raise DraftError(f"draft token ids must lie in [0, {vocab_size})")
        m = len(self.aux_tokens)
        if m and (len(self.aux_depths) != m or self.aux_mask is None or self.aux_mask.shape != (m, m)):
            raise DraftError(f"{m} auxiliary nodes need {m} depths and an [{m}, {m}] mask")
        if self.probs is not None and tuple(self.probs.shape[:1]) != (n,):
            raise DraftError(f"draft probs have shape {tuple(self.probs.shape)}, expected [{n}, vocab]")
        self.depths = depths


@lru_cache(maxsize=256)
def _ancestor_matrix(parents: tuple[int, ...]) -> np.ndarray:
    n = len(parents) + 1
    mask = np.zeros((n, n), dtype=bool)
    mask[:, 0] = True
    for i, p in enumerate(parents, start=1):
        if p >= 0:
            mask[i] = mask[p + 1]
        mask[i, i] = True
    return mask


def tree_attention(parents: list[int]) -> np.ndarray:
    """[n+1, n+1] boolean mask over root + nodes: each row sees the root, its ancestors and itself.

    Memoized: static templates (Token Recycling, fixed chains) reuse the same matrix every step.
    """
    return _ancestor_matrix(tuple(parents))


def draft_attention(tree: DraftTree) -> np.ndarray:
    """Visibility among root + tree nodes + auxiliary nodes; the two node groups never see each other."""
    block = tree_attention(tree.parents)
    m = len(tree.aux_tokens)
    if not m:
        return block
    k = len(block)
    full = np.zeros((k + m, k + m), dtype=bool)
    full[:k, :k] = block
    full[k:, 0] = True
    full[k:, k:] = tree.aux_mask
    return full
