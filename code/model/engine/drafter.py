"""The drafter interface: every method is only this.

The engine asks `propose` for a tree over the current context, verifies it, and reports back with
`observe`. Drafters keep whatever index they need incrementally; `tokens` is the live context list
(prompt + emitted tokens) and must not be modified.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .sampling import SamplingConfig
from .tree import DraftTree


@dataclass
class StaticSettings:
    """What a drafter's own model needs to run in the engine's static mode: the KV entries a row may hold at most
    (prompt + max new tokens + the widest forward) and the key-length bucket."""
    capacity: int
    kv_bucket: int


@dataclass
class StepFeedback:
    """What one verification step tells a drafter."""
    emitted: list[int]                  # accepted draft tokens + the bonus token, already appended to the context
    # The draft that was verified (empty: nothing verified; None: forced tokens). With cost-aware verification it may
    # be a part of the proposal (its best nodes, renumbered) or the larger draft `propose_more` gave.
    tree: DraftTree | None
    accepted_nodes: list[int]           # indices of the accepted draft nodes, in order
    input_tokens: list[int]             # root + tree tokens, as fed to the target (auxiliary nodes excluded)
    topk: torch.Tensor | None = None    # [len(input_tokens), k] target top-k ids, when the drafter asks for them
    aux_argmax: list[int] | None = None  # the target's argmax at each auxiliary node of the draft
    # [len(emitted), layers x hidden]: the target's states (at `hidden_layers`) at the position before each emitted
    # token, i.e. those that predicted it; for drafters that ask for them
    hidden: torch.Tensor | None = None
    # With `wants_distributions` = k: the target's next-token distribution at each input position (root, then every
    # draft node, accepted or not; at temperature > 0 the one acceptance draws from: temperature, top-p and top-k
    # applied; at temperature 0 the softmax of the logits), as its top-k: ids [len(input_tokens), k] and
    # probabilities [len(input_tokens), k] (float32, on the CPU)
    distributions: tuple[torch.Tensor, torch.Tensor] | None = None


class Drafter:
    name = "ar"
    # How long learned state lives by default: "sequence" (one round/sample), "question", or "global".
    default_scope = "sequence"
    # >0: the engine computes the target's top-k token ids at every verified position for `observe`.
    wants_topk = 0
    # >0: the engine hands `observe` the target's distribution before each emitted token, as its top-k (STAND).
    wants_distributions = 0
    # Target layers whose hidden states (`hidden_states[i]` of output_hidden_states: the input of layer i) the
    # engine hands over at every position the context keeps: the prompt, accepted and forced tokens (EAGLE-3).
    hidden_layers: tuple[int, ...] = ()
    # Attributes every row of a batch shares by reference: read-only resources (corpora, static indexes; models are
    # always shared). `memory_attributes`: what a drafter learns across sequences, shared too at global scope.
    shared_attributes: tuple[str, ...] = ()
    memory_attributes: tuple[str, ...] = ()
    fork_index = 0   # 0: the method's drafter; its forks count up, in the order they were made (rows 1, 2, ...)
    _forks = 0

    def fork(self, share_memory: bool = False) -> "Drafter":
        """A drafter for another row of a batch: its own per-sequence state, the same resources and models (and,
        with `share_memory`, the same learned memory). A drafter held by this one (a fallback) is forked too."""
        memo = {}
        names = self.shared_attributes + (self.memory_attributes if share_memory else ())
        for name, value in vars(self).items():
            if isinstance(value, torch.nn.Module) or name in names:
                memo[id(value)] = value
            elif isinstance(value, Drafter):
                memo[id(value)] = value.fork(share_memory)
        for value in self.shared_objects():
            memo[id(value)] = value
        twin = copy.deepcopy(self, memo)
        Drafter._forks += 1
        twin.fork_index = Drafter._forks
        return twin

    def shared_objects(self) -> list:
        """Objects inside shared attributes that other attributes also point at (kept shared as well)."""
        return []

    def share_with(self, siblings: list["Drafter"]) -> None:
        """The drafters of the other rows decoding samples of the same question in this batch (empty: none, or
        cross-sample drafting is off). A question-scope drafter may draft from what they generate."""

    def reset(self) -> None:
        """Forget everything learned (called at the boundaries of the chosen state scope)."""

    def use_engine(self, static: "StaticSettings | None") -> None:
        """The engine's static-mode settings (None: eager mode), given before each sequence: a drafter that runs a
        model (SpS) runs it in the same mode."""

    def use_sampling(self, sampling: SamplingConfig, generator: torch.Generator | None) -> None:
        """The run's sampling settings and random stream, given before each sequence. A drafter that draws its
        draft from a model (SpS) draws from the same warped distribution, with the engine's seeded generator."""

    def begin_sequence(self, prompt: list[int]) -> None:
        """A new round or sample starts with this prompt; the context list will start as a copy of it."""

    def observe_prompt(self, hidden: torch.Tensor) -> None:
        """With `hidden_layers`: hidden[j] is the target's states at prompt position j (all but the last)."""

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        return None

    def propose_rows(self, rows: list["Drafter"], contexts: list[list[int]], max_nodes: int) -> list[DraftTree | None]:
        """The proposals of several batch rows at once (`self` is rows[0]; every row's drafter is of this class and
        its own object). A drafter with a draft model overrides this to run it once per drafting step for all rows."""
        return [drafter.propose(tokens, max_nodes) for drafter, tokens in zip(rows, contexts)]

    def propose_more(self, tokens: list[int], tree: DraftTree, max_nodes: int) -> DraftTree | None:
        """Cost-aware verification found a wider forward no dearer than this draft's: a larger draft of at most
        `max_nodes` nodes whose first len(tree) nodes are `tree`'s, or None when this drafter cannot give more."""
        return None

    def end_sequence(self) -> None:
        """This row's sequence ended (a stop token or the token limit): it has left its batch."""

    def max_draft_nodes(self) -> int | None:
        """The most nodes (auxiliary included) one proposal can hold; None: up to the engine's cap. The target's
        forward cost is profiled up to twice this."""
        return 0 if type(self).propose is Drafter.propose else None   # the AR baseline never drafts

    def observe(self, feedback: StepFeedback) -> None:
        """The emitted tokens were appended to the context."""

    def parameters(self) -> dict:
        """Method parameters, recorded in the run configuration."""
        return {}
