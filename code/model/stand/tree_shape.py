"""STAND's data-driven tree shape: the node set with the most expected accepted tokens for a node budget.

A template node is (parent template node, sibling rank): "the r-th child drawn at that node". From verification we
count, per (depth, rank), how often such a node was verified with its parent accepted and how often it was accepted
itself; a(depth, rank) is that ratio, shrunk toward a prior. A node's chance of lying on the accepted path is the
product of a along its path, so the best tree of N nodes is the N likeliest template nodes (an ancestor-closed set:
a child is never likelier than its parent), found best-first. The shape is rebuilt from the counts every
`rebuild_every` verifications.
"""
from __future__ import annotations

import heapq

import numpy as np

# Prior acceptance by sibling rank (depth-independent) and its weight in verifications: a chain-leaning start that
# the run's own counts take over within a few dozen steps.
PRIOR = (0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.01)
PRIOR_WEIGHT = 4.0


class TreeShape:
    def __init__(self, max_nodes: int = 16, max_depth: int = 8, max_children: int = 4, rebuild_every: int = 8):
        if max_nodes < 1 or max_depth < 1 or max_children < 1:
            raise ValueError("the tree needs at least one node, one level and one child per node")
        self.max_nodes, self.max_depth, self.max_children = max_nodes, max_depth, max_children
        self.rebuild_every = rebuild_every
        prior = np.array([PRIOR[min(r, len(PRIOR) - 1)] for r in range(max_children)])
        self.accepted = np.tile(prior * PRIOR_WEIGHT, (max_depth, 1))
        self.verified = np.full((max_depth, max_children), PRIOR_WEIGHT)
        self.updates = 0
        self.rebuild()

    def rebuild(self) -> None:
        """template: (parent template index or -1, rank, depth) per node, parents first; children[i + 1]: the
        template indices of node i's children (index 0: the root's), in rank order."""
        rate = self.accepted / self.verified
        template, heap = [], [(-rate[0, r], 0, -1, r, 1) for r in range(self.max_children)]
        order = len(heap)
        heapq.heapify(heap)
        while heap and len(template) < self.max_nodes:
            value, _, parent, rank, depth = heapq.heappop(heap)
            template.append((parent, rank, depth))
            if depth < self.max_depth:
                me = len(template) - 1
                for r in range(self.max_children):
                    order += 1
                    heapq.heappush(heap, (value * rate[depth, r], order, me, r, depth + 1))
        # Best-first pops a parent before its children, but siblings of one parent may come out of rank order.
        children: list[list[int]] = [[] for _ in range(len(template) + 1)]
        for i, (parent, _, _) in enumerate(template):
            children[parent + 1].append(i)
        for kids in children:
            kids.sort(key=lambda i: template[i][1])
        self.template, self.children = template, children

    def record(self, parents: list[int], path: list[int]) -> None:
        """A verified draft (parents in the engine's numbering) and its accepted nodes."""
        accepted = set(path)
        depths, ranks, seen = [], [], {}
        for i, p in enumerate(parents):
            depths.append(1 if p < 0 else depths[p] + 1)
            ranks.append(seen.get(p, 0))
            seen[p] = ranks[-1] + 1
            if (p < 0 or p in accepted) and depths[i] <= self.max_depth and ranks[i] < self.max_children:
                self.verified[depths[i] - 1, ranks[i]] += 1
                self.accepted[depths[i] - 1, ranks[i]] += i in accepted
        self.updates += 1
        if self.updates % self.rebuild_every == 0:
            self.rebuild()

    def describe(self) -> str:
        """Children per level of the current template, e.g. '4-3-2-1-1'."""
        levels: dict[int, int] = {}
        for _, _, depth in self.template:
            levels[depth] = levels.get(depth, 0) + 1
        return "-".join(str(levels[d]) for d in sorted(levels))
