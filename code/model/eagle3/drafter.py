"""EAGLE-3 as a drafter on the one engine: a dynamic tree grown by the draft head.

The engine hands over the target's states at the three chosen layers for every token the context keeps
(`hidden_layers`); they wait, paired with the tokens they predicted, until the next proposal feeds them to the
head in one forward. The draft KV cache then holds exactly the accepted context; the tree's speculative rows are
cut off after each proposal.

Tree (EAGLE-2/3's dynamic tree): the head's top-k tokens after the last context row are the first level, scored
by their log-probability. Then `depth` times: the k best-scored frontier nodes (the beam) are fed together, each
seeing the context, its ancestors and itself, and each gets k children scored by cumulative log-probability; the
k best of those k*k children become the next beam. Of every scored node, the `total_tokens - 1` best are kept
(a child never outscores its parent, so the kept set contains every kept node's ancestors).

Sampling: the tree's tokens are deterministic choices, so the engine applies its point-mass rule (draw x ~ p at
a node, follow the child holding x): lossless at any temperature, no draft probabilities needed.
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.drafter import Drafter, StepFeedback
from ..engine.kv_cache import PositionalKVCache
from ..engine.tree import DraftTree
from .head import Eagle3Head


def check_tree(total_tokens: int, depth: int, top_k: int) -> None:
    """ValueError (one line, in the CLI's flag names) for a tree no run can use."""
    if total_tokens < 2 or depth < 1 or top_k < 1:
        raise ValueError(f"EAGLE-3 needs --total-token >= 2, --depth >= 1 and a tree top-k >= 1 "
                         f"(got {total_tokens}, {depth}, {top_k})")


class Eagle3Drafter(Drafter):
    name = "eagle3"
    default_scope = "sequence"

    def __init__(self, head: Eagle3Head, embedding: torch.nn.Embedding, layers: tuple[int, ...],
                 total_tokens: int = 60, depth: int = 5, top_k: int = 10):
        check_tree(total_tokens, depth, top_k)
        if top_k > head.draft_vocab_size:
            raise ValueError(f"--top-k {top_k} exceeds the head's draft vocabulary of {head.draft_vocab_size}")
        self.head, self.embedding = head, embedding
        self.hidden_layers = tuple(layers)
        self.total_tokens, self.depth, self.top_k = total_tokens, depth, top_k
        self.device = head.lm_head.weight.device
        self.cache = PositionalKVCache(capacity=1024)
        self.rows = 0                      # context rows in the draft cache (row t: states at t, token t+1)
        self.pending_ids: list[int] = []   # tokens whose (states, token) rows are not fed yet
        self.pending_hidden: list[torch.Tensor] = []

    def begin_sequence(self, prompt: list[int]) -> None:
        self.cache.crop(0)
        self.rows = 0
        # The prefill's states (positions 0..n-2) pair with prompt tokens 1..n-1; later states pair with the tokens
        # they predicted (StepFeedback.hidden is aligned with `emitted`).
        self.pending_ids, self.pending_hidden = list(prompt[1:]), []

    def observe_prompt(self, hidden: torch.Tensor) -> None:
        self.pending_hidden.append(hidden)

    def observe(self, feedback: StepFeedback) -> None:
        if feedback.hidden is not None:
            self.pending_ids.extend(feedback.emitted)
            self.pending_hidden.append(feedback.hidden)

    @torch.inference_mode()
    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        keep = min(self.total_tokens - 1, max_nodes)
        if not self.pending_ids or keep < 1:
            return None   # a one-token prompt: nothing to condition on until the first step's states arrive
        return self._grow_tree(self._feed_context(), keep)

    def _feed_context(self) -> torch.Tensor:
        """Feed the waiting (states, token) rows in one forward; the head's output at the last one."""
        hidden = self.head.fc(torch.cat(self.pending_hidden).to(self.head.fc.weight.dtype))
        ids = torch.tensor(self.pending_ids, device=self.device)
        n, past = len(ids), self.rows
        mask = torch.ones(n, past + n, dtype=torch.bool, device=self.device)
        mask[:, past:] = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        positions = torch.arange(past, past + n, device=self.device)
        out = self.head.step(self.embedding(ids), hidden, positions, self.cache, mask)
        self.rows += n
        self.pending_ids, self.pending_hidden = [], []
        return out[-1]

    def _grow_tree(self, last: torch.Tensor, keep: int) -> DraftTree:
        k, head, device = self.top_k, self.head, self.device
        top = torch.log_softmax(head.logits(last).float(), -1).topk(k)
        scores, beam_ids = top.values, top.indices                # level 1: the root's children
        all_scores, all_ids, all_parents = [scores], [beam_ids], [torch.full((k,), -1, device=device)]
        beam = torch.arange(k, device=device)                     # candidate index of each beam node
        beam_hidden = last.expand(k, -1)
        eye = torch.eye(k, dtype=torch.bool, device=device)
        ancestry = eye                                            # beam x speculative rows, itself included
        context = torch.ones(k, self.rows, dtype=torch.bool, device=device)
        offset = k
        for level in range(self.depth):
            positions = torch.full((k,), self.rows + level, device=device)
            out = head.step(self.embedding(head.to_target_ids(beam_ids)), beam_hidden, positions, self.cache,
                            torch.cat([context, ancestry], dim=1))
            top = torch.log_softmax(head.logits(out).float(), -1).topk(k)
            child_scores, child_ids = (scores[:, None] + top.values).flatten(), top.indices.flatten()  # beam-major
            all_scores.append(child_scores)
            all_ids.append(child_ids)
            all_parents.append(beam.repeat_interleave(k))
            best = child_scores.topk(k).indices
            beam, scores, beam_ids = offset + best, child_scores[best], child_ids[best]
            beam_hidden = out[best // k]
            ancestry = torch.cat([ancestry[best // k], eye], dim=1)
            offset += k * k
        self.cache.crop(self.rows)   # drop the speculative rows: accepted tokens come back with the target's states
        return self._select(torch.cat(all_scores), head.to_target_ids(torch.cat(all_ids)), torch.cat(all_parents),
                            keep)

    @staticmethod
    def _select(scores, tokens, parents, keep: int) -> DraftTree:
        """The `keep` best-scored candidates, in candidate order (so parents come first), as a draft tree."""
        scores, tokens, parents = scores.cpu().numpy(), tokens.tolist(), parents.tolist()
        chosen = np.sort(np.argsort(-scores, kind="stable")[:keep])
        node_of: dict[int, int] = {}
        tree_tokens, tree_parents = [], []
        for c in chosen.tolist():
            parent = parents[c]
            if parent >= 0 and parent not in node_of:   # only on a tie at the cut: drop the orphan
                continue
            node_of[c] = len(tree_tokens)
            tree_tokens.append(tokens[c])
            tree_parents.append(node_of[parent] if parent >= 0 else -1)
        return DraftTree(tree_tokens, tree_parents, source="eagle3")

    def max_draft_nodes(self) -> int:
        return self.total_tokens - 1

    def parameters(self) -> dict:
        config = self.head.config
        return {"ea_model_path": getattr(config, "_name_or_path", None), "total_token": self.total_tokens,
                "depth": self.depth, "top_k": self.top_k, "hidden_layers": list(self.hidden_layers),
                "draft_vocab_size": self.head.draft_vocab_size,
                "head_parameters": sum(p.numel() for p in self.head.parameters())}
