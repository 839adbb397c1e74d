"""SuffixDecoding drafter (Oliaro et al., arXiv 2411.04975), as vLLM runs it (`method="suffix"`, arctic-inference).

Two suffix trees (`model.suffix.tree`): a local one over this sequence's prompt and output, rebuilt each sequence,
and the global one over earlier responses (`model.suffix.cache`), shared by every row of the run at the default
scope (global: all questions, samples and rounds). Each step both speculate from the context's last
`max_tree_depth` tokens: for every match of its last m tokens (m = 1 .. depth - 1) a draft follows the most frequent
continuation (or, with `use_tree_spec`, grows a tree best-first on the estimated probability, counts child / parent)
while that probability stays >= `min_token_prob`, at most `max_spec_factor` x m + `max_spec_offset` tokens (and
`num_speculative_tokens`); the draft with the largest summed probability wins, the local tree's on a tie.

When a response enters the global tree is a recorded option: by default when it completes (`end_sequence`), so a
row drafts from finished responses; with `live_responses` as it is generated, every step (vLLM's
`add_active_response`), so a row also drafts from its concurrent siblings' text so far (its own output is in both
trees then, as in vLLM). At question scope the global tree holds the question's responses only (cleared when the
question changes), and the rows of one question in a batch share one (the first row's) unless cross-sample
drafting is off.

The drafts are point masses (fixed tokens): the estimated probabilities rank them, they are not a distribution the
tokens were drawn from, so the engine's point-mass rule verifies them (lossless at any temperature). The last
draft's probabilities, score and match length stay in `last_draft`.
"""
from __future__ import annotations

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree
from .cache import ResponseCache
from .tree import Draft, SuffixTree

# vLLM's SpeculativeConfig defaults (suffix_decoding_*); arctic-inference's max_spec_offset, which vLLM leaves at 0.
MAX_TREE_DEPTH = 24
MAX_CACHED_REQUESTS = 10000
MAX_SPEC_FACTOR = 1.0
MAX_SPEC_OFFSET = 0.0
MIN_TOKEN_PROB = 0.1


class SuffixDrafter(Drafter):
    name = "suffix"
    default_scope = "global"
    memory_attributes = ("own",)   # the global tree: shared by every row at global scope

    def __init__(self, max_tree_depth: int = MAX_TREE_DEPTH, max_cached_requests: int = MAX_CACHED_REQUESTS,
                 max_spec_factor: float = MAX_SPEC_FACTOR, max_spec_offset: float = MAX_SPEC_OFFSET,
                 min_token_prob: float = MIN_TOKEN_PROB, num_speculative_tokens: int | None = None,
                 use_tree_spec: bool = False, live_responses: bool = False):
        if max_tree_depth < 1:
            raise ValueError(f"max_tree_depth must be at least 1, got {max_tree_depth}")
        if max_cached_requests < -1:
            raise ValueError(f"max_cached_requests must be -1 (no limit), 0 (no global tree) or positive, "
                             f"got {max_cached_requests}")
        if max_spec_factor < 0:
            raise ValueError(f"max_spec_factor must be >= 0, got {max_spec_factor}")
        if not 0 <= min_token_prob <= 1:
            raise ValueError(f"min_token_prob must lie in [0, 1], got {min_token_prob}")
        # vLLM: "Suffix decoding decides the actual number of speculative tokens dynamically and treats
        # num_speculative_tokens as a maximum limit", defaulting to the tree depth.
        num_speculative_tokens = max_tree_depth if num_speculative_tokens is None else num_speculative_tokens
        if num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be at least 1, got {num_speculative_tokens}")
        self.max_tree_depth = max_tree_depth
        self.max_cached_requests = max_cached_requests
        self.max_spec_factor = max_spec_factor
        self.max_spec_offset = max_spec_offset
        self.min_token_prob = min_token_prob
        self.num_speculative_tokens = num_speculative_tokens
        self.use_tree_spec = use_tree_spec
        self.live_responses = live_responses
        self.own = ResponseCache(max_tree_depth, max_cached_requests)
        self.cache = self.own         # the global tree this row reads and feeds (a sibling's at question scope)
        self._begin()
        self.last_draft: Draft | None = None

    def _begin(self) -> None:
        self.local: SuffixTree | None = None
        self.response: list[int] = []
        self.slot = None
        self.open = False

    def reset(self) -> None:
        self.cache = self.own
        self.own.clear()
        self._begin()

    def share_with(self, siblings: list[Drafter]) -> None:
        """Cross-sample drafting at question scope: the rows of one question read and feed one global tree, the
        first-forked row's (at global scope every row's `own` is already the same tree)."""
        group = [self] + [s for s in siblings if isinstance(s, SuffixDrafter)]
        self.cache = min(group, key=lambda d: d.fork_index).own

    def begin_sequence(self, prompt: list[int]) -> None:
        self._close()   # (a sequence replayed into the drafter without end_sequence enters the cache now)
        self.local = SuffixTree(self.max_tree_depth)
        self.local.extend(0, prompt)
        self.open = True
        if self.live_responses:
            self.slot = self.cache.open()

    def observe(self, feedback: StepFeedback) -> None:
        emitted = feedback.emitted
        self.local.extend(0, emitted)
        self.response.extend(emitted)
        if self.live_responses:
            self.cache.extend(self.slot, emitted)

    def end_sequence(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.open and not self.live_responses:
            self.cache.add(self.response)
        self.response, self.slot, self.open = [], None, False

    def speculate(self, tokens: list[int], max_nodes: int) -> tuple[Draft, str]:
        """The better of the local and the global tree's drafts (the local one's on a tie), and which it is."""
        limit = min(self.num_speculative_tokens, max_nodes)
        pattern = tokens[-self.max_tree_depth:]
        args = (limit, self.max_spec_factor, self.max_spec_offset, self.min_token_prob, self.use_tree_spec)
        local = self.local.speculate(pattern, *args)
        tree = self.cache.tree
        shared = tree.speculate(pattern, *args) if len(tree) else Draft()
        return (local, "suffix_local") if local.score >= shared.score else (shared, "suffix_global")

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        if self.local is None or max_nodes <= 0:
            return None
        draft, source = self.speculate(tokens, max_nodes)
        self.last_draft = draft
        return DraftTree(list(draft.tokens), list(draft.parents), source=source) if draft.tokens else None

    def propose_more(self, tokens: list[int], tree: DraftTree, max_nodes: int) -> DraftTree | None:
        """The same match followed further than it earned, up to num_speculative_tokens (cost-aware verification
        asks when a wider forward costs no more than this draft's)."""
        draft = self.last_draft
        if draft is None or tree.source not in ("suffix_local", "suffix_global") or tree.tokens != draft.tokens:
            return None
        index = self.local if tree.source == "suffix_local" else self.cache.tree
        more = index.continue_match(tokens[-self.max_tree_depth:], draft.match_len,
                                    min(max_nodes, self.num_speculative_tokens), self.min_token_prob,
                                    self.use_tree_spec)
        k = len(tree.tokens)
        if len(more.tokens) <= k or more.tokens[:k] != tree.tokens or more.parents[:k] != tree.parents:
            return None
        return DraftTree(list(more.tokens), list(more.parents), source=tree.source)

    def max_draft_nodes(self) -> int:
        return self.num_speculative_tokens

    def parameters(self) -> dict:
        return {"max_tree_depth": self.max_tree_depth, "max_cached_requests": self.max_cached_requests,
                "max_spec_factor": self.max_spec_factor, "max_spec_offset": self.max_spec_offset,
                "min_token_prob": self.min_token_prob, "num_speculative_tokens": self.num_speculative_tokens,
                "use_tree_spec": self.use_tree_spec,
                "global_tree_feed": "live" if self.live_responses else "completed",
                "reference": "arctic-inference 0.3.0 SuffixDecodingCache (vLLM method='suffix')"}
