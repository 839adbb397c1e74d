"""PIA drafter: multi-branch drafts retrieved from the trie cache of `model.pia.trie`.

begin_sequence adds the prompt's branches (input counts, replacing the previous prompt's); observe adds
the emitted tokens to the output branches; propose retrieves from the last two context tokens. The trie
lives across the rounds and samples of a question (default scope "question", as the seed keeps its
LookaheadCache until the prompt's first tokens change); reset() starts an empty one.

Defaults are the seed's: decoding_length=64 tokens fed to the target per step, the root included, so
a draft has at most 63 nodes (and at most the engine's max_nodes); branch_length=12 tokens deep; half
the decoding length reserved for nodes ranked by output count; output_weight 1e-4; 65536 nodes per key.
"""
from __future__ import annotations

from collections import deque

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree
from .trie import OUTPUT_WEIGHT, TREE_CAPACITY, PiaTrie


class PiaDrafter(Drafter):
    name = "pia"
    default_scope = "question"

    def __init__(self, decoding_length: int = 64, branch_length: int = 12, tree_capacity: int = TREE_CAPACITY):
        if decoding_length < 2:
            raise ValueError("decoding_length must be >= 2 (the root plus one drafted token)")
        if branch_length < 1:
            raise ValueError("branch_length must be >= 1")
        if tree_capacity < 2:
            raise ValueError("tree_capacity must be >= 2")
        self.decoding_length = decoding_length
        self.branch_length = branch_length
        self.tree_capacity = tree_capacity
        self.output_quota = max(decoding_length // 2, 1)   # the seed's min_output_size
        self.reset()

    def reset(self) -> None:
        self.trie = PiaTrie(self.branch_length, self.tree_capacity)
        self.stream = self.trie.growing   # this drafter's output stream in the trie
        self._seen = 0   # context tokens already in the trie

    def share_with(self, siblings: list[Drafter]) -> None:
        """Cross-sample drafting: the rows of a question's concurrent samples share one trie (the first row's in
        the order they were forked), each adding its output as its own stream, so each drafts from all of them."""
        group = [self] + [s for s in siblings if isinstance(s, PiaDrafter)]
        if len(group) == 1:
            return
        leader = min(group, key=lambda d: d.fork_index)
        if self.trie is not leader.trie:
            self.trie = leader.trie
            self.stream = deque()
        self.trie.attach(self.stream)

    def begin_sequence(self, prompt: list[int]) -> None:
        self.trie.start_sequence(prompt, self.stream)
        self._seen = len(prompt)

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        if len(tokens) > self._seen:   # callers that only hand over the growing list
            self.trie.extend_output(tokens[self._seen:], self.stream)
            self._seen = len(tokens)
        budget = min(self.decoding_length - 1, max_nodes)
        if budget <= 0:
            return None
        draft, parents = self.trie.retrieve(tokens[-2:], budget, self.output_quota)
        if not draft:
            return None
        return DraftTree(draft, parents, source="pia")

    def observe(self, feedback: StepFeedback) -> None:
        self.trie.extend_output(feedback.emitted, self.stream)
        self._seen += len(feedback.emitted)

    def parameters(self) -> dict:
        return {"decoding_length": self.decoding_length, "branch_length": self.branch_length,
                "tree_capacity": self.tree_capacity, "output_quota": self.output_quota,
                "output_weight": OUTPUT_WEIGHT}
