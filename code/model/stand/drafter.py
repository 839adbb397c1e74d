"""STAND (Song et al., arXiv 2506.04708): stochastic n-gram drafting from a memory of the target's distributions.

Memory (memory.py): after every verification, the target's next-token distribution at each verified position (the
engine hands them over: `wants_distributions`) is stored, as its top-k, under the n-grams that end the context there.
A rejected draft node's position counts too (`learn_rejected`, the default): the target computed what follows that
node's context, a real context of this trace up to its last few tokens, as Token Recycling learns from every node;
the memory then learns from every position it verifies, not only from the 1-3 emitted per step.

Drafting: the tree's shape is a template of (parent, sibling rank) nodes chosen from acceptance counts
(tree_shape.py). At a template node the drafter looks up the longest stored n-gram ending the node's context and
- at temperature 0 takes the distribution's most probable tokens as the children (point masses, greedy acceptance);
- at temperature > 0 draws the children from the stored distribution q without replacement by Gumbel-Top-K (one
  batch of uniforms per proposal, from the engine's seeded generator). Child i carries q renormalised over the tokens
  its elder siblings did not take: given them, that is exactly the law it was drawn from, so the engine's recursive
  rejection (accept with min(1, r/q_i), else r <- norm(max(r - q_i, 0))) keeps the output distribution the target's.
A node whose context the memory does not hold gets no children.

State scope: question (the paper's setting: a question's samples share what the target said). With cross-sample
drafting in a batch, the rows of one question merge their memories into one that all of them read and write.
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.drafter import Drafter, StepFeedback
from ..engine.sampling import SamplingConfig
from ..engine.tree import DraftTree
from .memory import NgramMemory
from .tree_shape import TreeShape


class StandDrafter(Drafter):
    name = "stand"
    default_scope = "question"
    memory_attributes = ("memory",)   # shared by every row at global scope

    def __init__(self, vocab_size: int, orders: tuple[int, ...] = (1, 2, 3, 4), topk: int = 8,
                 max_nodes: int = 8, max_depth: int = 8, max_children: int = 4, rebuild_every: int = 8,
                 prompt_ngrams: bool = True, learn_rejected: bool = True):
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        self.vocab_size = vocab_size
        self.orders, self.topk = tuple(sorted(set(orders))), topk
        self.span = max(self.orders)   # context tokens a lookup can use
        self.wants_distributions = topk
        self.shape_args = dict(max_nodes=max_nodes, max_depth=max_depth, max_children=max_children,
                               rebuild_every=rebuild_every)
        self.prompt_ngrams = prompt_ngrams
        self.learn_rejected = learn_rejected
        self.sampling = SamplingConfig()
        self.generator: torch.Generator | None = None
        self.reset()
        self.context: list[int] = []

    # -- state -------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        # A new object, not a cleared one: at batch > 1 the old memory may still be a sibling row's.
        self.memory = NgramMemory(self.orders, self.topk)
        self.shape = TreeShape(**self.shape_args)

    def share_with(self, siblings: list[Drafter]) -> None:
        """Rows sampling the same question: one memory for all of them (merged once, then shared)."""
        group = [self] + [s for s in siblings if isinstance(s, StandDrafter)]
        shared = min(group, key=lambda d: d.fork_index).memory
        merged = {id(shared)}
        for drafter in group:
            if id(drafter.memory) not in merged:
                merged.add(id(drafter.memory))
                shared.merge_from(drafter.memory)
            drafter.memory = shared

    def use_sampling(self, sampling: SamplingConfig, generator: torch.Generator | None) -> None:
        self.sampling, self.generator = sampling, generator

    def begin_sequence(self, prompt: list[int]) -> None:
        self.context = list(prompt)
        if self.prompt_ngrams:
            for i in range(1, len(prompt)):
                self.memory.add_point_mass(prompt[max(0, i - self.span):i], prompt[i])

    # -- drafting ----------------------------------------------------------------------------------------------
    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        template, children = self.shape.template, self.shape.children
        budget = min(len(template), max_nodes)
        if budget <= 0:
            return None
        sampled = not self.sampling.greedy
        tail = tokens[-self.span:]
        node_of = {-1: -1}                    # template index -> draft node index (kept nodes only)
        out_tokens, out_parents, out_q = [], [], []
        suffix = {-1: tail}                   # draft node -> the last max-order tokens of its context
        noise = self._gumbel(budget) if sampled else None
        for t_parent_index, kids in enumerate(children):
            parent = node_of.get(t_parent_index - 1)
            if parent is None or not kids:
                continue
            entry = self.memory.lookup(suffix[parent])
            if entry is None:
                continue
            ids, probs = entry
            kids = [i for i in kids if i < budget]
            if not kids:
                continue
            picks = self._pick(ids, probs, len(kids), noise[len(out_tokens)] if sampled else None)
            for rank, (template_index, pick) in enumerate(zip(kids, picks)):
                node = len(out_tokens)
                out_tokens.append(ids[pick])
                out_parents.append(parent)
                if sampled:   # q of this child: the stored q without its elder siblings' tokens, renormalised
                    out_q.append((ids, probs, picks[:rank]))
                node_of[template_index] = node
                suffix[node] = (suffix[parent] + [ids[pick]])[-self.span:]
        if not out_tokens:
            return None
        tree = DraftTree(out_tokens, out_parents, source="stand")
        if sampled:
            tree.probs = self._dense_q(out_q)
        return tree

    def _gumbel(self, rows: int) -> np.ndarray:
        """Gumbel noise for every node that may be drafted, drawn at once (rows x k)."""
        u = torch.rand((rows, self.topk), generator=self.generator, dtype=torch.float64,
                       device=self.generator.device if self.generator is not None else "cpu").cpu().numpy()
        return -np.log(-np.log(np.clip(u, 1e-300, 1.0 - 1e-16)))

    @staticmethod
    def _pick(ids: list[int], probs: list[float], count: int, noise: np.ndarray | None) -> list[int]:
        """Indices into `ids` of the children: the most probable (greedy) or a Gumbel-Top-K sample without
        replacement (ranked by log q + Gumbel noise, the first being a draw from q)."""
        count = min(count, len(ids))
        if noise is None:
            return list(range(count))
        keys = np.log(np.asarray(probs)) + noise[: len(probs)]
        return np.argsort(-keys, kind="stable")[:count].tolist()

    def _dense_q(self, rows: list) -> torch.Tensor:
        q = torch.zeros(len(rows), self.vocab_size, dtype=torch.float32)
        for i, (ids, probs, elders) in enumerate(rows):
            mass = torch.tensor(probs, dtype=torch.float64)
            mass[elders] = 0.0
            q[i, ids] = (mass / mass.sum()).float()
        return q

    def max_draft_nodes(self) -> int:
        return self.shape.max_nodes

    # -- learning ----------------------------------------------------------------------------------------------
    def observe(self, feedback: StepFeedback) -> None:
        if feedback.tree is not None and feedback.tree.source == "stand":
            self.shape.record(feedback.tree.parents, feedback.accepted_nodes)
        dist = feedback.distributions
        if dist is None:
            self.context.extend(feedback.emitted)
            return
        ids, probs = dist[0].tolist(), dist[1].tolist()
        tree, memory, span = feedback.tree, self.memory, self.span
        if self.learn_rejected:
            # Position 0 is the root (the context so far); node i's context is its parent's plus its token.
            contexts = [self.context[-span:]]
            for token, parent in zip(tree.tokens, tree.parents):
                contexts.append((contexts[parent + 1] + [token])[-span:])
            for context, top_ids, top_probs in zip(contexts, ids, probs):
                memory.add(context, top_ids, top_probs)
            self.context.extend(feedback.emitted)
        else:
            positions = [0] + [i + 1 for i in feedback.accepted_nodes]
            for j, token in enumerate(feedback.emitted):
                memory.add(self.context[-span:], ids[positions[j]], probs[positions[j]])
                self.context.append(token)

    def parameters(self) -> dict:
        return {"orders": list(self.orders), "topk": self.topk, **self.shape_args,
                "prompt_ngrams": self.prompt_ngrams, "learn_rejected": self.learn_rejected,
                "tree": "data-driven (acceptance by depth and sibling rank)",
                "children": "Gumbel-Top-K without replacement (T > 0), most probable (T = 0)",
                "memory_bound_bytes_per_position": self.memory.bound_per_position()}
