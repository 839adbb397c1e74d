"""REST drafter: retrieve the continuations of the context's longest suffix, keep the most frequent trie nodes.

Per step, following REST's DraftRetriever:
  * the longest suffix of the context (root token included), between min_suffix and max_suffix
    tokens long, that occurs in the datastore; no such suffix -> no draft;
  * the max_continuation tokens after each of up to max_occurrences of its occurrences (cut at the
    document separator) are merged into a trie whose nodes count the continuations through them;
  * the num_draft nodes with the highest counts are the draft (ties: shallower first). A child never
    counts more than its parent, so this top set always contains the parents of its nodes; it is
    what greedy best-first growth from the root by count gives.
Nodes are listed breadth-first with siblings by count, so following first children from the root
walks the most frequent continuation.
"""
from __future__ import annotations

import numpy as np

from ..engine.drafter import Drafter
from ..engine.tree import DraftTree
from ..errors import UserError
from .datastore import Datastore


def sorted_rows(rows: np.ndarray) -> np.ndarray:
    """The rows in lexicographic order (-1 first). Several tokens are packed into each int64 sort key:
    np.lexsort costs about the same per key whatever the key holds."""
    shifted = rows + 1
    bits = max(1, int(shifted.max()).bit_length())
    width = max(1, 63 // bits)
    keys = []
    for start in range(0, rows.shape[1], width):
        block = shifted[:, start:start + width]
        weights = np.left_shift(1, bits * np.arange(block.shape[1] - 1, -1, -1, dtype=np.int64))
        keys.append(block @ weights)
    order = keys[0].argsort(kind="stable") if len(keys) == 1 else np.lexsort(keys[::-1])
    return rows[order]


def trie_nodes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The trie of the continuations `rows` ([m, k], -1 padded): (tokens, parents, counts, depths) per
    node, nodes numbered depth by depth. Padding yields nodes with token -1, which callers drop."""
    cols = np.ascontiguousarray(sorted_rows(rows).T)   # [depth, row]: each trie node is a run of rows
    differs = np.empty(cols.shape, dtype=bool)
    differs[:, 0] = True
    differs[:, 1:] = cols[:, 1:] != cols[:, :-1]
    opens = np.logical_or.accumulate(differs, axis=0)     # row r starts a new node at depth d
    # Nodes numbered depth by depth: every depth's first row opens a node, so a running count does it.
    node_of = (np.cumsum(opens.ravel(), dtype=np.int32) - 1).reshape(opens.shape)
    depths, first_rows = np.divmod(np.flatnonzero(opens), opens.shape[1])   # one entry per node, in order
    tokens = cols[depths, first_rows]
    parents = np.where(depths > 0, node_of[np.maximum(depths - 1, 0), first_rows], -1)
    counts = np.bincount(node_of.ravel(), minlength=len(tokens))
    return tokens, parents, counts, depths


def top_nodes_tree(rows: np.ndarray, budget: int, source: str = "rest") -> DraftTree | None:
    """The `budget` most frequent trie nodes of the continuations, as a draft tree."""
    rows = rows[rows[:, 0] >= 0]
    if not len(rows) or budget < 1:
        return None
    tokens, parents, counts, depths = trie_nodes(rows)
    kept = np.flatnonzero(tokens >= 0)
    if len(kept) > budget:
        kept = kept[np.lexsort((depths[kept], -counts[kept]))[:budget]]
    kept = kept[np.argsort(-counts[kept], kind="stable")]   # most frequent first: sibling order
    # Breadth-first, in Python on plain ints: at most `budget` nodes.
    node_token = dict(zip(kept.tolist(), tokens[kept].tolist()))
    children: dict[int, list[int]] = {}
    for node, parent in zip(kept.tolist(), parents[kept].tolist()):
        children.setdefault(parent, []).append(node)
    out_tokens, out_parents, position = [], [], {-1: -1}
    frontier = [-1]
    for node in frontier:   # grows while it is walked
        for child in children.get(node, ()):
            position[child] = len(out_tokens)
            out_tokens.append(node_token[child])
            out_parents.append(position[node])
            frontier.append(child)
    return DraftTree(out_tokens, out_parents, source=source)


class RestDrafter(Drafter):
    name = "rest"
    default_scope = "sequence"   # the datastore is static: nothing is learned
    shared_attributes = ("datastore",)

    def __init__(self, datastore: Datastore, num_draft: int = 64, max_suffix: int = 16, min_suffix: int = 2,
                 max_continuation: int = 10, max_occurrences: int = 5000):
        if num_draft < 1 or max_continuation < 1 or max_occurrences < 1:
            raise UserError("num_draft, max_continuation and max_occurrences must be positive integers")
        if not 1 <= min_suffix <= max_suffix:
            raise UserError(f"need 1 <= min_suffix <= max_suffix, got {min_suffix} and {max_suffix}")
        self.datastore = datastore
        self.num_draft = num_draft
        self.max_suffix = max_suffix
        self.min_suffix = min_suffix
        self.max_continuation = max_continuation
        self.max_occurrences = max_occurrences

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        found = self.datastore.match(tokens, self.max_suffix, self.min_suffix)
        if not found.length:
            return None
        rows = self.datastore.continuations(found, self.max_occurrences, self.max_continuation)
        return top_nodes_tree(rows, min(self.num_draft, max_nodes))

    def parameters(self) -> dict:
        return {"num_draft": self.num_draft, "max_suffix": self.max_suffix, "min_suffix": self.min_suffix,
                "max_continuation": self.max_continuation, "max_occurrences": self.max_occurrences,
                "datastore_path": self.datastore.path, "datastore_tokens": len(self.datastore)}
