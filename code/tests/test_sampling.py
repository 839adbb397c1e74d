"""Lossless sampling: the emitted tokens follow the target distribution exactly, whatever the draft.

Each check is a chi-square goodness-of-fit test against the exact distribution, failing at p < ALPHA.
The broken-rule tests show that the same statistic rejects a wrong acceptance rule.
"""
import random
from collections import Counter

import pytest
import torch

from conftest import tiny_model
from methods import assert_drafted, assert_rows_drafted
from model.engine import Drafter, DraftTree, SamplingConfig, SpeculativeEngine
from model.engine.sampling import accept_sampled, draw, target_probs
from stats import chi_square_pvalue

ALPHA = 1e-3
V = 6
STOP = -1


def random_dists(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, V, generator=g, dtype=torch.float64) ** 3 + 0.02
    return x / x.sum(-1, keepdim=True)


P_ROOT = random_dists(1, 1)[0]
P_AFTER = random_dists(V, 2)          # target distribution after each token
Q_ROOT = random_dists(1, 3)[0]        # a draft model's distribution at the root


def expected_pairs(children_tokens):
    """Exact law of (first token, second token or STOP) when the root's children hold `children_tokens`."""
    law = {}
    for a in range(V):
        if a in children_tokens:
            for b in range(V):
                law[(a, b)] = float(P_ROOT[a] * P_AFTER[a, b])
        else:
            law[(a, STOP)] = float(P_ROOT[a])
    return law


def run_point_mass(rule, trials=20000):
    tokens, parents = [0, 2, 3], [-1, -1, -1]
    p = torch.stack([P_ROOT] + [P_AFTER[t] for t in tokens])
    g = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(trials):
        path, bonus = rule(tokens, parents, p, None, g)
        counts[(tokens[path[0]], bonus) if path else (bonus, STOP)] += 1
    return counts, expected_pairs(set(tokens))


def run_with_probs(rule, trials=20000, k=3):
    """Root children drawn i.i.d. from Q_ROOT each trial (SpecInfer multi-draft), with their q attached."""
    g = torch.Generator().manual_seed(1)
    rng = torch.Generator().manual_seed(2)
    counts = Counter()
    for _ in range(trials):
        tokens = torch.multinomial(Q_ROOT, k, replacement=True, generator=rng).tolist()
        p = torch.stack([P_ROOT] + [P_AFTER[t] for t in tokens])
        q = Q_ROOT.expand(k, V)
        path, bonus = rule(tokens, [-1] * k, p, q, g)
        counts[(tokens[path[0]], bonus) if path else (bonus, STOP)] += 1
    return counts


def first_token_law():
    return {a: float(P_ROOT[a]) for a in range(V)}


def test_point_mass_acceptance_is_lossless():
    counts, law = run_point_mass(accept_sampled)
    assert chi_square_pvalue(counts, law, sum(counts.values())) > ALPHA


def test_rejection_with_draft_probs_is_lossless():
    counts = run_with_probs(accept_sampled)
    first = Counter()
    for (a, _b), c in counts.items():
        first[a] += c
    assert chi_square_pvalue(first, first_token_law(), sum(first.values())) > ALPHA
    # After an accepted first token the bonus follows P_AFTER[first].
    for a in range(V):
        second = Counter({b: c for (x, b), c in counts.items() if x == a and b != STOP})
        n = sum(second.values())
        if n > 500:
            assert chi_square_pvalue(second, {b: float(P_AFTER[a, b]) for b in range(V)}, n) > ALPHA


def broken_point_mass(tokens, parents, p, q, g):
    """Wrong: takes the first child outright whenever the target gives it some mass."""
    if p[0, tokens[0]] > 0.05:
        return [0], draw(p[1], g)
    return accept_sampled(tokens, parents, p, q, g)


def broken_residual(tokens, parents, p, q, g):
    """Wrong: after rejecting every child, draws the bonus from p instead of the residual."""
    for c, t in enumerate(tokens):
        if torch.rand((), generator=g, dtype=p.dtype) <= p[0, t] / q[c, t]:
            return [c], draw(p[c + 1], g)
    return [], draw(p[0], g)


def test_chi_square_rejects_a_broken_point_mass_rule():
    counts, law = run_point_mass(broken_point_mass)
    assert chi_square_pvalue(counts, law, sum(counts.values())) < ALPHA


def test_chi_square_rejects_a_broken_residual_rule():
    counts = run_with_probs(broken_residual)
    first = Counter()
    for (a, _b), c in counts.items():
        first[a] += c
    assert chi_square_pvalue(first, first_token_law(), sum(first.values())) < ALPHA


# --- The whole engine on a real (tiny) model: exact law of the first two tokens --------------------------------

SMALL_VOCAB = 12
PROMPT = [3, 4, 5, 3, 4, 5, 3, 4]


class RandomTreeDrafter(Drafter):
    """Point-mass trees of random tokens: wide and two levels deep."""
    name = "random-tree"

    def __init__(self, seed=0):
        self.rng = random.Random(seed)

    def propose(self, tokens, max_nodes):
        paths = [[self.rng.randrange(SMALL_VOCAB) for _ in range(2)] for _ in range(4)]
        return DraftTree.from_paths(paths)


class DraftModelChain(Drafter):
    """A chain sampled from a fixed draft distribution q, with q attached (the SpS / EAGLE path). It draws with the
    row's generator, as SpS and STAND do: rows of a batch sharing one stream would draft the same chains, and their
    samples (each right in law) would be correlated."""
    name = "q-chain"

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(SMALL_VOCAB, generator=g, dtype=torch.float64) ** 2 + 0.05
        self.q = x / x.sum()
        self.g = None

    def use_sampling(self, sampling, generator):
        self.g = generator

    def propose(self, tokens, max_nodes):
        chain = torch.multinomial(self.q, 2, replacement=True, generator=self.g).tolist()
        tree = DraftTree.chain(chain)
        tree.probs = self.q.expand(2, SMALL_VOCAB)
        return tree


def exact_two_token_law(model, cfg, prompt=PROMPT):
    with torch.no_grad():
        p1 = target_probs(model(torch.tensor([prompt])).logits[0, -1], cfg)
        law = {}
        for a in range(SMALL_VOCAB):
            p2 = target_probs(model(torch.tensor([prompt + [a]])).logits[0, -1], cfg)
            for b in range(SMALL_VOCAB):
                law[(a, b)] = float(p1[a] * p2[b])
    return law


def sample_pairs(model, drafter, cfg, n, engine=None, runs=None, fresh=False, prompt=PROMPT, rows=1):
    """Counts of the first two tokens over n generations; each Generation is appended to `runs` when given. The one
    drafter learns across the n samples unless `fresh` (reset before each). With `rows` > 1 the n samples are one
    continuous batch of that many rows (forks of the drafter sharing its memory), sample i drawn with its own seeded
    generator: i.i.d. as at batch 1 (a lossless engine's law does not depend on the drafts), at a fraction of the
    time, and the law is then checked inside a batch, through rows refilled as samples end."""
    engine = engine or SpeculativeEngine(model)
    if rows > 1:
        drafters = [drafter] + [drafter.fork(share_memory=True) for _ in range(rows - 1)]
        generators = [torch.Generator().manual_seed(7_000_000 + i) for i in range(n)]
        outs = engine.generate_batch([prompt] * n, drafters, 2, cfg, generators,
                                     on_join=(lambda i, d: d.reset()) if fresh else None)
    else:
        g = torch.Generator().manual_seed(7)
        outs = []
        for _ in range(n):
            if fresh:
                drafter.reset()
            outs.append(engine.generate(prompt, drafter, 2, cfg, g))
    if runs is not None:
        runs.extend(outs)
    return Counter(tuple(out.tokens) for out in outs)


SAMPLING_DRAFTERS = {"ar": Drafter, "random-tree": RandomTreeDrafter, "q-chain": DraftModelChain}


# The drafts at T = 1 one sample at a time (batch 1); AR at T = 1, and everything at the warped law, in a continuous
# batch of 16 rows.
@pytest.mark.parametrize("cfg", [SamplingConfig(1.0), SamplingConfig(0.7, top_p=0.9, top_k=6)],
                         ids=["T1", "T0.7-top_p-top_k"])
@pytest.mark.parametrize("name", sorted(SAMPLING_DRAFTERS))
def test_engine_sampling_matches_the_target_law(name, cfg):
    rows = 1 if cfg.temperature == 1.0 and name != "ar" else 16
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    n, runs = 1500, []
    counts = sample_pairs(model, SAMPLING_DRAFTERS[name](), cfg, n, runs=runs, rows=rows)
    assert chi_square_pvalue(counts, exact_two_token_law(model, cfg), n) > ALPHA
    if name != "ar":   # the law was checked through verified drafts, some accepted, some rejected (in every row)
        assert_drafted(runs, name)
        assert_rows_drafted(runs, name, min_tokens=2)


def test_engine_level_check_rejects_a_broken_rule(monkeypatch):
    import model.engine.decoder as decoder
    monkeypatch.setattr(decoder, "accept_sampled", broken_point_mass)
    model = tiny_model("qwen2", vocab=SMALL_VOCAB, seed=3)
    cfg = SamplingConfig(1.0)
    counts = sample_pairs(model, RandomTreeDrafter(), cfg, 1500, rows=16)
    assert chi_square_pvalue(counts, exact_two_token_law(model, cfg), 1500) < ALPHA
