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

In a batch the rows' drafters share one batched draft cache (model/engine/draft_batch.py), so each level is one head
forward for all rows; one sequence is a batch of one.

Sampling: the tree's tokens are deterministic choices, so the engine applies its point-mass rule (draw x ~ p at
a node, follow the child holding x): lossless at any temperature, no draft probabilities needed.
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.drafter import Drafter, StepFeedback
from ..engine.draft_batch import DraftBatch
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
        self.rows = 0                      # context rows in its draft cache row (row t: states at t, token t+1)
        self.pending_ids: list[int] = []   # tokens whose (states, token) rows are not fed yet
        self.pending_hidden: list[torch.Tensor] = []
        self.batch: DraftBatch | None = None   # the batched draft cache, once drafted together with other rows

    def begin_sequence(self, prompt: list[int]) -> None:
        self.rows = 0
        if self.batch is not None:
            self.batch.leave(self)
        # The prefill's states (positions 0..n-2) pair with prompt tokens 1..n-1; later states pair with the tokens
        # they predicted (StepFeedback.hidden is aligned with `emitted`).
        self.pending_ids, self.pending_hidden = list(prompt[1:]), []

    def observe_prompt(self, hidden: torch.Tensor) -> None:
        self.pending_hidden.append(hidden)

    def observe(self, feedback: StepFeedback) -> None:
        if feedback.hidden is not None:
            self.pending_ids.extend(feedback.emitted)
            self.pending_hidden.append(feedback.hidden)

    def end_sequence(self) -> None:
        if self.batch is not None:
            self.batch.finish(self)

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        return self.propose_rows([self], [tokens], max_nodes)[0]

    @torch.inference_mode()
    def propose_rows(self, rows: list["Eagle3Drafter"], contexts: list[list[int]],
                     max_nodes: int) -> list[DraftTree | None]:
        """The rows' trees with one head forward per level for all of them, over a batched draft cache (one row:
        a batch of one). What a row fed is gone once fed (the target's states), so rows join a batch before their
        first feed: new sequences join the batch of the others; rows that fed in different batches draft each in
        its own."""
        batch = self._batch_of(rows)
        if batch is None:
            if len(rows) > 1:
                return [d.propose_rows([d], [tokens], max_nodes)[0] for d, tokens in zip(rows, contexts)]
            return [None]   # what it fed lives in a batch it has left: nothing to draft from
        keep = min(self.total_tokens - 1, max_nodes)
        # A one-token prompt: nothing to condition on until the first step's states arrive.
        active = [d for d in rows if d.pending_ids] if keep >= 1 else []
        if not active:
            return [None] * len(rows)
        trees = self._grow_trees(batch, active, self._feed_rows(batch, active), keep)
        return [trees.get(d) for d in rows]

    @staticmethod
    def _batch_of(rows: list["Eagle3Drafter"]) -> DraftBatch | None:
        """The draft batch all these rows can draft in (a new one when every row is new); None if the rows fed in
        different batches, or a row fed in a batch it has left."""
        if all(d.batch is None and d.rows == 0 for d in rows):
            return DraftBatch(rows)
        return DraftBatch.shared_by(rows, lambda d: d.rows == 0)

    def _feed_rows(self, batch: DraftBatch, active: list["Eagle3Drafter"]) -> torch.Tensor:
        """Feed the waiting (states, token) rows of the active drafters, each in its cache row, in one forward
        (rows padded to the longest; idle rows padded too and cut back). The head's output after each row's last
        fed token: [rows of the batch, H] (zeros for idle rows)."""
        head, device, members = self.head, self.device, batch.rows
        counts = [len(d.pending_ids) if d in active else 0 for d in members]
        n, lengths = max(counts), batch.cache.lengths
        width = head.fc.weight.shape[1]
        hidden = torch.zeros(len(members), n, width, dtype=head.fc.weight.dtype, device=device)
        ids = torch.zeros(len(members), n, dtype=torch.long, device=device)
        for b, (d, count) in enumerate(zip(members, counts)):
            if count:
                hidden[b, :count] = torch.cat(d.pending_hidden).to(hidden)
                ids[b, :count] = torch.tensor(d.pending_ids, device=device)
        positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(n, device=device)
        mask = self._row_masks(lengths, [torch.ones(n, n, dtype=torch.bool, device=device).tril()] * len(members),
                               counts)
        out = head.step(self.embedding(ids), head.project(hidden), positions, batch.cache, mask)
        batch.cache.keep_rows(lengths, [list(range(count)) for count in counts])
        last = torch.zeros(len(members), out.shape[-1], dtype=out.dtype, device=device)
        for b, (d, count) in enumerate(zip(members, counts)):
            if count:
                last[b] = out[b, count - 1]
                d.rows += count
                d.pending_ids, d.pending_hidden = [], []
        return last

    def _row_masks(self, lengths: list[int], blocks: list[torch.Tensor], valid: list[int]) -> torch.Tensor:
        """[rows, n, max length + n]: each row's queries see its cached entries and, among the new ones, its block;
        queries past `valid[b]` (padding) see only themselves."""
        n = blocks[0].shape[0]
        width = blocks[0].shape[1]
        columns = torch.arange(max(lengths) + width, device=self.device)
        mask = columns[None, None, :] < torch.tensor(lengths, device=self.device)[:, None, None]
        mask = mask.expand(len(lengths), n, -1).clone()
        for b, (length, block, count) in enumerate(zip(lengths, blocks, valid)):
            mask[b, count:] = False
            mask[b, :, length:length + width] = block
            mask[b, count:, length:length + width] = False
            for j in range(count, n):   # padding sees only itself
                mask[b, j, length + width - n + j] = True
        return mask

    def _grow_trees(self, batch: DraftBatch, active: list["Eagle3Drafter"], last: torch.Tensor,
                    keep: int) -> dict:
        """Every row's tree, level by level (EAGLE-2's dynamic tree): the top-k children of the k best-scored beam
        nodes per level, scores summed log-probabilities; the `keep` best candidates of all levels form the tree.
        Idle rows of the batch grow from zeros and are dropped."""
        k, head, device = self.top_k, self.head, self.device
        members = batch.rows
        m = len(members)
        contexts = [d.rows for d in members]
        top = torch.log_softmax(head.logits(last).float(), -1).topk(k)
        scores, beam_ids = top.values, top.indices                              # [m, k]
        all_scores, all_ids = [scores], [beam_ids]
        all_parents = [torch.full((m, k), -1, device=device)]
        beam = torch.arange(k, device=device).expand(m, k)
        beam_hidden = last[:, None].expand(m, k, -1)
        eye = torch.eye(k, dtype=torch.bool, device=device)
        ancestry = eye.expand(m, k, k)                                          # beam x speculative rows
        offset = k
        for level in range(self.depth):
            positions = torch.tensor(contexts, device=device)[:, None] + level
            mask = self._row_masks(contexts, list(ancestry), [k] * m)
            out = head.step(self.embedding(head.to_target_ids(beam_ids)), beam_hidden, positions.expand(m, k),
                            batch.cache, mask)                                   # [m, k, H]
            top = torch.log_softmax(head.logits(out).float(), -1).topk(k)       # [m, k, k]
            child_scores = (scores[:, :, None] + top.values).reshape(m, k * k)   # beam-major
            child_ids = top.indices.reshape(m, k * k)
            all_scores.append(child_scores)
            all_ids.append(child_ids)
            all_parents.append(beam.repeat_interleave(k, dim=1))
            best = child_scores.topk(k, dim=-1).indices
            parent_beam = best // k
            beam = offset + best
            scores, beam_ids = child_scores.gather(1, best), child_ids.gather(1, best)
            beam_hidden = out.gather(1, parent_beam[:, :, None].expand(-1, -1, out.shape[-1]))
            ancestry = torch.cat([ancestry.gather(1, parent_beam[:, :, None].expand(-1, -1, ancestry.shape[2])),
                                  eye.expand(m, k, k)], dim=2)
            offset += k * k
        batch.cache.set_lengths(contexts)   # drop the speculative rows: accepted tokens come back with the states
        scores, ids, parents = torch.cat(all_scores, 1), head.to_target_ids(torch.cat(all_ids, 1)), \
            torch.cat(all_parents, 1)
        return {d: self._select(scores[b], ids[b], parents[b], keep) for b, d in enumerate(members) if d in active}

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
