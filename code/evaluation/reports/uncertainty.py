"""How sure a speedup is: a paired bootstrap over questions.

A speedup is (sum of method tokens / sum of method seconds) / (the same for the baseline), over the questions both
answered. Resampling questions with replacement, and keeping each question's method and baseline figures together,
gives the spread that comes from which questions were asked and from the noise of each timing; the 2.5% and 97.5%
quantiles of the resampled speedups are the 95% interval.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 2000
NOISY_BASELINE_CV = 0.25   # baseline tokens/s varying more than this across questions: the machine was not quiet


def speedup_interval(tokens, seconds, base_tokens, base_seconds, level: float = 0.95, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float] | None:
    """95% interval of the pooled speedup; arguments are per-question sums, paired by position. None below 2
    questions (nothing to resample)."""
    arrays = [np.asarray(a, dtype=float) for a in (tokens, seconds, base_tokens, base_seconds)]
    n = len(arrays[0])
    if n < 2 or any(len(a) != n for a in arrays):
        return None
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    tok, sec, btok, bsec = (a[picks].sum(axis=1) for a in arrays)
    with np.errstate(divide="ignore", invalid="ignore"):
        speedups = (tok / sec) / (btok / bsec)
    speedups = speedups[np.isfinite(speedups)]
    if not len(speedups):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(speedups, [tail, 100 - tail])
    return float(low), float(high)


def variation(tokens, seconds) -> float | None:
    """Coefficient of variation of per-question tokens/s (std / mean)."""
    rates = [t / s for t, s in zip(tokens, seconds) if s > 0]
    if len(rates) < 2:
        return None
    return float(np.std(rates, ddof=1) / np.mean(rates))
