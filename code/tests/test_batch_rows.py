"""Batch rows step for step: each row of a batch is its sequence decoded alone, not only in its tokens but in every
step (draft size, accepted length, source) and in everything its drafter is told; with rows of ragged prompts (one
of a single token), ragged ends, four rows, and sampling. Drafts with probabilities (STAND) follow the target law
inside a batch."""
from collections import Counter

import pytest
import torch

from conftest import VOCAB, tiny_model
from methods import METHODS, SAMPLED_DRAFTS, assert_drafted, assert_rows_drafted
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, ThinkingBudget
from references import ar
from stats import chi_square_pvalue
from test_batch import PROMPTS, corpus_of, echo_prompt, plain_two_token_law, samples_beside_another_prompt
from test_sampling import ALPHA, PROMPT, SMALL_VOCAB

# Four rows of different lengths, one a single token; row 0 stops on a token, row 1 meets the thinking budget.
NEW_TOKENS = 32
BUDGET = ThinkingBudget(trigger_at=20, phrase=[1, 2, 3], end_token=VOCAB - 1)
SAMPLING = SamplingConfig(0.3, top_p=0.95)
SEEDS = [11, 12, 13, 14]


def four_prompts(arch):
    """Four rows of different lengths, each but the one-token one repeating itself (every row can draft)."""
    return [echo_prompt(arch, PROMPTS[0]), echo_prompt(arch, PROMPTS[1], 8), [PROMPTS[2][0]],
            echo_prompt(arch, PROMPTS[2], 8)]


def steps_of(generation):
    return [(s.draft_size, s.accepted, s.source) for s in generation.steps]


def alone_and_batched(method, arch, sampling, stop=frozenset()):
    """Each prompt decoded alone with its own fresh drafter and seed, and the four in one batch with one fork per row
    (no memory shared between rows, so that each row's drafter sees exactly what it sees alone)."""
    model = tiny_model(arch)
    engine = SpeculativeEngine(model)
    prompts = four_prompts(arch)
    # REST's corpus: the prompts and other seeds' samples of them (text like the answers, never the answers)
    corpus = corpus_of([t for p, s in zip(prompts, (21, 22, 23, 24))
                        for t in p + ar(arch, p, NEW_TOKENS, SAMPLING, seed=s).tokens])
    alone = [engine.generate(p, METHODS[method](model, corpus), NEW_TOKENS, sampling,
                             torch.Generator().manual_seed(s), stop, BUDGET) for p, s in zip(prompts, SEEDS)]
    first = METHODS[method](model, corpus)
    drafters = [first] + [first.fork() for _ in prompts[1:]]
    batch = engine.generate_batch(prompts, drafters, NEW_TOKENS, sampling,
                                  [torch.Generator().manual_seed(s) for s in SEEDS], stop, BUDGET)
    return alone, batch


@pytest.mark.parametrize("method", sorted(set(METHODS) - SAMPLED_DRAFTS - {"ar"}))
def test_four_ragged_sampled_rows_equal_batch_one_step_for_step(method):
    alone, batch = alone_and_batched(method, "qwen3", SAMPLING)
    assert len({len(p) for p in four_prompts("qwen3")}) == 4 and min(map(len, four_prompts("qwen3"))) == 1
    for row, (got, want) in enumerate(zip(batch, alone)):
        assert got.tokens == want.tokens, row
        assert steps_of(got) == steps_of(want), row   # the same drafts, the same accepted lengths
    assert len({len(g.tokens) for g in alone}) > 1 or any(g.forced_tokens for g in alone)   # ragged ends
    assert_rows_drafted(batch, method)
    assert_drafted(batch + alone, method)


def test_greedy_four_rows_with_a_stop_end_at_different_steps_and_equal_batch_one():
    """Greedy, a stop token that ends one row early, the budget forcing its phrase in another: every method's rows
    step for step as alone."""
    stop = frozenset({ar_token_that_ends_row_0()})
    ends = set()
    for method in ("pld", "samd", "recycling", "stand", "eagle3"):
        alone, batch = alone_and_batched(method, "qwen3", SamplingConfig(), stop)
        for row, (got, want) in enumerate(zip(batch, alone)):
            assert (got.tokens, steps_of(got), got.stopped) == (want.tokens, steps_of(want), want.stopped), \
                (method, row)
        ends = {len(g.tokens) for g in alone}
        assert alone[0].stopped and any(g.forced_tokens for g in alone[1:]), method
    assert len(ends) > 1


def ar_token_that_ends_row_0():
    """A token AR writes early in row 0 and never in the other rows before the budget."""
    alone = [ar("qwen3", p, NEW_TOKENS).tokens for p in four_prompts("qwen3")]
    for position in range(4, 16):
        token = alone[0][position]
        if token not in alone[0][:position] and all(token not in other[:BUDGET.trigger_at] for other in alone[1:]):
            return token
    pytest.fail("the fixtures give no token that ends only row 0: change the prompts or the range searched")


def recording(cls):
    """`cls` with an observe that keeps everything the engine tells it."""
    class Recording(cls):
        def observe(self, feedback):
            self.told = getattr(self, "told", [])
            distributions = feedback.distributions
            self.told.append((list(feedback.emitted), list(feedback.accepted_nodes), list(feedback.input_tokens),
                              None if feedback.topk is None else feedback.topk.tolist(),
                              None if distributions is None else distributions[0].tolist(),
                              None if distributions is None else distributions[1],
                              feedback.hidden))
            super().observe(feedback)
    return Recording


@pytest.mark.parametrize("method", ["recycling", "stand", "eagle3"])
@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(0.6, top_p=0.9)], ids=["T0", "T0.6"])
def test_at_batch_each_drafter_is_told_what_it_is_told_alone(method, sampling):
    """Token Recycling's top-k, STAND's distributions, EAGLE-3's hidden states: worked out for all rows at once,
    each row's drafter told its own, as alone (at T > 0 STAND's sampled drafts differ by row, so only T = 0 for it)."""
    if method == "stand" and sampling.temperature > 0:
        sampling = SamplingConfig(0.0)
    model = tiny_model("llama")
    engine = SpeculativeEngine(model)
    prompts = four_prompts("llama")[:3]
    seeds = SEEDS[:3]

    def drafter():
        d = METHODS[method](model, [])
        d.__class__ = recording(type(d))
        return d

    alone = []
    for prompt, seed in zip(prompts, seeds):
        d = drafter()
        engine.generate(prompt, d, NEW_TOKENS, sampling, torch.Generator().manual_seed(seed))
        alone.append(d.told)
    first = drafter()
    drafters = [first] + [first.fork() for _ in prompts[1:]]
    engine.generate_batch(prompts, drafters, NEW_TOKENS, sampling, [torch.Generator().manual_seed(s) for s in seeds])
    assert any(len(told[2]) > 1 for told in alone[0])   # drafts were verified
    for row, (d, want) in enumerate(zip(drafters, alone)):
        assert len(d.told) == len(want), row
        for got, expected in zip(d.told, want):
            assert got[:5] == expected[:5], row
            for a, b in zip(got[5:], expected[5:]):   # probabilities and hidden states: as alone, to rounding
                assert (a is None) == (b is None), row
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_stand_s_sampled_trees_inside_a_batch_follow_the_target_law():
    """STAND (drafts sampled from its memory, with probabilities; the memory shared by the rows) in every row of a
    batch whose other rows decode another prompt: the first two tokens follow the target's law, through drafts
    accepted and rejected in every row."""
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    n = 1500
    samples = samples_beside_another_prompt(model, METHODS["stand"](model, []), n, share_memory=True)
    counts = Counter(tuple(g.tokens) for g in samples)
    assert chi_square_pvalue(counts, plain_two_token_law(model, PROMPT), n) > ALPHA
    assert_drafted(samples, "stand")
    assert_rows_drafted(samples, "stand", min_tokens=2)


def test_a_one_token_prompt_decodes_as_alone_beside_long_ones():
    model = tiny_model("llama")
    engine = SpeculativeEngine(model)
    prompts = [[7], PROMPTS[0], [9]]
    alone = [engine.generate(p, Drafter(), 16, SamplingConfig()).tokens for p in prompts]
    rows = engine.generate_batch(prompts, [Drafter() for _ in prompts], 16, SamplingConfig())
    assert [r.tokens for r in rows] == alone
