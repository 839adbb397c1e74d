"""The one verification engine: tree attention over any Hugging Face causal LM, KV rollback, acceptance.

Each step feeds the root (the last emitted token, not yet in the cache) plus the draft tree in one
forward, accepts the longest valid path, keeps the KV entries of root + accepted nodes and emits the
accepted tokens plus one bonus token. With no draft this is exactly autoregressive decoding.

A batch is several such sequences (rows) in the same forwards: each row has its own drafter, tree, KV length,
position ids, random stream, stop and limits; trees are padded to the step's widest with nodes that see only
themselves, and a row that finishes leaves the batch, or, while prompts wait for a row (continuous batching), is
taken at once by the next. One sequence is the batch of one row.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

from .cost import CostAwareVerifier
from .drafter import Drafter, StaticSettings, StepFeedback
from .forward import padded_forward, uses_additive_mask
from .hidden import HiddenCapture
from .kv_cache import PositionalKVCache
from .static_cache import Arena, StaticKVCache
from .static_forward import PREFILL_CHUNK, StaticForward
from .sampling import SamplingConfig, accept_greedy, accept_sampled, target_probs
from .tree import DraftError, DraftTree, draft_attention
from .topk import topk
from ..errors import UserError

ENGINE_MODES = ("eager", "static")

# What a drafter that proposes nothing gets verified: the root alone, i.e. one autoregressive step.
NO_DRAFT = DraftTree([], [], source="none")
# A step where cost-aware verification did not ask the drafter (drafting has not been paying off).
SKIPPED = DraftTree([], [], source="skipped")


@dataclass
class ThinkingBudget:
    """Past `trigger_at` new tokens without the end-of-thinking token, force `phrase` into the output."""
    trigger_at: int
    phrase: list[int]
    end_token: int


@dataclass
class StepRecord:
    draft_size: int        # nodes verified (auxiliary included)
    accepted: int          # tokens emitted by this step, bonus included (forced steps: the forced tokens)
    source: str
    draft_seconds: float
    verify_seconds: float
    context_length: int
    proposed_size: int = 0  # nodes the drafter proposed (differs from draft_size under cost-aware verification)
    batch_step: int = 0     # the batch forward this step was part of (0, 1, ...: the step index at batch 1)
    batch_rows: int = 1     # rows in that forward
    batch_width: int = 0    # tokens per row in that forward (the widest row's root + draft)


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    forced_tokens: int = 0
    stopped: bool = False   # ended on a stop token (rather than the token budget)
    seconds: float = 0.0    # from the start of its batch (prefill included), or its joining it, to its last token
    row: int = 0            # the batch row (drafter slot) it was decoded in
    joined_step: int = 0    # the batch step it joined at (continuous batching; 0: from the start)
    # With record_margins: before each emitted token, the target's (top-1 - top-2 logit) / (eps x |top-1 logit|), eps
    # that of the model's dtype; inf for forced tokens (no logit chose them). How near a tie each choice was.
    margins: list[float] | None = None

    @property
    def accept_lengths(self) -> list[int]:
        """Tokens per decoding step (forced steps excluded: no drafting or acceptance happened there)."""
        return [s.accepted for s in self.steps if s.source != "forced"]


class SpeculativeEngine:
    def __init__(self, model, max_tree_nodes: int = 128, cache_capacity: int = 2048,
                 cost_aware: CostAwareVerifier | None = None, record_margins: bool = False,
                 time_source=time.perf_counter, mode: str = "eager", kv_bucket: int = 256, compile: bool = False):
        self.model = model
        # Seconds for timing drafting and verifying: the wall clock. Tests inject a simulated one, so that what the
        # cost-aware gate decides from times never depends on the machine's load.
        self.time_source = time_source
        # Keep each emitted token's top-1 / top-2 logit margin (Generation.margins): the baseline records where a
        # rounding difference could flip its choice. Kept on the device until the sequence ends (no sync per step).
        self.record_margins = record_margins
        self.margin_eps = torch.finfo(next(model.parameters()).dtype).eps
        self.cost_aware = cost_aware   # None: verify every proposal whole, as each method was published
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_tree_nodes = max_tree_nodes
        self.cache_capacity = cache_capacity
        self.additive_mask = uses_additive_mask(model)
        devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
        self.wait = (lambda: [torch.cuda.synchronize(d) for d in devices]) if devices else (lambda: None)
        self.synchronize = self.wait
        # eager: transformers' forward as it is, a cache that grows (the paper's regime). static: fixed shapes, an
        # arena allocated once, CUDA graphs on CUDA (the production regime: static_forward.py).
        if mode not in ENGINE_MODES:
            raise UserError(f"unknown engine mode {mode!r}: choose one of {', '.join(ENGINE_MODES)}")
        self.mode = mode
        self.static = None
        if mode == "static":
            if len({p.device for p in model.parameters()}) > 1:
                raise UserError("--engine-mode static needs the model on one device (its KV cache and graphs are "
                                "per device); use --engine-mode eager with a model split across devices")
            self.static = StaticForward(model, self.additive_mask, max_tree_nodes + 1, kv_bucket, compile=compile)
            self.arena = Arena()
            # No synchronize around a step: its one readback (the accepted tokens) waits for the device, and
            # the clock is read after it, so a step's time is whole without breaking the host's lead.
            self.synchronize = lambda: None
        self._capture = None   # the hidden-state capture of the running generate_batch
        # Called after each batch step, returning the seconds it waited (runs that take turns step by step:
        # evaluation/run/lockstep.py); those seconds are not this engine's, so its clock leaves them out.
        self.between_steps = None
        self.paused = 0.0

    def clock(self) -> float:
        """Seconds, read after the device finished its queued work (else GPU time lands in the wrong bucket), not
        counting the time spent waiting in `between_steps`."""
        self.synchronize()
        return self.time_source() - self.paused

    def new_cache(self, capacity: int, rows: int = 1, in_arena: bool = False, max_rows: int = 0) -> PositionalKVCache:
        """A KV cache for this engine's mode. Static: `capacity` entries a row, never more, and room for `max_rows`
        rows (a row repeated); `in_arena`: in the engine's arena, whose buffers every sequence reuses (the decode
        forwards' graphs read them)."""
        if self.static is None:
            return PositionalKVCache(capacity=capacity, batch_size=rows)
        return StaticKVCache(capacity, rows, self.arena if in_arena else None, self.device, max_rows)

    def _forward(self, cache: PositionalKVCache, inputs: list[list[int]], blocks: list, depths: list,
                 logits_to_keep: int = 0) -> torch.Tensor:
        if self.static is not None:
            # Capturing a new shape (or compiling it) is warm-up, not this step's time: the clock leaves it out.
            before = self.static.capture_seconds
            logits = self.static(cache, inputs, blocks, depths, logits_to_keep, self._capture)
            self.paused += self.static.capture_seconds - before
            return logits
        return padded_forward(self.model, cache, inputs, blocks, depths, self.additive_mask, logits_to_keep)

    def _append(self, cache: PositionalKVCache, tokens: list[list[int]] | list[int]) -> None:
        """Add tokens to the cache without looking at their logits (prefill): one list per row (a flat list: one
        row). Rows of different lengths are padded, then cut back to their own. In static mode in chunks of
        PREFILL_CHUNK tokens (the hidden states a drafter reads put back together)."""
        rows = tokens if tokens and isinstance(tokens[0], list) else [tokens]
        if not any(rows):
            return
        longest = max(len(r) for r in rows)
        chunk = PREFILL_CHUNK if self.static is not None else longest
        states = []
        for at in range(0, longest, chunk):
            parts = [r[at:at + chunk] for r in rows]
            fed = [part or [0] for part in parts]   # (a row already done feeds one token, cut back at once)
            starts = cache.lengths
            causal = [torch.ones(len(r), len(r), dtype=torch.bool).tril() for r in fed]
            depths = [torch.arange(len(r)) for r in fed]
            self._forward(cache, fed, causal, depths, logits_to_keep=1)
            if len({len(r) for r in parts}) > 1:
                cache.keep_rows(starts, [list(range(len(r))) for r in parts])
            if self._capture is not None and chunk < longest:
                states.append(dict(self._capture.states))
        if states:
            self._capture.states = {i: torch.cat([s[i] for s in states], dim=1) for i in states[0]}

    def describe_mode(self) -> dict:
        """What the engine mode's forward cost depends on (the forward-cost profile's cache key holds it)."""
        if self.static is None:
            return {"engine_mode": "eager"}
        return {"engine_mode": "static", **self.static.describe()}

    def describe(self) -> dict:
        """The engine mode's settings and what it allocated and captured so far, for the run's records."""
        if self.static is None:
            return {"engine_mode": "eager"}
        kv = self.arena.bytes_per_token()
        return {"engine_mode": "static", **self.static.describe(),
                "kv_bytes_per_token": kv or None, "kv_arena_rows": self.arena.rows,
                "kv_arena_capacity": self.arena.capacity,
                "kv_arena_bytes": kv * self.arena.rows * self.arena.capacity or None,
                "static_shapes": len(self.static.shapes), "capture_seconds": round(self.static.capture_seconds, 3)}

    @torch.inference_mode()
    def generate(self, prompt: list[int], drafter: Drafter, max_new_tokens: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None, stop_tokens: set[int] = frozenset(),
                 budget: ThinkingBudget | None = None) -> Generation:
        return self.generate_batch([prompt], [drafter], max_new_tokens, sampling, [generator], stop_tokens,
                                   budget)[0]

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], drafters: list[Drafter], max_new_tokens: int,
                       sampling: SamplingConfig, generators: list[torch.Generator | None] | None = None,
                       stop_tokens: set[int] = frozenset(), budget: ThinkingBudget | None = None,
                       on_join=None) -> list[Generation]:
        """Decode the prompts together, one Generation per prompt, prompt i with generators[i]. Each drafter is a
        batch row: with as many drafters as prompts, row b decodes prompt b; with fewer (continuous batching), the
        first len(drafters) prompts start and each later one takes, in order, the row (and drafter) of the first
        sequence to finish, its prompt's cache entries copied from the prefill, so no row idles while prompts wait.
        `on_join(i, drafter)` is called before prompt i begins in a drafter's row (the caller's scope resets). A
        drafter object may serve several rows only if it keeps no per-sequence state (it is told every row's steps)."""
        if not prompts or any(not p for p in prompts):
            raise ValueError("empty prompt")
        if not drafters or len(drafters) > len(prompts):
            raise ValueError(f"{len(prompts)} prompts need 1 to {len(prompts)} drafters, got {len(drafters)}")
        generators = list(generators) if generators is not None else [None] * len(prompts)
        layers = {tuple(d.hidden_layers) for d in drafters}
        if len(layers) > 1:
            raise ValueError("the drafters of one batch must ask for the same hidden-state layers")
        wanted = layers.pop()
        capture = HiddenCapture(self.model, wanted) if wanted else None
        self._capture = capture
        try:
            return self._generate(prompts, drafters, generators, max_new_tokens, sampling, stop_tokens, budget,
                                  capture, on_join)
        finally:
            self._capture = None
            if capture is not None:
                capture.remove()

    def _generate(self, prompts, drafters, generators, max_new_tokens, sampling, stop_tokens, budget, capture,
                  on_join):
        start = self.clock()
        rows = [_Row(list(p), None, g, budget is None) for p, g in zip(prompts, generators)]
        waiting = deque(range(len(rows)))   # the prompts not yet given a row, in order
        if self.cost_aware is not None:
            self.cost_aware.begin_sequence(len(drafters))
        # Prefill each distinct prompt once (Best-of-N: one for all samples), then give every row its copy.
        unique: dict[tuple, int] = {}
        for row in rows:
            unique.setdefault(tuple(row.prompt), len(unique))
        longest = max(len(p) for p in prompts)
        later = len(drafters) < len(prompts)   # continuous batching: the prefilled prompts are kept apart
        if self.static is None:
            prefilled = self.new_cache(longest + min(max_new_tokens, self.cache_capacity) + self.max_tree_nodes + 1,
                                       len(unique))
        else:   # exact: the longest prompt, every new token, and the widest padded forward beyond them
            capacity = longest + max_new_tokens + self.static.buckets[-1]
            self.arena.reserve(max(len(drafters), 1 if later else len(unique)), capacity)
            prefilled = self.new_cache(capacity, len(unique), in_arena=not later)
        self._append(prefilled, [list(p[:-1]) for p in unique])
        static = None if self.static is None else StaticSettings(capacity, self.static.kv_bucket)
        # (the prompts' hidden states, for drafters that read them: kept while prompts wait to join)
        hidden = {u: capture.take(list(range(len(p) - 1)), u) for p, u in unique.items() if len(p) > 1} \
            if capture is not None else {}

        def join(i: int, drafter: Drafter, b: int, step: int) -> "_Row":
            row = rows[i]
            if on_join is not None:
                on_join(i, drafter)
            row.drafter, row.started = drafter, self.clock()
            row.result.row, row.result.joined_step = b, step
            drafter.use_sampling(sampling, row.generator)
            drafter.use_engine(static)
            drafter.begin_sequence(list(row.prompt))
            if unique[tuple(row.prompt)] in hidden:
                drafter.observe_prompt(hidden[unique[tuple(row.prompt)]])
            return row

        live = [join(waiting.popleft(), drafter, b, 0) for b, drafter in enumerate(drafters)]
        for row in live:
            row.started = start   # (the first rows' latency includes the prefill)
        slot = [unique[tuple(row.prompt)] for row in live]
        if waiting:   # the prefilled prompts are kept for the rows that join later
            cache = prefilled.clone_rows(slot) if self.static is None else prefilled.clone_rows(slot, self.arena)
        else:
            cache = prefilled
            if slot != list(range(len(unique))):
                cache.select_rows(slot)

        step = 0
        while live:
            live = [row for row in live if len(row.result.tokens) < max_new_tokens and not row.result.stopped]
            if not live:
                break
            # While prompts wait, a token any row emits is throughput (a finished row's place is taken at once);
            # after, the batch lasts as long as its furthest-behind row.
            refill = bool(waiting)
            plans = self._plan_rows(live, max_new_tokens, budget, refill)
            width = max(len(plan.inputs) for plan in plans)
            longest = _longest_remaining(live, max_new_tokens) if self.cost_aware is not None else 0
            t1 = self.clock()
            starts = cache.lengths
            logits = self._forward(cache, [p.inputs for p in plans], [p.block for p in plans],
                                   [p.depths for p in plans])
            # (one topk per step, left on the device: the margins are worked out when the sequence ends)
            top2 = topk(logits, 2)[0] if self.record_margins else None
            argmax = logits.argmax(-1).tolist() if sampling.greedy else None
            kept = []
            for b, (row, plan) in enumerate(zip(live, plans)):
                kept.append(self._accept(row, plan, logits[b], argmax[b] if argmax else None, sampling,
                                         max_new_tokens, budget, stop_tokens))
                if top2 is not None:
                    row.keep_margins(top2[b], plan)
            cache.keep_rows(starts, kept)
            t2 = self.clock()
            wanted = self._wanted(live, plans, logits)
            share = (self.clock() - t2) / max(sum(plan.tree is not None for plan in plans), 1)
            for b, (row, plan, offsets) in enumerate(zip(live, plans, kept)):
                t = self.clock()
                self._observe(row, plan, logits[b], offsets, capture, b, *wanted[b])
                if plan.tree is not None:   # (a forced step drafts nothing: its time is the forward's)
                    plan.draft_seconds += self.clock() - t + share
                row.result.steps.append(StepRecord(
                    plan.tree.size if plan.tree is not None else 0, len(plan.emitted), plan.source,
                    plan.draft_seconds, t2 - t1, len(row.context), plan.proposed, step, len(live), width))
            if self.cost_aware is not None:
                drafts = [plan for plan in plans if plan.tree is not None]
                if drafts:   # one step of the batch against a plain step of the batch
                    # What the step was worth: at batch 1 its tokens; while rows refill, the tokens per row; else the
                    # batch steps it brought the batch's end nearer (its longest remaining run shortened: the
                    # chooser's objective, realised), never more than a row emitted (a row leaving on a stop token
                    # is no drafting gain).
                    if len(live) == 1:
                        worth = len(drafts[0].emitted)
                    elif refill:
                        worth = sum(len(p.emitted) for p in plans) / len(plans)
                    else:
                        worth = min(longest - _longest_remaining(live, max_new_tokens),
                                    max(len(p.emitted) for p in plans))
                    self.cost_aware.record_forward(width, t2 - t1)
                    self.cost_aware.record_step(sum(p.proposed for p in drafts), worth,
                                                self.clock() - min(p.started for p in plans),
                                                max(len(row.context) for row in live),
                                                sum(len(p.tree.tokens) for p in drafts))
            now = self.clock()
            finished = [b for b, row in enumerate(live)
                        if len(row.result.tokens) >= max_new_tokens or row.result.stopped]
            leaving = []
            for b in finished:
                row = live[b]
                row.result.seconds = now - row.started
                row.drafter.end_sequence()
                if waiting:   # the next prompt takes this row: its prompt's entries replace the row's
                    live[b] = join(waiting.popleft(), row.drafter, row.result.row, step + 1)
                    cache.load_rows([b], prefilled, [unique[tuple(live[b].prompt)]])
                else:
                    leaving.append(b)
            if leaving:
                remaining = [b for b in range(len(live)) if b not in set(leaving)]
                if remaining:
                    cache.select_rows(remaining)
                live = [live[b] for b in remaining]
            step += 1
            if self.between_steps is not None:
                self.paused += self.between_steps()
        for row in rows:
            if not row.result.seconds:
                row.result.seconds = self.clock() - row.started
        if self.record_margins:
            _read_margins(rows, self.margin_eps)
        return [row.result for row in rows]

    def _plan_rows(self, live: list["_Row"], max_new_tokens: int, budget: ThinkingBudget | None,
                   refill: bool = False) -> list["_Plan"]:
        """What each row feeds the step's forward: a forced phrase, or the root and its draft. With cost-aware
        verification one decision for the step says whether drafters are asked, and at batch > 1 one budget cuts
        every row's draft to the step's chosen width (`refill`: for the tokens the rows emit, as at batch 1, since
        prompts wait to take the rows that finish; else for the batch steps it saves)."""
        plans = [self._forced_plan(row, max_new_tokens, budget) for row in live]
        if all(plans):
            return plans
        drafted = self.cost_aware is None or self.cost_aware.should_draft(1 if refill else len(live))
        batched = self.cost_aware is not None and len(live) > 1
        rows = [row for row, plan in zip(live, plans) if plan is None]
        proposals, seconds = self._propose(rows) if drafted else ([SKIPPED] * len(rows), [0.0] * len(rows))
        proposed = iter(zip(rows, proposals, seconds))
        plans = [plan or self._draft_plan(*next(proposed), alone=not batched) for plan in plans]
        if batched:
            t0 = self.clock()
            drafts = [plan for plan in plans if plan.tree is not None]
            rows = [row for row, plan in zip(live, plans) if plan.tree is not None]
            planned = self.cost_aware.plan_batch([p.tree for p in drafts], max(len(r.context) for r in rows),
                                                 [max_new_tokens - len(r.result.tokens) for r in rows],
                                                 per_token=refill, rows=len(live))
            share = (self.clock() - t0) / len(drafts)
            for row, plan, tree in zip(rows, drafts, planned):
                tree.validate(self.max_tree_nodes, self.vocab_size)
                plan.use(row.context[-1], tree)
                plan.draft_seconds += share
        return plans

    def _forced_plan(self, row: "_Row", max_new_tokens: int, budget: ThinkingBudget | None) -> "_Plan | None":
        """Past the thinking budget's trigger: the phrase, teacher-forced (its entries kept whole, logits unused)."""
        if row.thinking_done or len(row.result.tokens) < budget.trigger_at:
            return None
        t0 = self.clock()
        row.thinking_done = True
        phrase = budget.phrase[: max_new_tokens - len(row.result.tokens)]
        if not phrase:
            return None
        inputs = [row.context[-1]] + phrase[:-1]
        n = len(inputs)
        return _Plan(inputs, torch.ones(n, n, dtype=torch.bool).tril(), list(range(n)), None, phrase, "forced", 0,
                     t0, 0.0)

    def _propose(self, rows: list["_Row"]) -> tuple[list[DraftTree | None], list[float]]:
        """Every drafting row's proposal and its drafting seconds. Rows whose drafters are distinct objects of one
        class are asked together (`propose_rows`: a draft model runs once per drafting step for all of them), their
        time shared equally."""
        drafters = [row.drafter for row in rows]
        if len(rows) > 1 and len({type(d) for d in drafters}) == 1 and len({id(d) for d in drafters}) == len(rows):
            t0 = self.clock()
            trees = drafters[0].propose_rows(drafters, [row.context for row in rows], self.max_tree_nodes)
            return trees, [(self.clock() - t0) / len(rows)] * len(rows)
        trees, seconds = [], []
        for row in rows:
            t0 = self.clock()
            trees.append(row.drafter.propose(row.context, self.max_tree_nodes))
            seconds.append(self.clock() - t0)
        return trees, seconds

    def _draft_plan(self, row: "_Row", tree: DraftTree | None, seconds: float, alone: bool) -> "_Plan":
        t0 = self.clock()
        if tree is None:  # (not `or`: an empty tree may still carry auxiliary nodes)
            tree = NO_DRAFT
        tree.validate(self.max_tree_nodes, self.vocab_size)
        plan = _Plan([], None, [], None, None, tree.source, tree.size, t0 - seconds, 0.0,
                     proposed_nodes=len(tree.tokens))
        if self.cost_aware is not None and alone:
            tree = self._plan(tree, row.drafter, row.context)
        plan.use(row.context[-1], tree)
        plan.draft_seconds = seconds + self.clock() - t0
        return plan

    def _accept(self, row: "_Row", plan: "_Plan", logits: torch.Tensor, argmax: list[int] | None,
                sampling: SamplingConfig, max_new_tokens: int, budget, stop_tokens) -> list[int]:
        """Accept this row's draft (or take its forced phrase); returns the offsets of the entries its cache keeps."""
        result = row.result
        if plan.tree is None:
            result.tokens.extend(plan.emitted)
            result.forced_tokens += len(plan.emitted)
            row.context.extend(plan.emitted)
            return list(range(len(plan.inputs)))
        tree = plan.tree
        n = len(tree.tokens) + 1
        if argmax is not None:
            path, bonus = accept_greedy(tree.tokens, tree.parents, argmax[:n])
        else:
            rows = logits[:n]
            p = target_probs(rows if rows.dtype == torch.float64 else rows.float(), sampling)
            q = tree.probs.to(p) if tree.probs is not None else None
            path, bonus = accept_sampled(tree.tokens, tree.parents, p, q, row.generator)
            plan.target = p
        if self.cost_aware is not None:
            self.cost_aware.update_row(tree, path, plan.proposed_nodes)
        # Never step past the budget's trigger or the token limit: AR would stop there, so must we.
        limit = max_new_tokens if row.thinking_done else min(max_new_tokens, budget.trigger_at)
        emitted = self._truncate([tree.tokens[i] for i in path] + [bonus], result, limit, stop_tokens)
        if not emitted:   # (every step emits its bonus token at least: a step that does not would loop forever)
            raise RuntimeError(f"engine: a step emitted nothing ({len(result.tokens)} tokens, limit {limit})")
        plan.path = path[: len(emitted)]
        plan.emitted = emitted
        if not row.thinking_done and budget.end_token in emitted:
            row.thinking_done = True
        row.context.extend(emitted)
        result.tokens.extend(emitted)
        # Keep the root and the accepted nodes before the last emitted token (which becomes the next root).
        return [0] + [i + 1 for i in plan.path[: len(emitted) - 1]]

    def _observe(self, row: "_Row", plan: "_Plan", logits: torch.Tensor, kept: list[int], capture,
                 batch_row: int, top: torch.Tensor | None, distributions: tuple | None) -> None:
        tree = plan.tree
        if tree is None:
            hidden = capture.take(list(range(len(plan.inputs))), batch_row) if capture is not None else None
            row.drafter.observe(StepFeedback(list(plan.emitted), None, [], [], None, hidden=hidden))
            return
        n = len(tree.tokens) + 1
        aux_argmax = logits[n:n + len(tree.aux_tokens)].argmax(-1).tolist() if tree.aux_tokens else None
        hidden = capture.take(kept, batch_row) if capture is not None else None
        row.drafter.observe(StepFeedback(plan.emitted, tree, plan.path, plan.inputs[:n], top, aux_argmax, hidden,
                                         distributions))

    @staticmethod
    def _wanted(live: list["_Row"], plans: list["_Plan"], logits: torch.Tensor) -> list[tuple]:
        """Per row, (top-k ids, distributions) of the target at its verified positions (root + draft nodes), as its
        drafter asked (`wants_topk`, `wants_distributions`; None where not), each worked out for all rows in one op:
        on CPU, 8 rows' top-k one row at a time cost 5x one op over the 8 (0.7 against 0.12 ms, 49k vocabulary).
        Distributions: the one acceptance drew from when sampling (no second warping), else the softmax; as top-k
        ids and probabilities, on the CPU."""
        n = [len(plan.tree.tokens) + 1 if plan.tree is not None else 0 for plan in plans]
        tops, dists = [None] * len(plans), [None] * len(plans)
        k = max((row.drafter.wants_topk for row, m in zip(live, n) if m), default=0)
        if k:
            ids = topk(logits[:, :max(n)], k)[1]
            for b, (row, m) in enumerate(zip(live, n)):
                if m and row.drafter.wants_topk:
                    tops[b] = ids[b, :m, :row.drafter.wants_topk]
        wanting = [b for b, (row, m) in enumerate(zip(live, n)) if m and row.drafter.wants_distributions]
        if wanting:
            if plans[wanting[0]].target is not None:
                probs = torch.cat([plans[b].target[:n[b]] for b in wanting])
            else:
                probs = torch.cat([logits[b, :n[b]] for b in wanting]).float().softmax(-1)
            values, indices = topk(probs, max(live[b].drafter.wants_distributions for b in wanting))
            values, indices = values.float().cpu(), indices.cpu()
            at = 0
            for b in wanting:
                k = live[b].drafter.wants_distributions
                dists[b] = (indices[at:at + n[b], :k], values[at:at + n[b], :k])
                at += n[b]
        return list(zip(tops, dists))

    def _plan(self, tree: DraftTree, drafter: Drafter, context: list[int]) -> DraftTree:
        """Cost-aware verification: the part of the proposal (or the larger draft) worth its forward cost."""
        def extend(n: int) -> DraftTree | None:
            bigger = drafter.propose_more(context, tree, min(n, self.max_tree_nodes - len(tree.aux_tokens)))
            if bigger is None:
                return None
            bigger.validate(self.max_tree_nodes, self.vocab_size)
            k = len(tree.tokens)
            if bigger.tokens[:k] != tree.tokens or bigger.parents[:k] != tree.parents:
                raise DraftError(f"{drafter.name}: propose_more must keep the draft it extends as its first nodes")
            return bigger

        planned = self.cost_aware.plan(tree, len(context), extend)
        if planned is not tree:
            planned.validate(self.max_tree_nodes, self.vocab_size)
        return planned

    def _truncate(self, emitted: list[int], result: Generation, limit: int, stop_tokens) -> list[int]:
        emitted = emitted[: limit - len(result.tokens)]
        for j, tok in enumerate(emitted):
            if tok in stop_tokens:
                result.stopped = True
                return emitted[: j + 1]
        return emitted


@dataclass
class _Row:
    """One sequence of a batch."""
    prompt: list[int]
    drafter: Drafter | None        # its row's drafter, from when it joins the batch
    generator: torch.Generator | None
    thinking_done: bool
    started: float = 0.0           # when it joined the batch (the engine's clock)
    context: list[int] = field(default_factory=list)
    result: Generation = field(default_factory=Generation)
    # With record_margins: per step, the top-2 logits of the row's forward positions (on the device), which of them
    # chose the emitted tokens (None: a forced phrase) and how many tokens it emitted
    margin_steps: list = field(default_factory=list)

    def __post_init__(self):
        self.context = list(self.prompt)

    def keep_margins(self, top2: torch.Tensor, plan: "_Plan") -> None:
        picks = None if plan.tree is None else ([0] + [i + 1 for i in plan.path])[: len(plan.emitted)]
        self.margin_steps.append((top2[: len(plan.inputs)], picks, len(plan.emitted)))


def _longest_remaining(rows: list["_Row"], max_new_tokens: int) -> int:
    """Tokens the batch's furthest-behind row may still emit (a row that stopped has none left)."""
    return max(0 if row.result.stopped else max_new_tokens - len(row.result.tokens) for row in rows)


def _read_margins(rows: list[_Row], eps: float) -> None:
    """Every row's top-2 logits in one transfer from the device, then each emitted token's relative margin
    (top-1 - top-2) / (eps x |top-1|) into Generation.margins."""
    steps = [step for row in rows for step in row.margin_steps]
    values = torch.cat([top2 for top2, _, _ in steps]).double().tolist() if steps else []
    at = 0
    for row in rows:
        row.result.margins = []
        for top2, picks, emitted in row.margin_steps:
            if picks is None:
                row.result.margins += [float("inf")] * emitted
            else:
                row.result.margins += [_relative(*values[at + i], eps) for i in picks]
            at += len(top2)
        row.margin_steps = []


def _relative(top1: float, top2: float, eps: float) -> float:
    return (top1 - top2) / (max(abs(top1), 1e-30) * eps)


@dataclass
class _Plan:
    """What one row feeds one forward, and what came of it."""
    inputs: list[int]              # root + draft nodes + auxiliary nodes (or root + forced phrase[:-1])
    block: object                  # their visibility among themselves
    depths: list[int]
    tree: DraftTree | None         # None: a forced phrase
    emitted: list[int] | None      # the forced phrase; after acceptance, the emitted tokens
    source: str
    proposed: int
    started: float
    draft_seconds: float
    proposed_nodes: int = 0        # draft nodes (auxiliary excluded) the drafter proposed: the estimate's size class
    path: list[int] = field(default_factory=list)
    target: torch.Tensor | None = None   # when sampling: the target's distributions at root + draft nodes

    def use(self, root: int, tree: DraftTree) -> None:
        """Feed this (validated) draft after the root."""
        self.tree = tree
        self.inputs = [root] + tree.tokens + tree.aux_tokens
        self.block = draft_attention(tree)
        self.depths = [0] + tree.depths + tree.aux_depths
