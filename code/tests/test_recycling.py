import numpy as np
import pytest
import torch

from model.engine.drafter import StepFeedback
from model.recycling import TEMPLATE_2_2_2, TokenRecyclingDrafter
from model.recycling.tree_template import level_spans, template_parents


def test_template_shape_and_parents():
    assert len(TEMPLATE_2_2_2) == 80
    depths = [len(p) for p in TEMPLATE_2_2_2]
    assert [depths.count(d) for d in range(1, 7)] == [8, 21, 25, 15, 8, 3]
    assert depths == sorted(depths)
    assert len({tuple(p) for p in TEMPLATE_2_2_2}) == 80
    parents = template_parents(TEMPLATE_2_2_2)
    for i, (path, parent) in enumerate(zip(TEMPLATE_2_2_2, parents)):
        assert parent < i
        assert (parent == -1) == (len(path) == 1)
        if parent >= 0:
            assert TEMPLATE_2_2_2[parent] == path[:-1]
    assert [end - start for start, end in level_spans(TEMPLATE_2_2_2)] == [8, 21, 25, 15, 8, 3]


def test_template_validation_rejects_bad_orders():
    with pytest.raises(ValueError):
        template_parents([[0, 0], [0]])
    with pytest.raises(ValueError):
        template_parents([[0], [0]])


def test_matrix_fits_in_ten_megabytes():
    drafter = TokenRecyclingDrafter(152064)
    assert drafter.matrix_bytes() == 152064 * 8 * 4
    assert drafter.matrix_bytes() <= 10_000_000


def brute_tree(rows: dict, root: int, paths):
    tokens = []
    for path in paths:
        token = root
        for rank in path:
            token = rows[token][rank] if token in rows else 0
        tokens.append(token)
    return tokens


def observe_random(drafter, vocab, tokens, seed=0):
    gen = torch.Generator().manual_seed(seed)
    topk = torch.randint(0, vocab, (len(tokens), 8), generator=gen)
    drafter.observe(StepFeedback([tokens[-1]], None, [], list(tokens), topk))
    return {t: topk[j].tolist() for j, t in enumerate(tokens)}


def test_unknown_root_gives_no_draft_unless_asked():
    drafter = TokenRecyclingDrafter(50)
    assert drafter.propose([3, 4], 128) is None
    seed_like = TokenRecyclingDrafter(50, draft_unknown_root=True)
    tree = seed_like.propose([3, 4], 128)
    assert tree.tokens == [0] * 80 and tree.parents == template_parents(TEMPLATE_2_2_2)


def test_proposal_expands_template_through_observed_topk():
    vocab = 50
    drafter = TokenRecyclingDrafter(vocab)
    inputs = list(np.random.default_rng(1).permutation(vocab)[:40])
    rows = observe_random(drafter, vocab, inputs)
    assert drafter.known.sum() == 40
    for root in inputs[:10]:
        tree = drafter.propose([1, 2, int(root)], 128)
        assert tree.source == "recycling"
        assert tree.tokens == brute_tree(rows, int(root), TEMPLATE_2_2_2)
        assert tree.parents == template_parents(TEMPLATE_2_2_2)
        tree.validate(128, vocab)
    unseen = next(t for t in range(vocab) if t not in rows)
    assert drafter.propose([unseen], 128) is None


def test_later_observation_overwrites_rows_and_forced_is_ignored():
    vocab = 30
    drafter = TokenRecyclingDrafter(vocab)
    observe_random(drafter, vocab, [1, 2, 3], seed=0)
    rows = observe_random(drafter, vocab, [2, 5], seed=1)
    assert drafter.successors[2].tolist() == rows[2]
    drafter.observe(StepFeedback([7, 8], None, [], [], None))
    assert drafter.successors[2].tolist() == rows[2] and not drafter.known[7]


def test_truncation_keeps_a_valid_prefix():
    vocab = 40
    drafter = TokenRecyclingDrafter(vocab)
    observe_random(drafter, vocab, list(range(vocab)))
    full = drafter.propose([5], 128)
    for cap in (1, 8, 9, 29, 30, 79):
        tree = drafter.propose([5], cap)
        assert len(tree) == cap
        assert tree.tokens == full.tokens[:cap] and tree.parents == full.parents[:cap]
        tree.validate(cap, vocab)
    assert drafter.propose([5], 0) is None


def test_reset_forgets_rows():
    drafter = TokenRecyclingDrafter(20)
    observe_random(drafter, 20, [4, 9])
    drafter.reset()
    assert not drafter.known.any() and not drafter.successors.any()
    assert drafter.propose([4], 128) is None


def test_engine_output_unchanged_and_fewer_steps():
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.engine import Drafter, SamplingConfig, SpeculativeEngine
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    engine = SpeculativeEngine(LlamaForCausalLM(config).eval(), max_tree_nodes=96)
    prompt = [1, 2, 3, 4, 5, 6] * 3
    reference = engine.generate(prompt, Drafter(), 60, SamplingConfig())
    drafter = TokenRecyclingDrafter(64)
    out = engine.generate(prompt, drafter, 60, SamplingConfig())
    assert out.tokens == reference.tokens
    assert len(out.steps) < len(reference.steps)
    assert {s.draft_size for s in out.steps if s.source == "recycling"} == {80}
