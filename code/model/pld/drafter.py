"""Prompt lookup decoding (PLD): draft by copying what followed an earlier occurrence of the suffix.

Matching: for n = max_ngram down to min_ngram, look up the last n tokens of the context (prompt +
generated) and take the most recent EARLIER occurrence; the first order that matches wins. The
draft is the chain of tokens that followed that occurrence. When the occurrence is so recent that
its continuation runs into the suffix itself (a loop with period p), the copy continues
periodically, as an overlapping copy would, so a match always yields a full-length draft. (The seed
scans with `unfold` and takes the earliest occurrence that has a full num_pred_tokens continuation.)

Index: one dict maps each n-gram tuple (all orders) to its latest start position. It covers the
n-grams ending before the last token only, so the lookup of the current suffix can never return
the suffix itself; each new token adds its max_ngram - min_ngram + 1 entries once, so the cost per
step does not depend on the context length.

Adaptive length (adaptive=True). Verifying a draft costs target compute per drafted token, which
on CPU is what makes always-10-token PLD slower than plain decoding. Per n-gram order n we keep:
  * length[n], starting at num_pred_tokens // 2: after a draft of k tokens with a accepted,
    a == k  -> length += 2 (at most num_pred_tokens)
    a < k   -> length = max(1, length - 1)   (transformers' assistant heuristic)
    Shrinking by one rather than down to a + 1: on the CPU a forward of 2..8 tokens costs about the
    same (~1.45x one token, measured on SmolLM2), so a short draft saves little and a long match
    that failed once is usually good again (4 demo questions x 128 tokens: 1.40x AR, 1.11x transformers PLD).
  * hit[n], an exponential average (weight 0.2, start 0.5) of "the first drafted token was
    accepted". While hit[n] < min_hit_rate, matches of order n are not proposed; the candidate's
    first token is still compared with the token the target emits, so the average keeps learning
    at no cost and the order reopens once its matches start being right again. This mostly
    silences 1-gram matches in text where they fail.
adaptive=False is the plain behaviour: every match proposes num_pred_tokens tokens.
Learned lengths and hit rates are cleared by reset(); begin_sequence() only rebuilds the index.
"""
from __future__ import annotations

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree

HIT_EMA_WEIGHT = 0.2
HIT_START = 0.5


class PromptLookupDrafter(Drafter):
    name = "pld"
    default_scope = "sequence"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, num_pred_tokens: int = 10,
                 adaptive: bool = True, min_hit_rate: float = 0.2):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        if num_pred_tokens < 1:
            raise ValueError("num_pred_tokens must be >= 1")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.num_pred_tokens = num_pred_tokens
        self.adaptive = adaptive
        self.min_hit_rate = min_hit_rate
        self._orders = range(max_ngram, min_ngram - 1, -1)   # longest first
        self.reset()

    # -- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.draft_length = {n: max(1, self.num_pred_tokens // 2) for n in self._orders}
        self.hit_rate = {n: HIT_START for n in self._orders}
        self._clear_index()

    def _clear_index(self) -> None:
        self._context: list[int] = []
        self._last_start: dict[tuple[int, ...], int] = {}
        self._pending = None   # (order, first candidate token, drafted length) of the last lookup
        self._begin = None     # where the last draft was copied from

    def begin_sequence(self, prompt: list[int]) -> None:
        self._clear_index()
        self._extend(prompt)

    def _extend(self, new_tokens: list[int]) -> None:
        context = self._context
        first_new = len(context)
        context.extend(new_tokens)
        index = self._last_start
        low, high = self.min_ngram, self.max_ngram
        # Index the n-grams ending at first_new - 1 .. len - 2; those ending at the last token wait a step.
        for end in range(max(first_new - 1, 0), len(context) - 1):
            stop = end + 1
            for n in range(low, min(high, stop) + 1):
                index[tuple(context[stop - n: stop])] = stop - n

    # -- drafting ----------------------------------------------------------------------------
    def find(self, tokens: list[int]) -> tuple[int, int] | None:
        """(order, start of the continuation) of the best earlier match of the suffix, or None."""
        length = len(tokens)
        index = self._last_start
        for n in self._orders:
            if n < length:
                start = index.get(tuple(tokens[length - n:]))
                if start is not None:
                    return n, start + n
        return None

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        if len(tokens) > len(self._context):
            self._extend(tokens[len(self._context):])   # callers that only hand over the growing list
        self._pending = self._begin = None
        match = self.find(tokens)
        if match is None:
            return None
        order, begin = match
        if not self.adaptive:
            want = self.num_pred_tokens
        elif self.hit_rate[order] < self.min_hit_rate:
            self._pending = (order, tokens[begin], 0)   # not drafted: only shadow-checked
            return None
        else:
            want = self.draft_length[order]
        want = min(want, max_nodes)
        if want <= 0:
            return None
        draft = self._copy(tokens, begin, want)
        if self.adaptive:
            self._pending = (order, draft[0], want)
        self._begin = begin
        return DraftTree.chain(draft, source="pld")

    @staticmethod
    def _copy(tokens: list[int], begin: int, want: int) -> list[int]:
        draft = tokens[begin: begin + want]
        if len(draft) < want:
            period = len(draft)   # the copy runs into the suffix: continue the loop
            draft = (draft * (want // period + 1))[:want]
        return draft

    def propose_more(self, tokens: list[int], tree: DraftTree, max_nodes: int) -> DraftTree | None:
        """The same match, copied further (cost-aware verification asks when a wider forward is no dearer)."""
        if self._begin is None or tree.source != "pld":
            return None
        return DraftTree.chain(self._copy(tokens, self._begin, max_nodes), source="pld")

    def max_draft_nodes(self) -> int:
        return self.num_pred_tokens

    def observe(self, feedback: StepFeedback) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and feedback.emitted:
            self._learn(pending, feedback)
        self._extend(feedback.emitted)

    def _learn(self, pending: tuple[int, int, int], feedback: StepFeedback) -> None:
        order, first, drafted = pending
        if drafted:
            if feedback.tree is not None:
                drafted = len(feedback.tree.tokens)   # what was verified (cost-aware verification may cut or extend)
            accepted = len(feedback.accepted_nodes)
            hit = accepted > 0
            if accepted >= drafted:
                self.draft_length[order] = min(self.num_pred_tokens, self.draft_length[order] + 2)
            else:
                self.draft_length[order] = max(1, self.draft_length[order] - 1)
        else:
            hit = feedback.emitted[0] == first
        self.hit_rate[order] += HIT_EMA_WEIGHT * (hit - self.hit_rate[order])

    def parameters(self) -> dict:
        return {"max_ngram": self.max_ngram, "min_ngram": self.min_ngram,
                "num_pred_tokens": self.num_pred_tokens, "adaptive": self.adaptive,
                "min_hit_rate": self.min_hit_rate}
