"""STAND: the n-gram memory of distributions, the data-driven tree shape, and lossless stochastic drafting.

Greedy identity with AR (three architectures, both paradigms, batches, cost-aware) comes from the method registry
(tests/methods.py). Here: the memory's merge, bound and reset; and chi-square tests on sequences of 3 tokens through
STAND trees with several children per node and rejections at depth 1 and 2, where two subtly broken variants fail.
"""
import random
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_model
from methods import assert_rows_drafted
from model.engine import Drafter, SamplingConfig, SpeculativeEngine, StepFeedback
from model.engine.sampling import accept_sampled, draw, target_probs
from model.stand import StandDrafter
from model.stand.memory import NgramMemory
from model.stand.tree_shape import TreeShape
from stats import chi_square_pvalue

ALPHA = 1e-3


# --- the memory ---------------------------------------------------------------------------------------------------

def test_a_recurring_context_holds_the_running_mean_of_its_distributions():
    memory = NgramMemory(orders=(1, 2), k=3)
    memory.add([5, 6], [1, 2, 3], [0.5, 0.3, 0.2])
    memory.add([9, 6], [2, 4], [0.6, 0.4])          # the 1-gram (6,) recurs, the 2-gram does not
    ids, probs = memory.lookup([0, 6])               # (0, 6) unseen: backs off to (6,)
    mean = {1: 0.25, 2: 0.45, 3: 0.10, 4: 0.20}      # the mean of the two, of which the top 3 stay
    assert ids == [2, 1, 4]
    kept = sum(mean[t] for t in ids)
    assert probs == pytest.approx([mean[t] / kept for t in ids])
    assert memory.lookup([5, 6]) == ([1, 2, 3], pytest.approx([0.5, 0.3, 0.2]))   # the longest match wins
    assert memory.counts[memory.index[(6,)]] == 2 and memory.counts[memory.index[(5, 6)]] == 1


def test_the_memory_grows_by_at_most_one_entry_per_order_and_position():
    memory = NgramMemory(orders=(1, 2, 3), k=4, capacity=2)   # small: the pool must grow
    rng = np.random.default_rng(0)
    context = [1, 2]
    for _ in range(300):
        ids = rng.choice(50, 4, replace=False).tolist()
        memory.add(context, ids, [0.4, 0.3, 0.2, 0.1])
        context.append(int(rng.integers(50)))
    assert memory.positions == 300
    assert len(memory) <= 3 * memory.positions
    assert memory.payload_bytes() <= memory.bound_per_position() * memory.positions
    assert memory.bound_per_position() == 3 * (4 * 4 + 4 * 4 + 4)
    # every entry stays a distribution over at most k ids, most probable first
    rows = list(memory.index.values())
    assert (memory.probs[rows] >= 0).all() and (np.diff(memory.probs[rows], axis=1) <= 1e-7).all()
    assert (memory.probs[rows].sum(1) <= 1 + 1e-5).all()   # a merged mean cut to its top k may hold less than 1


def test_prompt_ngrams_fill_gaps_only_and_a_reset_forgets():
    drafter = StandDrafter(vocab_size=20, orders=(1, 2))
    drafter.begin_sequence([3, 4, 5])
    assert drafter.memory.lookup([9, 4]) == ([5], [1.0])            # a point mass from the prompt
    assert drafter.memory.positions == 2 and len(drafter.memory) <= 2 * 2
    drafter.memory.add([7], [8, 9], [0.7, 0.3])
    drafter.begin_sequence([7, 2])                                   # (7,) is known: the prompt does not dilute it
    assert drafter.memory.lookup([7]) == ([8, 9], pytest.approx([0.7, 0.3]))
    drafter.reset()
    assert len(drafter.memory) == 0 and drafter.memory.lookup([7]) is None


@pytest.mark.parametrize("learn_rejected", [True, False])
def test_observe_stores_the_distribution_at_each_verified_position(learn_rejected):
    """Root context (1, 2); draft 3 -> 5 accepted, its sibling 7 rejected; bonus 8."""
    from model.engine import DraftTree
    drafter = StandDrafter(vocab_size=20, orders=(1, 2), topk=2, prompt_ngrams=False, learn_rejected=learn_rejected)
    drafter.begin_sequence([1, 2])
    tree = DraftTree([3, 7, 5], [-1, -1, 0], source="stand")
    ids = torch.tensor([[3, 4], [5, 6], [9, 10], [8, 11]])   # at the root, after 3, after 7, after 5
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    drafter.observe(StepFeedback([3, 5, 8], tree, [0, 2], [2, 3, 7, 5], distributions=(ids, probs)))
    assert drafter.memory.lookup([1, 2])[0] == [3, 4]    # after (1, 2) the target said 3 (or 4)
    assert drafter.memory.lookup([2, 3])[0] == [5, 6]    # after (2, 3): 5 (or 6)
    assert drafter.memory.lookup([3, 5])[0] == [8, 11]   # after (3, 5): the bonus 8
    rejected = drafter.memory.lookup([2, 7])              # what the target said after the rejected node
    assert rejected == (([9, 10], pytest.approx([0.5, 0.5])) if learn_rejected else None)
    assert drafter.context == [1, 2, 3, 5, 8]
    assert drafter.memory.positions == (4 if learn_rejected else 3)


def test_the_engine_hands_stand_the_distribution_at_every_verified_position():
    model = tiny_model("llama")
    seen = []

    class Spy(StandDrafter):
        def observe(self, feedback):
            if feedback.tree is not None:
                seen.append((len(feedback.input_tokens), feedback.distributions[0].shape))
            super().observe(feedback)

    vocab = model.get_output_embeddings().weight.shape[0]
    drafter = Spy(vocab, topk=3)
    SpeculativeEngine(model).generate([5, 6, 7, 5, 6, 7, 5, 6], drafter, 24, SamplingConfig(temperature=1.0),
                                      generator=torch.Generator().manual_seed(0))
    assert any(n > 1 for n, _ in seen)                    # some steps verified drafts
    assert all(shape == (n, 3) for n, shape in seen)      # one top-3 per input position, rejected nodes included


def test_siblings_of_a_shared_memory_merge_once_and_then_write_into_one_memory():
    a, b = StandDrafter(20, orders=(1,)), StandDrafter(20, orders=(1,))
    a.memory.add([1], [2], [1.0])
    b.memory.add([1], [3], [1.0])
    a.share_with([b])
    b.share_with([a])
    assert a.memory is b.memory and a.memory.lookup([1]) == ([2, 3], pytest.approx([0.5, 0.5]))
    b.memory.add([4], [5], [1.0])
    assert a.memory.lookup([4]) == ([5], [1.0])
    b.reset()                                           # a new question for b's row: a keeps what it had
    assert a.memory.lookup([1]) is not None and b.memory.lookup([1]) is None


def test_the_tree_shape_follows_the_acceptance_counts():
    shape = TreeShape(max_nodes=6, max_depth=6, max_children=3, rebuild_every=1)
    # at every depth the first child is accepted, the second never: a chain
    parents = [p for level in range(6) for p in (2 * level - 2, 2 * level - 2)]
    parents = [max(p, -1) for p in parents]
    for _ in range(200):
        shape.record(parents, list(range(0, 12, 2)))
    assert shape.describe() == "1-1-1-1-1-1"
    # the root keeps as many children as win there (a fresh shape starts at "3-2-1", whatever it has seen)
    for winners, root in (([0], "1-"), ([0, 1], "2-"), ([0, 1, 2], "3-")):
        shape = TreeShape(max_nodes=6, max_depth=6, max_children=3, rebuild_every=1)
        for _ in range(200):
            for winner in winners:
                shape.record([-1, -1, -1], [winner])
        assert shape.describe().startswith(root), (winners, shape.describe())


# --- lossless stochastic drafting: chi-square on 3-token sequences ------------------------------------------------

V = 6


def markov(seed, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(V, V, generator=g, dtype=torch.float64) ** sharp + 0.02
    return x / x.sum(-1, keepdim=True)


def peaked(seed):
    """Half the mass on one token per row, the rest spread: unlike P (rejections at every depth), and peaked enough
    that a wrong renormalisation of the siblings' q shows."""
    top = torch.randint(0, V, (V,), generator=torch.Generator().manual_seed(seed + 100))
    return 0.5 * torch.nn.functional.one_hot(top, V).double() + 0.5 * markov(seed, sharp=6.0)


P = markov(11)    # the target: next-token law given the last token
Q = peaked(12)    # what the memory holds
TRIALS = 8000
START = 2


def stand_with_memory(cfg, generator):
    """A STAND drafter whose memory holds Q after every token, with a fixed 2-2-6 shape (depth 3, two children)."""
    drafter = StandDrafter(V, orders=(1,), topk=V, max_nodes=10, max_depth=3, max_children=2, prompt_ngrams=False)
    for t in range(V):
        order = torch.argsort(Q[t], descending=True)
        drafter.memory.add([t], order.tolist(), Q[t][order].tolist())
    drafter.shape.accepted[:] = drafter.shape.verified * 0.9
    drafter.shape.rebuild()
    assert drafter.shape.describe() == "2-4-4"
    drafter.use_sampling(cfg, generator)
    return drafter


def exact_law(cfg):
    p = target_probs(P.log(), cfg)
    return {(a, b, c): float(p[START, a] * p[a, b] * p[b, c]) for a in range(V) for b in range(V) for c in range(V)}


def sample_sequences(drafter, cfg, generator, trials):
    """Each trial: STAND's tree after [START], the engine's acceptance, then AR draws up to 3 tokens."""
    p = target_probs(P.log(), cfg)
    counts, depths = Counter(), Counter()
    for _ in range(trials):
        tree = drafter.propose([START], 64)
        tree.validate(64, V)
        rows = torch.stack([p[START]] + [p[t] for t in tree.tokens])
        path, bonus = accept_sampled(tree.tokens, tree.parents, rows, tree.probs, generator)
        depths[len(path)] += 1
        seq = [tree.tokens[i] for i in path] + [bonus]
        while len(seq) < 3:
            seq.append(draw(p[seq[-1]], generator))
        counts[tuple(seq[:3])] += 1
    return counts, depths


CONFIGS = [SamplingConfig(1.0), SamplingConfig(0.6, top_p=0.9)]
IDS = ["T1", "T0.6-top_p0.9"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_stand_trees_follow_the_target_law_over_three_tokens(cfg):
    g = torch.Generator().manual_seed(0)
    drafter = stand_with_memory(cfg, g)
    counts, depths = sample_sequences(drafter, cfg, g, TRIALS)
    assert depths[1] and depths[2] and depths[3] and depths[0]   # rejections at the root, depth 1 and depth 2
    assert chi_square_pvalue(counts, exact_law(cfg), TRIALS) > ALPHA


def with_replacement(self, ids, probs, count, noise):
    """Broken: each child an independent draw from q (duplicates possible), still accepted as Gumbel-Top-K's."""
    gen = random.Random(int(noise[0] * 1e6))
    return gen.choices(range(len(ids)), weights=probs, k=min(count, len(ids)))


def full_q_for_every_child(self, rows):
    """Broken: siblings drawn without replacement, but each verified against the full q (not renormalised)."""
    q = torch.zeros(len(rows), self.vocab_size, dtype=torch.float32)
    for i, (ids, probs, _) in enumerate(rows):
        q[i, ids] = torch.tensor(probs, dtype=torch.float32)
    return q


@pytest.mark.parametrize("broken", [with_replacement, full_q_for_every_child], ids=["with-replacement", "full-q"])
def test_the_chi_square_rejects_subtly_broken_sibling_rules(monkeypatch, broken):
    cfg = CONFIGS[0]
    monkeypatch.setattr(StandDrafter, "_pick" if broken is with_replacement else "_dense_q", broken)
    g = torch.Generator().manual_seed(0)
    counts, _ = sample_sequences(stand_with_memory(cfg, g), cfg, g, TRIALS)
    assert chi_square_pvalue(counts, exact_law(cfg), TRIALS) < ALPHA


def test_treating_sampled_drafts_as_point_masses_stays_exact_but_accepts_less():
    """Verifying a sampled token as if q were a point mass on it is exact too (the point-mass rule is lossless
    whatever the draft: one draw from the residual per rejection), so it cannot serve as a broken control; it
    only throws away what q knows: fewer accepted tokens."""
    cfg = CONFIGS[0]
    g = torch.Generator().manual_seed(0)
    drafter = stand_with_memory(cfg, g)
    _, with_q = sample_sequences(drafter, cfg, g, 3000)
    original = StandDrafter.propose

    def point_masses(self, tokens, max_nodes):
        tree = original(self, tokens, max_nodes)
        tree.probs = None
        return tree
    drafter.propose = point_masses.__get__(drafter)
    counts, without = sample_sequences(drafter, cfg, g, 3000)
    assert chi_square_pvalue(counts, exact_law(cfg), 3000) > ALPHA
    mean = lambda depths: sum(k * v for k, v in depths.items()) / sum(depths.values())  # noqa: E731
    assert mean(with_q) > mean(without) + 0.1


def test_the_engine_with_stand_follows_the_target_law_over_three_tokens():
    """End to end on a tiny model (6 tokens), at T = 0.6 with top-p 0.9 (T = 1 is covered at the rule level above):
    STAND's memory is first filled by decoding, then every sample's three tokens are drawn through its trees and the
    engine's acceptance, in a continuous batch of 16 rows sharing the memory, each sample with its own generator."""
    cfg = CONFIGS[1]
    model = tiny_model("qwen2", vocab=V, seed=3)
    engine = SpeculativeEngine(model)
    prompt = [3, 4, 5, 3, 4, 5, 3, 4]
    g = torch.Generator().manual_seed(5)
    drafter = StandDrafter(V, orders=(1, 2), topk=V, max_nodes=10, max_depth=3, max_children=2)
    for _ in range(30):   # learn the target's distributions (question scope: the memory stays)
        engine.generate(prompt, drafter, 8, cfg, g)
    n = 2000
    drafters = [drafter] + [drafter.fork(share_memory=True) for _ in range(15)]
    outs = engine.generate_batch([prompt] * n, drafters, 3, cfg, [torch.Generator().manual_seed(i) for i in range(n)])
    counts = Counter(tuple(out.tokens) for out in outs)
    drafted = sum(s.accepted > 1 for out in outs for s in out.steps)
    assert drafted > n // 4   # the trees were verified and accepted often
    assert_rows_drafted(outs, "stand", min_tokens=3)
    with torch.no_grad():
        def probs(tokens):
            return target_probs(model(torch.tensor([tokens])).logits[0, -1], cfg)
        law, p1 = {}, probs(prompt)
        for a in range(V):
            p2 = probs(prompt + [a])
            for b in range(V):
                p3 = probs(prompt + [a, b])
                for c in range(V):
                    law[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    assert chi_square_pvalue(counts, law, n) > ALPHA


def test_stand_drafts_are_deterministic_point_masses_at_temperature_zero():
    drafter = stand_with_memory(SamplingConfig(), None)
    tree = drafter.propose([START], 64)
    assert tree.probs is None
    top = torch.argsort(Q[START], descending=True)[:2].tolist()
    assert [tree.tokens[i] for i, p in enumerate(tree.parents) if p < 0] == top
    assert drafter.propose([START], 64).tokens == tree.tokens


def test_in_a_batch_only_the_rows_that_ask_are_told_distributions():
    """STAND's row gets the target's distributions (its top 8 at every verified position); the AR row beside it,
    which does not ask, gets none, and its output is AR's alone."""
    from references import ar
    told = {"stand": [], "ar": []}

    class ListeningStand(StandDrafter):
        def observe(self, feedback):
            told["stand"].append(feedback.distributions)
            super().observe(feedback)

    class Listening(Drafter):
        def observe(self, feedback):
            told["ar"].append(feedback.distributions)

    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [3, 17, 99, 250, 42, 8]]
    model = tiny_model("llama")
    rows = SpeculativeEngine(model).generate_batch(prompts, [ListeningStand(model.config.vocab_size), Listening()],
                                                   24, SamplingConfig())
    assert told["stand"] and all(d is not None and d[0].shape[1] == 8 for d in told["stand"])
    assert told["ar"] and all(d is None for d in told["ar"])
    assert rows[1].tokens == ar("llama", prompts[1], 24).tokens
