"""Lookahead decoding (Fu et al., 2024) as a drafter on the shared engine.

Each step the target computes, in ONE forward:
  * the verification branch: up to `guess` n-grams (n = level - 1 tokens) from the pool keyed by the
    root token, merged into a draft tree that the engine verifies like any other;
  * the lookahead branch: a 2D Jacobi window as auxiliary nodes, never accepted. Column i holds a key
    token at position i (column 0's key is the root itself) and one token per level 1..level-2 at
    positions i+1..i+level-2. A level-j token sees the root, the keys of columns 1..i and the lower
    levels of its own column: the trajectory a Jacobi iteration would condition on.
The target's argmax at the top level of column i completes the n-gram key_i -> (levels 1..level-2, argmax),
which enters the pool (LRU, at most `guess` n-grams per key, as the reference). Then the window slides one
position as the reference's ALWAYS_FWD_ONE: the keys become level 1 shifted by one column, each level moves
down, and the new top level is the argmax row.
Simplification (stated): the reference fills the levels over the first level-2 steps; here every level starts
with tokens copied at random from the prompt (seeded), so the first few n-grams are noise the verification
rejects at no extra forward.
"""
from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree


def lookahead_layout(level: int, window: int) -> tuple[list[int], np.ndarray]:
    """Depths and visibility of the auxiliary nodes: keys of columns 1..W-1, then levels 1..level-2 row by row."""
    keys = window - 1
    depths = list(range(1, window))
    for j in range(1, level - 1):
        depths += [i + j for i in range(window)]
    m = len(depths)
    mask = np.zeros((m, m), dtype=bool)
    for i in range(1, window):                    # key i sees keys 1..i
        mask[i - 1, :i] = True
    for j in range(1, level - 1):
        for i in range(window):
            row = keys + (j - 1) * window + i
            mask[row, :i] = True                   # keys of columns 1..i
            for lower in range(1, j + 1):         # its own column, levels 1..j
                mask[row, keys + (lower - 1) * window + i] = True
    return depths, mask


class LookaheadDrafter(Drafter):
    name = "lookahead"
    default_scope = "sequence"
    memory_attributes = ("pool",)

    def __init__(self, level: int = 5, window: int = 7, guess: int = 7, seed: int = 0):
        if level < 3 or window < 1 or guess < 1:
            raise ValueError(f"lookahead needs --level >= 3, --window >= 1 and --guess >= 1 "
                             f"(got {level}, {window}, {guess})")
        self.level, self.window, self.guess, self.seed = level, window, guess, seed
        self.depths, self.mask = lookahead_layout(level, window)
        self.reset()

    def reset(self) -> None:
        self.pool: dict[int, OrderedDict] = getattr(self, "pool", {})
        self.pool.clear()   # in place: at global scope the rows of a batch share it
        self.keys: list[int] = []      # keys of columns 1..W-1
        self.levels: list[list[int]] = []
        self.rng = random.Random(self.seed)

    def begin_sequence(self, prompt: list[int]) -> None:
        pick = lambda: prompt[self.rng.randrange(len(prompt))]  # noqa: E731
        self.keys = [pick() for _ in range(self.window - 1)]
        self.levels = [[pick() for _ in range(self.window)] for _ in range(self.level - 2)]

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        aux = self.keys + [t for row in self.levels for t in row]
        grams = self.pool.get(tokens[-1])
        tree = DraftTree.from_paths([list(g) for g in reversed(grams)], "lookahead") if grams else \
            DraftTree([], [], source="lookahead")
        if tree.size + len(aux) > max_nodes:
            return tree if len(tree) <= max_nodes else None
        tree.aux_tokens, tree.aux_depths, tree.aux_mask = aux, self.depths, self.mask
        return tree

    def observe(self, feedback: StepFeedback) -> None:
        top = feedback.aux_argmax
        if top is None or not feedback.input_tokens:
            return  # forced tokens, or a step without the lookahead branch
        top = top[-self.window:]
        column_keys = [feedback.input_tokens[0]] + self.keys
        for i, key in enumerate(column_keys):
            self._remember(key, tuple(row[i] for row in self.levels) + (top[i],))
        self.keys = self.levels[0][1:]
        self.levels = self.levels[1:] + [top]

    def _remember(self, key: int, gram: tuple) -> None:
        grams = self.pool.setdefault(key, OrderedDict())
        grams.pop(gram, None)
        grams[gram] = None
        if len(grams) > self.guess:
            grams.popitem(last=False)

    def max_draft_nodes(self) -> int:
        return (self.window - 1) + (self.level - 2) * self.window + self.guess * (self.level - 1)

    def parameters(self) -> dict:
        return {"level": self.level, "window": self.window, "guess": self.guess, "seed": self.seed}
