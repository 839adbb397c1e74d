"""Goodness-of-fit helpers for the sampling tests."""
from collections import Counter, defaultdict

import torch


def chi_square_pvalue(counts: dict, expected_probs: dict, n: int) -> float:
    """Pearson chi-square of observed counts against exact probabilities; cells with expected < 5 are pooled."""
    cells = sorted(set(expected_probs) | set(counts), key=repr)
    stat, dof, pool_obs, pool_exp = 0.0, -1, 0, 0.0
    for cell in cells:
        exp = expected_probs.get(cell, 0.0) * n
        obs = counts.get(cell, 0)
        if exp < 5:
            pool_obs, pool_exp = pool_obs + obs, pool_exp + exp
            continue
        stat += (obs - exp) ** 2 / exp
        dof += 1
    if pool_exp > 0:
        stat += (pool_obs - pool_exp) ** 2 / max(pool_exp, 1e-9)
        dof += 1
    dof = max(dof, 1)
    # Survival function of chi2(dof): the regularized upper incomplete gamma Q(dof/2, stat/2).
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def sequence_pvalue(counts: dict, law: dict) -> float:
    """One p-value for sampled token sequences against their exact law: the smallest of the chi-square p-values of
    the whole sequences, of each prefix and of each single position, Bonferroni-corrected. A law error at one depth
    shows in the few cells of that depth's projection, where the full table (up to V**length cells) would dilute it."""
    n = sum(counts.values())
    length = len(next(iter(law)))
    projections = [slice(0, j) for j in range(1, length + 1)] + [slice(j, j + 1) for j in range(1, length)]
    pvalues = []
    for cut in projections:
        observed, expected = Counter(), defaultdict(float)
        for seq, c in counts.items():
            observed[seq[cut]] += c
        for seq, mass in law.items():
            expected[seq[cut]] += mass
        pvalues.append(chi_square_pvalue(observed, expected, n))
    return min(1.0, len(pvalues) * min(pvalues))
