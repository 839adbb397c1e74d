"""SAM-Decoding: draft by retrieval from suffix automata over the text seen so far and a static corpus.

Per step, following SAM-Decoding's `DraftModel.lookup`:
  * dynamic match: the longest suffix of the current sequence that occurred earlier in everything seen
    since the last reset (earlier rounds/samples of the question included);
  * static match: the longest suffix of the current sequence found in the static corpus, minus
    `len_bias` (SAM-Decoding's handicap for the static automaton);
  * cross-sample match (in a batch, with the drafters of concurrent samples of the same question shared): the
    longest suffix of the current sequence found in what each sibling has seen so far, its own sample included;
    it competes with the dynamic match (ties go to the own text);
  * if neither reaches `len_threshold`, the fallback drafter proposes (SAM[EAGLE-3]); with no fallback
    there is no draft. Otherwise the larger match wins (ties go to the dynamic automaton) and the draft
    is a chain: the tokens that followed the first occurrence of the matched suffix.

Draft length (SAM-Decoding's `gen_dyn_draft` rule, which counts the root token in n_predicts):
    nodes = min(n_predicts, 1 + int(alpha * match_length)) - 1, capped by max_nodes and by the text
    that exists after the occurrence.
(With an auxiliary drafter SAM-Decoding always drafts n_predicts - 1; alpha=1e9 reproduces that.)
When the first occurrence sits too close to the end to supply that many tokens (a loop repeating
itself), we move to shorter suffixes, whose first occurrences are earlier, as SAM-Decoding's `to_anc`
does, but never to one shorter than the threshold and for at most n_predicts links.
"""
from __future__ import annotations

from ..engine.drafter import Drafter, StepFeedback
from ..engine.tree import DraftTree
from ..errors import UserError
from .automaton import Matcher, SuffixAutomaton
from .static_sam import StaticSam

FALLBACK = object()   # `_own`: no match; the fallback drafter proposes


class SamDrafter(Drafter):
    name = "samd"
    default_scope = "question"
    shared_attributes = ("static",)

    def __init__(self, n_predicts: int = 40, len_threshold: int = 5, len_bias: int = 5,
                 static: StaticSam | None = None, alpha: float = 4.0, fallback: Drafter | None = None):
        if n_predicts < 2:
            raise UserError(f"n_predicts must be at least 2 (the root plus one draft token), got {n_predicts}")
        if len_threshold < 1:
            raise UserError(f"len_threshold must be at least 1, got {len_threshold}")
        if len_bias < 0 or not alpha > 0:
            raise UserError(f"len_bias must be >= 0 and alpha > 0, got {len_bias} and {alpha}")
        self.n_predicts = n_predicts
        self.len_threshold = len_threshold
        self.len_bias = len_bias
        self.alpha = alpha
        self.static = static
        self.static_matcher = Matcher(static.automaton) if static is not None else None
        self.fallback = fallback
        self.wants_topk = fallback.wants_topk if fallback is not None else 0
        self.hidden_layers = fallback.hidden_layers if fallback is not None else ()
        self.dynamic = SuffixAutomaton()
        self.sequence_length = 0   # tokens of the current sequence: a match may not reach before it
        self.prompt_length = 0     # ... of which the prompt: a sibling shares it, so a match with a sibling counts
                                   # only what this row generated (siblings' matches would otherwise always win,
                                   # with the longest drafts, from the first token on)
        self._match = None         # (automaton, state, shortest suffix allowed, source) of the last own draft
        self.siblings: list[tuple[SamDrafter, Matcher]] = []   # concurrent samples' drafters, our stream in theirs

    def shared_objects(self) -> list:
        return [self.static.automaton] if self.static is not None else []

    def share_with(self, siblings: list[Drafter]) -> None:
        self.siblings = [(s, Matcher(s.dynamic)) for s in siblings if isinstance(s, SamDrafter)]

    def reset(self) -> None:
        self.dynamic = SuffixAutomaton()
        self.sequence_length = self.prompt_length = 0
        self.siblings = []
        if self.static_matcher is not None:
            self.static_matcher.reset()
        if self.fallback is not None:
            self.fallback.reset()

    def use_sampling(self, sampling, generator) -> None:
        if self.fallback is not None:
            self.fallback.use_sampling(sampling, generator)

    def begin_sequence(self, prompt: list[int]) -> None:
        self.dynamic.extend_all(prompt)
        self.sequence_length = self.prompt_length = len(prompt)
        for _, matcher in self.siblings:
            matcher.reset()
            for token in prompt:
                matcher.advance(token)
        if self.static_matcher is not None:
            self.static_matcher.reset()
            for token in prompt:
                self.static_matcher.advance(token)
        if self.fallback is not None:
            self.fallback.begin_sequence(prompt)

    def end_sequence(self) -> None:
        if self.fallback is not None:
            self.fallback.end_sequence()

    def observe_prompt(self, hidden) -> None:
        if self.fallback is not None:
            self.fallback.observe_prompt(hidden)

    def observe(self, feedback: StepFeedback) -> None:
        extend = self.dynamic.extend
        matcher = self.static_matcher
        for token in feedback.emitted:
            extend(token)
            if matcher is not None:
                matcher.advance(token)
        for _, sibling in self.siblings:
            for token in feedback.emitted:
                sibling.advance(token)
        self.sequence_length += len(feedback.emitted)
        if self.fallback is not None:
            self.fallback.observe(feedback)

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        tree = self._own(max_nodes)
        return self.fallback.propose(tokens, max_nodes) if tree is FALLBACK else tree

    def _own(self, max_nodes: int):
        """The automata's draft, or FALLBACK when no match reaches the threshold (None: no draft at all)."""
        dyn_state, dyn_length = self.dynamic.repeat_match()
        # Our own text, or a concurrent sibling's: the longest match wins, the first (our own) on a tie.
        length, automaton, state, source = max(
            [(min(dyn_length, self.sequence_length), self.dynamic, dyn_state, "sam_dyn")] +
            [(min(m.length, self.sequence_length - self.prompt_length), s.dynamic, m.state, "sam_sibling")
             for s, m in self.siblings], key=lambda match: match[0])
        static_length = self.static_matcher.length - self.len_bias if self.static_matcher is not None else -1
        if max(length, static_length) < self.len_threshold:
            return FALLBACK if self.fallback is not None else None
        if length >= static_length:
            self._match = (automaton, state, self.len_threshold, source)
            want = self.draft_length(length)
        else:
            self._match = (self.static.automaton, self.static_matcher.state, self.len_threshold + self.len_bias,
                           "sam_static")
            want = self.draft_length(self.static_matcher.length)
        return self._draft(min(want, max_nodes))

    def propose_rows(self, rows: list["SamDrafter"], contexts: list[list[int]], max_nodes: int) -> list:
        """Each row's own match; the rows without one ask their fallback drafters together (EAGLE-3's head runs
        once per level for all of them)."""
        if self.fallback is None:
            return [d.propose(tokens, max_nodes) for d, tokens in zip(rows, contexts)]
        trees, missing = [], []
        for i, (d, tokens) in enumerate(zip(rows, contexts)):
            tree = d._own(max_nodes)
            trees.append(tree)
            if tree is FALLBACK:
                missing.append(i)
        if missing:
            asked = self.fallback.propose_rows([rows[i].fallback for i in missing], [contexts[i] for i in missing],
                                               max_nodes)
            for i, tree in zip(missing, asked):
                trees[i] = tree
        return trees

    def _draft(self, want: int) -> DraftTree | None:
        automaton, state, min_length, source = self._match
        draft = self._continuation(automaton, state, want, min_length)
        return DraftTree.chain(draft, source) if draft else None

    def propose_more(self, tokens: list[int], tree: DraftTree, max_nodes: int) -> DraftTree | None:
        """The same match's continuation, further (cost-aware verification asks when a wider forward is no dearer)."""
        if tree.source in ("sam_dyn", "sam_sibling", "sam_static"):
            bigger = self._draft(max_nodes)
            # A shorter suffix may hold the longer continuation; it must still begin with the draft.
            return bigger if bigger is not None and bigger.tokens[:len(tree.tokens)] == tree.tokens else None
        return self.fallback.propose_more(tokens, tree, max_nodes) if self.fallback is not None else None

    def max_draft_nodes(self) -> int | None:
        own = self.n_predicts - 1
        if self.fallback is None:
            return own
        other = self.fallback.max_draft_nodes()
        return None if other is None else max(own, other)

    def draft_length(self, match_length: int) -> int:
        """Draft nodes for a match of this length (the root token is not a node)."""
        return min(self.n_predicts, 1 + int(self.alpha * match_length)) - 1

    def _continuation(self, automaton: SuffixAutomaton, state: int, want: int, min_length: int) -> list[int]:
        tokens, link, length, first_end = automaton.tokens, automaton.link, automaton.length, automaton.first_end
        end, last = first_end[state], len(tokens) - 1
        for _ in range(self.n_predicts):
            if last - end >= want:
                break
            parent = link[state]
            if length[parent] < min_length:
                break
            state, end = parent, first_end[parent]
        return tokens[end + 1:end + 1 + want]

    def parameters(self) -> dict:
        params = {"n_predicts": self.n_predicts, "len_threshold": self.len_threshold, "len_bias": self.len_bias,
                  "alpha": self.alpha,
                  "static_sam": self.static.path if self.static is not None else None,
                  "static_sam_tokens": len(self.static) if self.static is not None else 0}
        if self.fallback is not None:
            params["fallback"] = {"name": self.fallback.name, **self.fallback.parameters()}
        return params
