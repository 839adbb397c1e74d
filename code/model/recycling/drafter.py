"""Token Recycling: reuse the target's own top-k candidates as a next-token table.

Every verification step computes the target's logits at the root and at every draft node anyway.
Their top-8 token ids are "recycled" into an adjacency matrix `successors[token] = top-8 tokens the
target ranked highest right after `token`` (the most recent context it was seen in wins). A draft
is the static template tree expanded from the last emitted token through that matrix.

State: a [vocab, 8] int32 numpy matrix on the CPU (152064 x 8 x 4 B = 4.9 MB) plus a [vocab] bool
"row filled" mask. The seed allocates a torch.zeros((vocab, 8), long) matrix once per run and never
clears it between questions, i.e. all-zeros means "unknown" and the state is global; this drafter
keeps that default scope ("global") and the zeros, but tracks filled rows explicitly.

Cold start: while the root's row has never been filled, `propose` returns None (a plain
autoregressive step, which fills that row). The seed instead verifies the full 80-node tree built
from the zero rows (mostly token 0) at such steps; `draft_unknown_root=True` restores that, at the
cost of an 81-token forward that almost never accepts anything. Deeper rows that are still unknown
are expanded from zeros as in the seed, so the tree shape stays static.
"""
from __future__ import annotations

import numpy as np

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree
from .tree_template import TEMPLATES, level_spans, template_parents

TOPK = 8


class TokenRecyclingDrafter(Drafter):
    name = "recycling"
    default_scope = "global"
    wants_topk = TOPK
    memory_attributes = ("successors", "known")

    def __init__(self, vocab_size: int, tree_version: str = "2.2.2", draft_unknown_root: bool = False):
        if tree_version not in TEMPLATES:
            raise ValueError(f"unknown tree template {tree_version!r}; known: {sorted(TEMPLATES)}")
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        paths = TEMPLATES[tree_version]
        if max(max(p) for p in paths) >= TOPK:
            raise ValueError(f"template {tree_version} uses child ranks beyond the top-{TOPK}")
        self.vocab_size = vocab_size
        self.tree_version = tree_version
        self.draft_unknown_root = draft_unknown_root
        self.template_size = len(paths)
        self._parents = template_parents(paths)
        # Per level: node range, slots of the parents in the [root] + nodes array, child ranks.
        parent_slots = np.array(self._parents, dtype=np.int64) + 1
        ranks = np.array([p[-1] for p in paths], dtype=np.int64)
        self._levels = [(start, end, parent_slots[start:end], ranks[start:end])
                        for start, end in level_spans(paths)]
        self.successors = np.zeros((vocab_size, TOPK), dtype=np.int32)
        self.known = np.zeros(vocab_size, dtype=bool)

    def reset(self) -> None:
        self.successors.fill(0)
        self.known.fill(False)

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        root = tokens[-1]
        size = min(self.template_size, max_nodes)
        if size <= 0 or not (self.draft_unknown_root or self.known[root]):
            return None
        slots = np.empty(size + 1, dtype=np.int64)   # slot 0: root, slot i + 1: template node i
        slots[0] = root
        flat = self.successors.reshape(-1)   # a view: row t, rank r lives at t * TOPK + r
        for start, end, parent_slots, ranks in self._levels:
            if start >= size:
                break
            count = min(end, size) - start
            slots[start + 1: start + 1 + count] = flat[slots[parent_slots[:count]] * TOPK + ranks[:count]]
        return DraftTree(slots[1:].tolist(), self._parents[:size], source="recycling")

    def observe(self, feedback: StepFeedback) -> None:
        if feedback.topk is None or not feedback.input_tokens:
            return   # forced tokens: the target produced no candidates
        rows = np.asarray(feedback.input_tokens, dtype=np.int64)
        # One scatter for all positions; a token fed twice keeps one of its rows (order unspecified, as in the seed).
        self.successors[rows] = feedback.topk[:, :TOPK].cpu().numpy()
        self.known[rows] = True

    def max_draft_nodes(self) -> int:
        return self.template_size

    def parameters(self) -> dict:
        return {"tree_version": self.tree_version, "tree_nodes": self.template_size, "topk": TOPK,
                "draft_unknown_root": self.draft_unknown_root}

    def matrix_bytes(self) -> int:
        return self.successors.nbytes
