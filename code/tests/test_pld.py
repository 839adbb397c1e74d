import random

import pytest

from model.engine.drafter import StepFeedback
from model.pld import PromptLookupDrafter


def plain(**kwargs):
    return PromptLookupDrafter(adaptive=False, **kwargs)


def brute_match(tokens, max_ngram=3, min_ngram=1):
    """(order, continuation start) of the most recent earlier occurrence, longest order first."""
    length = len(tokens)
    for n in range(max_ngram, min_ngram - 1, -1):
        if n >= length:
            continue
        suffix = tokens[length - n:]
        for start in range(length - n - 1, -1, -1):
            if tokens[start: start + n] == suffix:
                return n, start + n
    return None


def brute_draft(tokens, want, **kwargs):
    match = brute_match(tokens, **kwargs)
    if match is None:
        return None
    copied = list(tokens)
    begin = match[1]
    for k in range(want):   # overlapping copy, like LZ77
        copied.append(copied[begin + k])
    return copied[len(tokens):]


def feed(drafter, context, tree, accepted, bonus):
    """Report a verification step that accepted the first `accepted` draft tokens."""
    emitted = (tree.tokens[:accepted] if tree else []) + [bonus]
    inputs = [context[-1]] + (tree.tokens if tree else [])
    drafter.observe(StepFeedback(emitted, tree, list(range(accepted)), inputs))
    context.extend(emitted)


def test_finds_continuation_on_repetition():
    d = plain(num_pred_tokens=4)
    ctx = [1, 2, 3, 4, 5, 1, 2, 3]
    d.begin_sequence(ctx)
    tree = d.propose(ctx, 100)
    assert tree.tokens == [4, 5, 1, 2] and tree.parents == [-1, 0, 1, 2] and tree.source == "pld"


def test_prefers_longer_ngram():
    ctx = [7, 8, 9, 100, 101, 102, 5, 9, 200, 7, 8, 9]
    d = plain(num_pred_tokens=3)
    d.begin_sequence(ctx)
    assert d.find(ctx) == (3, 3)
    assert d.propose(ctx, 100).tokens == [100, 101, 102]
    only_unigrams = plain(max_ngram=1, num_pred_tokens=1)
    only_unigrams.begin_sequence(ctx)
    assert only_unigrams.propose(ctx, 100).tokens == [200]


def test_uses_most_recent_occurrence():
    ctx = [1, 2, 3, 10, 11, 1, 2, 3, 20, 21, 1, 2, 3]
    d = plain(num_pred_tokens=2)
    d.begin_sequence(ctx)
    assert d.propose(ctx, 100).tokens == [20, 21]


def test_never_matches_itself():
    for ctx in ([9], [1, 2, 3], [4, 5, 6, 7, 8]):
        d = plain()
        d.begin_sequence(ctx)
        assert d.propose(ctx, 100) is None
    d = plain(num_pred_tokens=4)
    ctx = [3, 4, 4]          # the only earlier 4 is right before the suffix: loop of period 1
    d.begin_sequence(ctx)
    assert d.propose(ctx, 100).tokens == [4, 4, 4, 4]


def test_periodic_copy_and_node_cap():
    d = plain(num_pred_tokens=7)
    ctx = [0, 1, 2, 1, 2]
    d.begin_sequence(ctx)
    assert d.propose(ctx, 100).tokens == [1, 2, 1, 2, 1, 2, 1]
    assert d.propose(ctx, 3).tokens == [1, 2, 1]
    assert d.propose(ctx, 0) is None


@pytest.mark.parametrize("seed", range(6))
def test_incremental_index_matches_brute_force(seed):
    rng = random.Random(seed)
    vocab = rng.choice([3, 5, 12])
    max_ngram, min_ngram = rng.choice([(3, 1), (2, 1), (4, 2)])
    d = plain(max_ngram=max_ngram, min_ngram=min_ngram, num_pred_tokens=6)
    ctx = [rng.randrange(vocab) for _ in range(rng.randrange(1, 6))]
    d.begin_sequence(list(ctx))
    for _ in range(80):
        expected = brute_match(ctx, max_ngram, min_ngram)
        assert d.find(ctx) == expected
        tree = d.propose(ctx, 100)
        assert (tree.tokens if tree else None) == brute_draft(ctx, 6, max_ngram=max_ngram, min_ngram=min_ngram)
        chunk = [rng.randrange(vocab) for _ in range(rng.choice([1, 1, 2, 3, 7]))]
        d.observe(StepFeedback(chunk, None, [], [], None))   # chunks of varying size, as forced tokens
        ctx.extend(chunk)


def test_propose_catches_up_without_observe():
    rng = random.Random(7)
    ctx = [rng.randrange(4) for _ in range(5)]
    d = plain()
    d.begin_sequence(list(ctx))
    for _ in range(40):
        ctx.extend(rng.randrange(4) for _ in range(rng.randrange(1, 4)))
        tree = d.propose(ctx, 100)   # indexes the tokens it has not seen yet
        assert d.find(ctx) == brute_match(ctx)
        assert (tree.tokens if tree else None) == brute_draft(ctx, 10)


def test_begin_sequence_forgets_previous_context():
    d = plain()
    d.begin_sequence([1, 2, 3, 4])
    assert d.propose([1, 2, 3, 4], 10) is None
    d.begin_sequence([5, 1, 2])
    assert d.propose([5, 1, 2], 10) is None


def repetitive_context():
    return list(range(100, 130)) + list(range(100, 103))   # suffix 100 101 102 matched at 0


def test_adaptive_length_grows_after_full_acceptance():
    d = PromptLookupDrafter(num_pred_tokens=10)
    ctx = repetitive_context()
    d.begin_sequence(list(ctx))
    lengths = []
    for _ in range(5):
        tree = d.propose(ctx, 100)
        lengths.append(len(tree))
        feed(d, ctx, tree, accepted=len(tree), bonus=ctx[len(ctx) - 30 + len(tree)])
    assert lengths == [5, 7, 9, 10, 10]


def test_adaptive_length_shrinks_after_rejection():
    d = PromptLookupDrafter(num_pred_tokens=10)
    d.draft_length[3] = 9
    ctx = repetitive_context()
    d.begin_sequence(list(ctx))
    tree = d.propose(ctx, 100)
    assert len(tree) == 9
    feed(d, ctx, tree, accepted=2, bonus=999)          # partial: shrink by one
    assert d.draft_length[3] == 8
    d.draft_length[3] = 6
    ctx = repetitive_context()
    d.begin_sequence(list(ctx))
    tree = d.propose(ctx, 100)
    feed(d, ctx, tree, accepted=5, bonus=999)          # nearly full: shrink by one
    assert d.draft_length[3] == 5
    ctx = repetitive_context()
    d.begin_sequence(list(ctx))
    hit_before = d.hit_rate[3]
    d.draft_length[3] = 2
    feed(d, ctx, d.propose(ctx, 100), accepted=0, bonus=999)   # nothing accepted: shrink by one, at least 1
    assert d.draft_length[3] == 1
    assert d.hit_rate[3] < hit_before


def test_failing_unigrams_are_silenced_then_reopen():
    d = PromptLookupDrafter()
    ctx = [5, 1000]
    d.begin_sequence(list(ctx))
    d.observe(StepFeedback([5], None, [], [], None))
    ctx.append(5)
    fresh = 2000
    proposed = []
    for _ in range(7):   # every step: a 1-gram match on 5 whose draft is wrong
        tree = d.propose(ctx, 100)
        proposed.append(tree is not None)
        feed(d, ctx, tree, accepted=0, bonus=fresh)
        d.observe(StepFeedback([5], None, [], [], None))   # bring 5 back as the last token
        ctx.append(5)
        fresh += 1
    assert proposed == [True] * 5 + [False] * 2
    assert d.hit_rate[1] < d.min_hit_rate
    # The skipped candidate is still checked against what the target emits: a hit reopens the order.
    assert d.propose(ctx, 100) is None
    candidate = d.find(ctx)
    feed(d, ctx, None, accepted=0, bonus=ctx[candidate[1]])
    assert d.hit_rate[1] >= d.min_hit_rate
    d.observe(StepFeedback([fresh, 5], None, [], [], None))   # a fresh 1-gram-only match on 5 again
    ctx += [fresh, 5]
    assert d.find(ctx)[0] == 1 and d.propose(ctx, 100) is not None


def test_plain_mode_always_full_length():
    d = plain(num_pred_tokens=10)
    ctx = repetitive_context()
    d.begin_sequence(list(ctx))
    for _ in range(3):
        tree = d.propose(ctx, 100)
        assert len(tree) == 10
        feed(d, ctx, tree, accepted=0, bonus=ctx[len(ctx) - 30])


def test_reset_clears_learning():
    d = PromptLookupDrafter()
    d.draft_length[2] = 1
    d.hit_rate[1] = 0.0
    d.reset()
    assert d.draft_length[2] == 5 and d.hit_rate[1] == 0.5
    assert d.parameters() == {"max_ngram": 3, "min_ngram": 1, "num_pred_tokens": 10, "adaptive": True,
                              "min_hit_rate": 0.2}


def test_engine_output_unchanged_and_fewer_steps():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    engine = SpeculativeEngine(LlamaForCausalLM(config).eval(), max_tree_nodes=16)
    prompt = [1, 2, 3, 4, 5, 6] * 3
    reference = engine.generate(prompt, Drafter(), 60, SamplingConfig())
    for drafter in (PromptLookupDrafter(), plain()):
        out = engine.generate(prompt, drafter, 60, SamplingConfig())
        assert out.tokens == reference.tokens
        assert len(out.steps) < len(reference.steps)
