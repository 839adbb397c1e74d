"""SpS: speculative sampling with a separate draft model that shares the target's tokenizer.

The draft model keeps a positional KV cache over the context. Each proposal first feeds the tokens
the draft has not seen (a new prompt in one forward; afterwards the last bonus token, or a forced phrase),
then drafts a chain one token at a time:
  * greedy: the draft's argmax (the engine follows the target's argmax; no probabilities needed);
  * sampling: a draw from the draft's distribution q under the run's temperature / top-p / top-k, drawn
    with the engine's seeded generator and attached to the tree, so the engine accepts token x with
    probability min(1, p(x)/q(x)) and resamples a rejection from norm(max(p - q, 0)): the output follows
    the target's law whatever the draft.
Drafting stops after `num_tokens` tokens, or right after a token whose draft probability falls under
`confidence_threshold` (that token is kept: transformers' assisted-generation stopping rule).
The schedules of the chain length are transformers' (`num_assistant_tokens_schedule`, same names):
  * constant: always `num_tokens`;
  * heuristic_transient: +2 tokens after a fully accepted chain, -1 (down to 1) otherwise, starting every sequence at
    `num_tokens` (transformers resets it at each generate call);
  * heuristic: the same rule, and a sequence starts at the length the previous one ended with (transformers writes it
    back into the assistant model's generation config at the end of each call). That carried length is learned
    state: it lives as long as the run's drafter-state scope says (this schedule's default scope is global: the
    whole run, as transformers' over every call with one assistant model; warm-up does not count), and is reset at
    the scope's boundaries.
In a batch each row runs its own length through its sequence (a transformers call decodes one sequence: assisted
generation takes batch size 1); at global scope the rows share the carried length, which a row writes when its
sequence ends, so the next sequences start from the length of the last one to end.
After verification the draft's cache is cut back to the accepted prefix: nothing is recomputed.

The draft cache is a `DraftBatch` (model/engine/draft_batch.py): in a batch the rows' drafters share one, a row each,
and `propose_rows` runs the draft model once per drafting step for all rows: first each row's unseen context (rows
padded to the longest), then one token per row still drafting, until every row's chain has ended. One sequence is a
batch of one.
"""
from __future__ import annotations

import torch

from ..engine.draft_batch import DraftBatch
from ..engine.drafter import Drafter, StaticSettings, StepFeedback
from ..engine.static_cache import StaticKVCache
from ..engine.static_forward import StaticForward
from ..engine.forward import padded_forward, uses_additive_mask
from ..engine.sampling import SamplingConfig, draw, target_probs
from ..engine.tree import DraftTree

SCHEDULES = ("constant", "heuristic", "heuristic_transient")
FEED_ROOM = 256   # static mode: draft-cache entries a row holds beyond the engine's own row capacity
ADAPTIVE = ("heuristic", "heuristic_transient")


def check_parameters(num_tokens: int, confidence_threshold: float, schedule: str) -> None:
    """ValueError (one line, in the CLI's flag names) for settings no run can use."""
    if num_tokens < 1:
        raise ValueError(f"--num-assistant-tokens must be a positive integer, got {num_tokens}")
    if not 0 <= confidence_threshold <= 1:
        raise ValueError(f"--assistant-confidence-threshold must lie in [0, 1], got {confidence_threshold}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown --num-assistant-tokens-schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


class CarriedLength:
    """The chain length the next sequence starts with (schedule heuristic): an object, so that rows sharing learned
    state (global scope) share it."""

    def __init__(self, value: int):
        self.value = value


class DraftModelDrafter(Drafter):
    name = "sps"
    default_scope = "sequence"
    memory_attributes = ("carried",)
    shared_attributes = ("forwards",)   # the draft model's static forwards (and its captured graphs): one for all rows

    def __init__(self, draft, vocab_size: int, num_tokens: int = 20, confidence_threshold: float = 0.4,
                 schedule: str = "constant"):
        check_parameters(num_tokens, confidence_threshold, schedule)
        self.draft = draft
        self.vocab_size = vocab_size            # the target's: draft logits are cut or padded to it
        self.num_tokens = num_tokens
        self.confidence_threshold = confidence_threshold
        self.schedule = schedule
        self.sampling, self.generator = SamplingConfig(), None
        self.cached = 0                         # context tokens whose entries the draft cache holds
        self.pending: tuple[int, int] | None = None   # (context length, chain length) of the unverified draft
        self.length = num_tokens                # the chain length of this sequence's next proposal
        self.carried = CarriedLength(num_tokens)
        if schedule == "heuristic":
            self.default_scope = "global"
        self.batch: _DraftBatch | None = None
        self.static: StaticSettings | None = None   # the engine's static mode: the draft model runs in it too
        self.forwards: dict[int, StaticForward] = {}   # by key-length bucket

    def use_engine(self, static: StaticSettings | None) -> None:
        self.static = static

    def static_forward(self) -> StaticForward:
        """The draft model's forward in fixed shapes: one token a row while drafting (captured on CUDA), feeds of
        several tokens (a new context, the emitted tokens) eagerly."""
        if self.static.kv_bucket not in self.forwards:
            self.forwards[self.static.kv_bucket] = StaticForward(self.draft, uses_additive_mask(self.draft), 1,
                                                                 self.static.kv_bucket)
        return self.forwards[self.static.kv_bucket]

    def reset(self) -> None:
        self.length = self.carried.value = self.num_tokens

    def use_sampling(self, sampling: SamplingConfig, generator: torch.Generator | None) -> None:
        self.sampling, self.generator = sampling, generator

    def begin_sequence(self, prompt: list[int]) -> None:
        self.cached, self.pending = 0, None
        self.length = self.carried.value if self.schedule == "heuristic" else self.num_tokens
        if self.batch is not None:
            self.batch.leave(self)

    def end_sequence(self) -> None:
        if self.schedule == "heuristic":
            self.carried.value = self.length
        if self.batch is not None:   # its row of the batched draft cache is freed
            self.batch.finish(self)

    def _fit(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's logits over the target's ids."""
        if logits.shape[0] > self.vocab_size:      # padded rows: ids the target never emits
            return logits[: self.vocab_size]
        if logits.shape[0] < self.vocab_size:
            return torch.nn.functional.pad(logits, (0, self.vocab_size - logits.shape[0]), value=float("-inf"))
        return logits

    def _pick(self, logits: torch.Tensor) -> tuple[int, float, torch.Tensor | None]:
        """The next draft token from the draft's logits: (token, its draft probability, q when sampling)."""
        if self.sampling.greedy and self.confidence_threshold == 0:
            return int(logits.argmax()), 1.0, None
        if self.sampling.greedy:
            top = logits.float().softmax(-1).max(-1)
            return int(top.indices), float(top.values), None
        q = target_probs(logits if logits.dtype == torch.float64 else logits.float(), self.sampling)
        if self.generator is not None:
            q = q.to(self.generator.device)
        token = draw(q, self.generator)
        return token, q[token].item(), q

    def _tree(self, start: int, chain: list[int], probs: list[torch.Tensor]) -> DraftTree:
        self.pending = (start, len(chain))
        tree = DraftTree.chain(chain, "sps")
        if probs:
            tree.probs = torch.stack(probs)
        return tree

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        return self.propose_rows([self], [tokens], max_nodes)[0]

    @torch.inference_mode()
    def propose_rows(self, rows: list["DraftModelDrafter"], contexts: list[list[int]],
                     max_nodes: int) -> list[DraftTree | None]:
        """Every row's chain, with one draft forward per drafting step for all rows (see the module docstring)."""
        batch = _DraftBatch.of(rows, self.draft)
        wants = [min(d.length, max_nodes) for d in rows]
        feeds = [tokens[d.cached:] if want >= 1 else [] for d, tokens, want in zip(rows, contexts, wants)]
        chains = [[] for _ in rows]
        probs = [[] for _ in rows]
        starts = [len(tokens) for tokens in contexts]
        for d, feed in zip(rows, feeds):
            d.cached += len(feed)
        drafting = [want >= 1 for want in wants]
        while any(drafting):
            logits = batch.feed({d: feed for d, feed in zip(rows, feeds) if feed})
            feeds = [[] for _ in rows]
            for b, d in enumerate(rows):
                if not drafting[b]:
                    continue
                token, confidence, q = d._pick(logits[d])
                chains[b].append(token)
                if q is not None:
                    probs[b].append(q)
                if len(chains[b]) == wants[b] or confidence < d.confidence_threshold:
                    drafting[b] = False   # its last token is not fed: the next proposal feeds the emitted tokens
                else:
                    feeds[b] = [token]
            if not any(feeds):
                break
        return [d._tree(start, chain, p) if chain else None
                for d, start, chain, p in zip(rows, starts, chains, probs)]

    def observe(self, feedback: StepFeedback) -> None:
        if self.pending is None:
            return   # forced tokens: the next proposal feeds them
        start, drafted = self.pending
        accepted = len(feedback.accepted_nodes)
        # The cache holds context + chain[:-1]; keep the context and the accepted draft tokens it holds, short of
        # the last emitted token (fed by the next proposal; a step cut at a limit may emit no bonus token).
        self.cached = start + min(accepted, drafted - 1, len(feedback.emitted) - 1)
        self.batch.cut(self, self.cached)
        self.pending = None
        if self.schedule in ADAPTIVE:   # judged on what was verified (cost-aware verification may cut the chain)
            verified = len(feedback.tree.tokens) if feedback.tree is not None else drafted
            self.length = self.length + 2 if accepted == verified else max(1, self.length - 1)

    def max_draft_nodes(self) -> int | None:
        return self.num_tokens if self.schedule == "constant" else None   # the heuristic length has no bound

    def parameters(self) -> dict:
        config = self.draft.config
        return {"drafter_path": getattr(config, "_name_or_path", None), "drafter_dtype": str(self.draft.dtype),
                "drafter_layers": getattr(config, "num_hidden_layers", None),
                "drafter_parameters": sum(p.numel() for p in self.draft.parameters()),
                "num_assistant_tokens": self.num_tokens, "num_assistant_tokens_schedule": self.schedule,
                "assistant_confidence_threshold": self.confidence_threshold}


class _DraftBatch(DraftBatch):
    """SpS's: new sequences join the batch the other rows are in (continuous batching); rows from several batches
    start a new one, each row feeding its whole context again."""

    def __init__(self, rows: list[DraftModelDrafter], draft):
        for d in rows:
            if d.batch is not None:
                d.batch.leave(d)
            d.cached, d.pending = 0, None
        static = rows[0].static
        # (room for the widest feed beyond a row's context: the emitted tokens or a forced phrase, rows padded to it)
        cache = None if static is None else StaticKVCache(static.capacity + FEED_ROOM, len(rows),
                                                          device=next(draft.parameters()).device)
        super().__init__(rows, cache)
        self.draft = draft
        self.additive_mask = uses_additive_mask(draft)
        self.forward = rows[0].static_forward() if static is not None else None

    @classmethod
    def of(cls, rows: list[DraftModelDrafter], draft) -> "_DraftBatch":
        # (a row with no batch has begun a sequence since: nothing cached, nothing pending)
        return DraftBatch.shared_by(rows, lambda d: True) or cls(rows, draft)

    def feed(self, feeds: dict) -> dict:
        """Append each given drafter's tokens in its row (other rows are padded and cut back); the draft's logits
        after each one's last token, over the target's ids."""
        starts = self.cache.lengths
        own = [feeds.get(d) or [] for d in self.rows]
        inputs = [tokens or [0] for tokens in own]
        last = sorted({len(x) - 1 for x in inputs})
        blocks = [torch.ones(len(x), len(x), dtype=torch.bool).tril() for x in inputs]
        depths = [list(range(len(x))) for x in inputs]
        if self.forward is None:
            logits = padded_forward(self.draft, self.cache, inputs, blocks, depths, self.additive_mask,
                                    logits_to_keep=torch.tensor(last))
        elif last == [0]:   # one token a row: a decode step of fixed shape (captured on CUDA)
            logits = self.forward(self.cache, inputs, blocks, depths)
        else:
            logits = self.forward(self.cache, inputs, blocks, depths, logits_to_keep=torch.tensor(last))
        self.cache.keep_rows(starts, [list(range(len(tokens))) for tokens in own])
        return {d: d._fit(logits[b, last.index(len(inputs[b]) - 1)])
                for b, (d, tokens) in enumerate(zip(self.rows, own)) if tokens}
