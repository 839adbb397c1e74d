"""Goodness-of-fit helper for the sampling tests."""
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
