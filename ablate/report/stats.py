"""The statistics behind a finding: a t interval, a paired t-test, Holm's step-down adjustment, power.

Why these and not a bootstrap: with the 3 to 10 pairs an ablation has, a percentile bootstrap interval is
about the data's range (coverage 76% at 3 pairs), while the t interval keeps its 95% coverage for normal
paired differences at every pair count (``tests/report/test_calibration.py`` simulates it through these
functions). A sign-flip (permutation) test would need no normality, but its smallest two-sided p-value is
``2 / 2**n`` (0.25 at 3 pairs, 0.0625 at 5), so it cannot call anything below 6 pairs;
:func:`sign_flip_min_p` lets the report say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
"""Family-wise error rate of the verdicts (Holm) and 1 - the intervals' confidence level."""
POWER = 0.8
"""Power used for 'pairs needed' (the usual 80%)."""
MAX_PAIRS_NEEDED = 1000
"""Beyond this the report says 'more than 1000'."""


def mean_sd(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan where undefined)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan
    return float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan


def t_interval(diffs: Sequence[float], level: float = 1 - ALPHA) -> tuple[float, float]:
    """Two-sided t interval of the mean of ``diffs`` (nan with fewer than 2 values).

    Exact coverage when the differences are normal and independent; zero width only when every
    difference is equal.
    """
    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean, sd = mean_sd(diffs)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_t_pvalue(diffs: Sequence[float]) -> float:
    """Two-sided p-value of a one-sample t-test of mean(diffs) = 0 (nan with fewer than 2 values).

    Identical non-zero differences (sd 0) give p = 0; all-zero differences give p = 1.
    """
    n = len(diffs)
    if n < 2:
        return math.nan
    mean, sd = mean_sd(diffs)
    if sd == 0 or not math.isfinite(sd):
        return 1.0 if mean == 0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return float(2 * sps.t.sf(abs(t), n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (nan entries stay nan and do not count towards the family).

    Rejecting where the adjusted value is below ``alpha`` keeps the family-wise error rate at ``alpha``
    for any dependence between the tests (the findings share trials).
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def sign_flip_min_p(n: int) -> float:
    """The smallest two-sided p-value an exact sign-flip test can reach with ``n`` pairs: 2 / 2**n."""
    return min(1.0, 2.0 / 2.0**n)


def pairs_needed(mean: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Pairs a two-sided paired t-test at ``alpha`` needs to detect a true difference of ``mean`` with
    ``power``, given the spread ``sd`` of the differences (None when undefined, e.g. sd 0 or nan)."""
    if not (math.isfinite(mean) and math.isfinite(sd)) or sd <= 0 or mean == 0:
        return None
    effect = abs(mean) / sd
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    start = max(2, int((z / effect) ** 2))  # the normal approximation; the t-test needs at least that many
    for n in range(start, MAX_PAIRS_NEEDED + 1):
        df = n - 1
        crit = sps.t.ppf(1 - alpha / 2, df)
        nc = effect * math.sqrt(n)
        achieved = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
        if achieved >= power:
            return n
    return MAX_PAIRS_NEEDED + 1


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-a between two equally long sequences (nan with fewer than two items)."""
    n = len(xs)
    if n < 2:
        return math.nan
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            a = (xs[i] > xs[j]) - (xs[i] < xs[j])
            b = (ys[i] > ys[j]) - (ys[i] < ys[j])
            s += a * b
    return s / (n * (n - 1) / 2)


__all__ = [
    "ALPHA",
    "kendall_tau",
    "holm",
    "mean_sd",
    "paired_t_pvalue",
    "pairs_needed",
    "sign_flip_min_p",
    "t_interval",
]
