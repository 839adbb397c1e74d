"""The thinking budget on both of its branches, float64 greedy on a tiny thinking model: a model that closes its
thinking itself before the trigger is never forced (its output is its own, exactly AR's without any budget), one
that does not is forced the phrase at the trigger, for AR, an n-gram drafter, a tree drafter and two drafters that
put the closing token inside an accepted draft.

The model is steered to close its thinking at a chosen position p of its free output: the lm_head row of `</think>`
is set to the part of the final hidden state at p that is orthogonal to every earlier one, scaled so that its logit
there beats the argmax by 5. At every earlier position its logit is then 0 (below every argmax, which is positive),
so the output up to p is unchanged and token p is `</think>`."""
import copy
import functools

import pytest
import torch

from conftest import make_tokenizer, tiny_model
from evaluation.run import paradigms
from methods import METHODS, assert_drafted, vocab_of
from model.engine import Drafter, DraftTree, SamplingConfig, SpeculativeEngine

SEED = 1              # a tiny Qwen3 whose output repeats (drafts get accepted)
SHORT, LONG = 50, 100   # max new tokens: the trigger at 40 and 80 (the phrase, 74 tokens, is cut at the limit)
QUESTION = "What is the sum of two and three? The answer is 5."
METHOD_NAMES = ("ar", "pld", "recycling", "oracle-chain", "oracle-tree")
# The drafters whose drafts are sometimes rejected (the oracle chain is always right): identity through a rollback.
REJECTING = ("pld", "recycling", "oracle-tree")


@functools.lru_cache(maxsize=None)
def tokenizer():
    return make_tokenizer(thinking=True)


def end_token() -> int:
    return tokenizer().convert_tokens_to_ids(paradigms.THINK_END)


def prompt() -> list[int]:
    return paradigms.encode_prompt(tokenizer(), [{"role": "user", "content": QUESTION}])


def budget(max_new_tokens: int):
    return paradigms.thinking_budget(tokenizer(), max_new_tokens)


def greedy(model, drafter, max_new_tokens, thinking_budget):
    return SpeculativeEngine(model).generate(prompt(), drafter, max_new_tokens, SamplingConfig(),
                                             budget=thinking_budget)


@functools.lru_cache(maxsize=None)
def never_closing():
    """The tiny model with no way to end on its own: `</think>` and eos can never win."""
    model = copy.deepcopy(tiny_model("qwen3", seed=SEED))
    with torch.no_grad():
        for token in (end_token(), tokenizer().eos_token_id):
            model.get_output_embeddings().weight[token] = 0
    return model


def final_states(model, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The final-norm hidden states and logits at the positions that predicted each of `tokens` (after the prompt)."""
    states = []
    hook = model.model.norm.register_forward_hook(lambda module, inputs, output: states.append(output))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([prompt() + tokens[:-1]])).logits[0, len(prompt()) - 1:]
    finally:
        hook.remove()
    return states[0][0, len(prompt()) - 1:], logits


@functools.lru_cache(maxsize=None)
def closing_at(position: int):
    """The never-closing model, steered to emit `</think>` as its new token `position` (see the module's text)."""
    model = copy.deepcopy(never_closing())
    free = greedy(model, Drafter(), position + 1, None).tokens
    states, logits = final_states(model, free)
    assert logits.argmax(-1).tolist() == free
    basis, _ = torch.linalg.qr(states[:position].T)
    own = states[position] - basis @ (basis.T @ states[position])
    assert own.norm() > 0.05 * states[position].norm(), f"position {position}: too close to earlier states to steer"
    assert logits[:position].max(-1).values.min() > 1.0
    with torch.no_grad():
        target = logits[position].max() + 5.0
        model.get_output_embeddings().weight[end_token()] = target * own / own.dot(states[position])
    return model


@functools.lru_cache(maxsize=None)
def ar_output(close_at: int | None, max_new_tokens: int, with_budget: bool) -> tuple[int, ...]:
    """AR's output of the model closing at `close_at` (None: the never-closing one), with or without the budget."""
    model = never_closing() if close_at is None else closing_at(close_at)
    return tuple(greedy(model, Drafter(), max_new_tokens, budget(max_new_tokens) if with_budget else None).tokens)


class Oracle(Drafter):
    """Drafts the next tokens of a known output: as a chain, or as a tree with a wrong sibling beside every right
    node. Every right node is accepted, so the closing token lands inside an accepted draft."""
    name = "oracle"

    def __init__(self, output: list[int], vocab: int, tree: bool, length: int = 6):
        self.output, self.vocab, self.tree, self.length = output, vocab, tree, length
        self.prompt_length = 0

    def begin_sequence(self, prompt: list[int]) -> None:
        self.prompt_length = len(prompt)

    def propose(self, tokens: list[int], max_nodes: int) -> DraftTree | None:
        ahead = self.output[len(tokens) - self.prompt_length:][: self.length]
        if not ahead:
            return None
        if not self.tree:
            return DraftTree.chain(ahead, source="oracle")
        nodes, parents, parent = [], [], -1
        for right in ahead:
            nodes += [(right + 1) % self.vocab, right]
            parents += [parent, parent]
            parent = len(nodes) - 1
        return DraftTree(nodes, parents, source="oracle-tree")


def drafter(name: str, model, free: list[int]) -> Drafter:
    if name.startswith("oracle"):
        return Oracle(free, vocab_of(model), tree=name == "oracle-tree")
    return METHODS[name](model, [])


def contains(tokens: list[int], part: list[int]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))


def closed_inside_a_draft(generation, position: int) -> bool:
    """Whether the step that emitted token `position` emitted more tokens after it (the closing token was a draft
    node, not the step's bonus token)."""
    end = 0
    for step in generation.steps:
        end += step.accepted
        if end > position:
            return end - 1 > position
    return False


@pytest.mark.parametrize("where", ["early", "at the last token before the trigger"])
def test_a_model_that_closes_its_thinking_itself_is_never_forced(where):
    trigger = budget(SHORT).trigger_at
    position = trigger // 2 + 5 if where == "early" else trigger - 1
    model = closing_at(position)
    free = list(ar_output(position, SHORT, False))   # no budget at all
    assert free.index(end_token()) == position < trigger
    inside = {}
    for name in METHOD_NAMES:
        out = greedy(model, drafter(name, model, free), SHORT, budget(SHORT))
        assert out.tokens == free, name
        assert out.forced_tokens == 0 and all(s.source != "forced" for s in out.steps), name
        assert not contains(out.tokens, budget(SHORT).phrase[:8]), name
        inside[name] = closed_inside_a_draft(out, position)
        if name in REJECTING:
            assert_drafted([out], name)
    # Early, the closing token was a draft node followed by more tokens of its step, for the oracles at least (at
    # the last token before the trigger a step is always cut right after it: no step runs past the trigger).
    assert (inside["oracle-chain"] and inside["oracle-tree"]) == (where == "early"), inside


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_model_that_does_not_close_its_thinking_is_forced_the_phrase_at_the_trigger(method):
    model = never_closing()
    limits = budget(LONG)
    free, reference = list(ar_output(None, LONG, False)), list(ar_output(None, LONG, True))
    out = greedy(model, drafter(method, model, reference), LONG, limits)
    assert out.tokens == reference
    trigger, phrase = limits.trigger_at, limits.phrase
    assert end_token() not in out.tokens[:trigger] and out.tokens[:trigger] == free[:trigger]
    forced = LONG - trigger   # the phrase, cut at the token limit
    assert out.tokens[trigger:] == phrase[:forced] and len(phrase) > forced
    assert out.forced_tokens == forced and [s.accepted for s in out.steps if s.source == "forced"] == [forced]
    if method != "ar":
        assert len(out.steps) < trigger + 1, "drafts were accepted before the trigger"
    if method in REJECTING:
        assert_drafted([out], method)


def test_closing_at_the_trigger_itself_is_too_late():
    trigger = budget(SHORT).trigger_at
    model = closing_at(trigger)
    free = list(ar_output(trigger, SHORT, False))
    assert free.index(end_token()) == trigger   # left alone, it would close one token too late
    for name in METHOD_NAMES:
        out = greedy(model, drafter(name, model, free), SHORT, budget(SHORT))
        assert out.tokens[:trigger] == free[:trigger], name
        assert out.tokens[trigger:] == budget(SHORT).phrase[:SHORT - trigger] and out.forced_tokens == SHORT - trigger
