"""The one verification engine: tree attention over any Hugging Face causal LM, KV rollback, acceptance.

Each step feeds the root (the last emitted token, not yet in the cache) plus the draft tree in one
forward, accepts the longest valid path, keeps the KV entries of root + accepted nodes and emits the
accepted tokens plus one bonus token. With no draft this is exactly autoregressive decoding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cost import CostAwareVerifier
from .drafter import Drafter, StepFeedback
from .hidden import HiddenCapture
from .kv_cache import PositionalKVCache
from .sampling import SamplingConfig, accept_greedy, accept_sampled, target_probs
from .tree import DraftError, DraftTree, draft_attention

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


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    forced_tokens: int = 0
    stopped: bool = False   # ended on a stop token (rather than the token budget)

    @property
    def accept_lengths(self) -> list[int]:
        """Tokens per decoding step (forced steps excluded: no drafting or acceptance happened there)."""
        return [s.accepted for s in self.steps if s.source != "forced"]


class SpeculativeEngine:
    def __init__(self, model, max_tree_nodes: int = 128, cache_capacity: int = 2048,
                 cost_aware: CostAwareVerifier | None = None):
        self.model = model
        self.cost_aware = cost_aware   # None: verify every proposal whole, as each method was published
        self.device = next(model.parameters()).device
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_tree_nodes = max_tree_nodes
        self.cache_capacity = cache_capacity
        # SDPA takes a boolean mask; eager attention adds the mask to the scores, so it needs 0 / -inf.
        self.additive_mask = getattr(model.config, "_attn_implementation", "sdpa") != "sdpa"
        devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
        self.synchronize = (lambda: [torch.cuda.synchronize(d) for d in devices]) if devices else (lambda: None)

    def clock(self) -> float:
        """Seconds, read after the device finished its queued work (else GPU time lands in the wrong bucket)."""
        self.synchronize()
        return time.perf_counter()

    def _forward(self, cache: PositionalKVCache, input_ids: list[int], block: torch.Tensor,
                 depths: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """One target forward of `input_ids` on top of the cache; `block` is their [n, n] visibility."""
        past, n = cache.get_seq_length(), len(input_ids)
        mask = torch.ones(1, 1, n, past + n, dtype=torch.bool, device=self.device)
        mask[0, 0, :, past:] = block
        if self.additive_mask:
            dtype = self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        out = self.model(
            input_ids=torch.tensor([input_ids], device=self.device),
            attention_mask=mask,
            position_ids=(depths + past).unsqueeze(0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits[0]

    def _append(self, cache: PositionalKVCache, tokens: list[int]) -> None:
        """Add tokens to the cache without looking at their logits (prefill, forced phrases)."""
        if tokens:
            n = len(tokens)
            causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
            self._forward(cache, tokens, causal, torch.arange(n, device=self.device), logits_to_keep=1)

    @torch.inference_mode()
    def generate(self, prompt: list[int], drafter: Drafter, max_new_tokens: int, sampling: SamplingConfig,
                 generator: torch.Generator | None = None, stop_tokens: set[int] = frozenset(),
                 budget: ThinkingBudget | None = None) -> Generation:
        if not prompt:
            raise ValueError("empty prompt")
        capture = HiddenCapture(self.model, drafter.hidden_layers) if drafter.hidden_layers else None
        try:
            return self._generate(prompt, drafter, max_new_tokens, sampling, generator, stop_tokens, budget, capture)
        finally:
            if capture is not None:
                capture.remove()

    def _generate(self, prompt, drafter, max_new_tokens, sampling, generator, stop_tokens, budget, capture):
        cache = PositionalKVCache(capacity=len(prompt) + min(max_new_tokens, self.cache_capacity) + self.max_tree_nodes + 1)
        context = list(prompt)
        result = Generation()
        drafter.use_sampling(sampling, generator)
        drafter.begin_sequence(list(prompt))
        if self.cost_aware is not None:
            self.cost_aware.begin_sequence()
        self._append(cache, context[:-1])
        if capture is not None and len(context) > 1:
            drafter.observe_prompt(capture.take())
        thinking_done = budget is None

        while len(result.tokens) < max_new_tokens and not result.stopped:
            if not thinking_done and len(result.tokens) >= budget.trigger_at:
                self._force(cache, context, result, drafter, budget.phrase[: max_new_tokens - len(result.tokens)],
                            capture)
                thinking_done = True
                continue

            t0 = self.clock()
            drafted = self.cost_aware is None or self.cost_aware.should_draft()
            tree = drafter.propose(context, self.max_tree_nodes) if drafted else SKIPPED
            if tree is None:  # (not `or`: an empty tree may still carry auxiliary nodes)
                tree = NO_DRAFT
            tree.validate(self.max_tree_nodes, self.vocab_size)
            proposed = tree.size
            if self.cost_aware is not None:
                tree = self._plan(tree, drafter, context)
            t1 = self.clock()

            input_ids = [context[-1]] + tree.tokens
            block = torch.from_numpy(draft_attention(tree)).to(self.device)
            depths = torch.tensor([0] + tree.depths + tree.aux_depths, device=self.device)
            past = cache.get_seq_length()
            all_logits = self._forward(cache, input_ids + tree.aux_tokens, block, depths)
            logits = all_logits[: len(input_ids)]
            if sampling.greedy:
                path, bonus = accept_greedy(tree.tokens, tree.parents, logits.argmax(-1).tolist())
            else:
                p = target_probs(logits if logits.dtype == torch.float64 else logits.float(), sampling)
                q = tree.probs.to(p) if tree.probs is not None else None
                path, bonus = accept_sampled(tree.tokens, tree.parents, p, q, generator)
            if self.cost_aware is not None:
                self.cost_aware.update(tree, path)
            # Never step past the budget's trigger or the token limit: AR would stop there, so must we.
            limit = max_new_tokens if thinking_done else min(max_new_tokens, budget.trigger_at)
            emitted = self._truncate([tree.tokens[i] for i in path] + [bonus], result, limit, stop_tokens)
            path = path[: len(emitted)]
            # Keep the root and the accepted nodes before the last emitted token (which becomes the next root).
            kept = [0] + [i + 1 for i in path[: len(emitted) - 1]]
            cache.keep(past, kept, self.device)
            t2 = self.clock()

            if not thinking_done and budget.end_token in emitted:
                thinking_done = True
            context.extend(emitted)
            result.tokens.extend(emitted)
            topk = logits.topk(drafter.wants_topk, dim=-1).indices if drafter.wants_topk else None
            aux_argmax = all_logits[len(input_ids):].argmax(-1).tolist() if tree.aux_tokens else None
            hidden = capture.take(kept) if capture is not None else None
            drafter.observe(StepFeedback(emitted, tree, path, input_ids, topk, aux_argmax, hidden))
            t3 = self.clock()
            if self.cost_aware is not None:
                self.cost_aware.record_forward(len(input_ids) + len(tree.aux_tokens), t2 - t1)
                self.cost_aware.record_step(proposed, len(emitted), t3 - t0, len(context),
                                            len(tree.tokens))
            result.steps.append(StepRecord(tree.size, len(emitted), tree.source, (t1 - t0) + (t3 - t2), t2 - t1,
                                           len(context), proposed))
        return result

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

    def _force(self, cache, context, result, drafter, phrase: list[int], capture) -> None:
        """Teacher-force the thinking-budget phrase: one forward, no drafting, recorded as a 'forced' step."""
        if not phrase:
            return
        t0 = self.clock()
        self._append(cache, [context[-1]] + phrase[:-1])
        context.extend(phrase)
        result.tokens.extend(phrase)
        result.forced_tokens += len(phrase)
        hidden = capture.take() if capture is not None else None
        drafter.observe(StepFeedback(list(phrase), None, [], [], None, hidden=hidden))
        t1 = self.clock()
        result.steps.append(StepRecord(0, len(phrase), "forced", 0.0, t1 - t0, len(context)))
