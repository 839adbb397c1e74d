"""Static draft-tree templates for Token Recycling.

A template node is a path of child ranks from the root: [i0, i1, ..., id] is the i0-th most likely
successor of the root, then the i1-th most likely successor of that token, and so on. Paths are
listed level by level and every prefix of a path appears before it, so the list is already in
topological order and its first m entries always form a valid tree.
"""
from __future__ import annotations

# Version "2.2.2" of the Token Recycling paper / seed: 80 nodes, 8/21/25/15/8/3 per level.
TEMPLATE_2_2_2: list[list[int]] = [
    # depth 1
    [0], [1], [2], [3], [4], [5], [6], [7],
    # depth 2
    [0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [0, 6], [0, 7],
    [1, 0], [1, 1], [1, 2], [1, 3],
    [2, 0], [2, 1], [2, 2],
    [3, 0], [3, 1],
    [4, 0], [5, 0], [6, 0], [7, 0],
    # depth 3
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [0, 0, 5], [0, 0, 6], [0, 0, 7],
    [0, 1, 0], [0, 1, 1], [0, 1, 2],
    [0, 2, 0], [0, 2, 1],
    [0, 3, 0], [0, 4, 0], [0, 5, 0], [0, 6, 0], [0, 7, 0],
    [1, 0, 0], [1, 0, 1], [1, 1, 0],
    [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0],
    # depth 4
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 4],
    [0, 0, 1, 0], [0, 0, 1, 1],
    [0, 0, 2, 0], [0, 0, 3, 0], [0, 0, 4, 0],
    [0, 1, 0, 0], [0, 2, 0, 0],
    [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0],
    # depth 5
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2],
    [0, 0, 0, 1, 0], [0, 0, 0, 2, 0],
    [0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 0, 0, 0, 0],
    # depth 6
    [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0],
]

TEMPLATES: dict[str, list[list[int]]] = {"2.2.2": TEMPLATE_2_2_2}


def template_parents(paths: list[list[int]]) -> list[int]:
    """Parent node index of every template node (-1: hangs off the root)."""
    position = {}
    parents = []
    for i, path in enumerate(paths):
        key = tuple(path)
        if not path or key in position:
            raise ValueError(f"template node {i} ({path}) is empty or repeated")
        if len(path) == 1:
            parents.append(-1)
        else:
            parent = position.get(key[:-1])
            if parent is None:
                raise ValueError(f"template node {i} ({path}) comes before its parent")
            parents.append(parent)
        position[key] = i
    return parents


def level_spans(paths: list[list[int]]) -> list[tuple[int, int]]:
    """[start, end) node ranges of each depth; requires the paths to be sorted by depth."""
    spans, start = [], 0
    for i in range(1, len(paths) + 1):
        if i == len(paths) or len(paths[i]) != len(paths[start]):
            if i < len(paths) and len(paths[i]) < len(paths[start]):
                raise ValueError("template paths must be listed level by level")
            spans.append((start, i))
            start = i
    return spans
