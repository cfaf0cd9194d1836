"""Paired comparisons per swept axis, their verdicts, and the best-practice judgements on them.

How a comparison is made (also printed in every report, see :data:`RULES`):

- **Pairs** (:mod:`ablate.report.pairing`): for an axis and two of its values A and B, a pair is a trial
  with A and a trial with B equal in everything else (seed included, so seeds pair up). Only completed
  trials with a finite value of the metric take part.
- **Difference.** ``metric(A) - metric(B)`` per pair; the finding reports their mean, how many pairs each
  side won (a difference within the metric's margin is a tie, :mod:`ablate.report.metrics`) and, from
  :data:`MIN_PAIRS` pairs on, the 95% t interval of the mean difference and the two-sided paired t-test's
  p-value (:mod:`ablate.report.stats`).
- **Verdict.** ``too few pairs`` below :data:`MIN_PAIRS` pairs (no interval, no test); otherwise
  ``clear win`` when the p-value, after Holm's adjustment over every comparison of the report that has a
  test, is below 5%, else ``no clear difference``. So the chance that a report shows any false clear win
  is at most 5%, however many comparisons it makes (for normal paired differences).
- **Best practices** (:mod:`ablate.report.practices`): judged only from comparisons that have a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ablate.report.crosscheck import cross_check
from ablate.report.metrics import metric_info
from ablate.report.model import CLEAR, FEW, NO_DIFF, Finding, Pair, TrialRow
from ablate.report.pairing import Axis, axes, settings
from ablate.report.practices import (
    Context,
    Rule,
    bp9,
    other_metric_note,
    ranking_stability,
    rules_for,
    with_rule,
)
from ablate.report.stats import (
    ALPHA,
    holm,
    mean_sd,
    paired_t_pvalue,
    pairs_needed,
    sign_flip_min_p,
    t_interval,
)

MIN_PAIRS = 3
"""Below this many pairs a finding has no interval and no verdict ('too few pairs')."""
SIGN_FLIP_MIN_PAIRS = next(n for n in range(1, 64) if sign_flip_min_p(n) < ALPHA)
"""The fewest pairs with which a distribution-free sign-flip test could call anything at 5% (6)."""

RULE_ROWS: tuple[tuple[str, str], ...] = (
    ("pairs", "completed trials equal in everything but the compared axis (seeds pair up)"),
    ("Δ", "metric(A) − metric(B) per pair; a difference within the metric's margin counts as a tie"),
    (f"1 to {MIN_PAIRS - 1} pairs", f"mean Δ only: below {MIN_PAIRS} pairs neither is shown (*{FEW}*)"),
    (f"{MIN_PAIRS}+ pairs", "95% t interval of the mean Δ; two-sided paired t-test"),
    (
        "verdict",
        f"*{CLEAR}* when the p-value, Holm-adjusted over all the report's comparisons with a test, is below "
        f"{ALPHA:.0%} (at most {ALPHA:.0%} chance of any false clear win in the report, for roughly normal "
        f"differences); otherwise *{NO_DIFF}*",
    ),
    (
        "pairs that differ in more than the seed",
        "not replicates: the verdict is about the average effect over those settings",
    ),
)
"""How a comparison is made, as the rows of the table every report prints."""
RULES_NOTE = (
    f"A test that needs no normality, the sign-flip test, cannot reach p < {ALPHA:g} below "
    f"{SIGN_FLIP_MIN_PAIRS} pairs (its smallest p-value is 2/2ⁿ, {sign_flip_min_p(3):.2f} at 3 pairs). More "
    "seeds give more pairs; each finding without a clear win says how many pairs a difference of its size "
    "would need."
)


def compare(
    axis: str,
    a: Any,
    b: Any,
    pairs: Sequence[Pair],
    metric: str,
    *,
    higher: bool | None = None,
    margin: float | None = None,
    scope: str = "all pairs",
) -> Finding:
    """The statistics and verdict of one paired comparison, as if it were the only one (family of 1);
    :func:`findings_for` adjusts for the report's other comparisons."""
    info = metric_info(metric, higher, margin)
    diffs = [p.diff for p in pairs]
    n = len(diffs)
    wins_a = wins_b = 0
    for p in pairs:
        if abs(p.diff) > info.tie_margin(p.value_a, p.value_b):
            if (p.diff > 0) == info.higher_is_better:
                wins_a += 1
            else:
                wins_b += 1
    mean, sd = mean_sd(diffs)
    finding_margin = (
        info.tie_margin(
            float(np.mean([p.value_a for p in pairs])), float(np.mean([p.value_b for p in pairs]))
        )
        if n
        else info.margin
    )
    leader = None
    if n and mean != 0:
        leader = a if ((mean > 0) == info.higher_is_better) else b
    ci, p_value = (math.nan, math.nan), math.nan
    if n >= MIN_PAIRS:
        ci, p_value = t_interval(diffs), paired_t_pvalue(diffs)
    finding = Finding(
        axis=axis,
        a=a,
        b=b,
        scope=scope,
        metric=metric,
        higher_is_better=info.higher_is_better,
        pairs=list(pairs),
        n=n,
        wins_a=wins_a,
        wins_b=wins_b,
        ties=n - wins_a - wins_b,
        mean_diff=mean,
        ci=ci,
        p_value=p_value,
        p_adjusted=p_value,
        family_size=1,
        verdict=FEW,
        winner=None,
        leader=leader,
        margin=finding_margin,
        settings=settings(pairs),
    )
    return decide(finding, p_value, 1)


def decide(f: Finding, p_adjusted: float, family_size: int) -> Finding:
    """The verdict from the (adjusted) p-value, and the pairs needed when it is not a clear win."""
    if f.n < MIN_PAIRS:
        verdict = FEW
    else:
        verdict = CLEAR if p_adjusted < ALPHA and f.leader is not None else NO_DIFF
    needed = None
    if verdict != CLEAR and f.n >= 2:
        sd = mean_sd([p.diff for p in f.pairs])[1]
        needed = pairs_needed(f.mean_diff, sd, alpha=ALPHA / max(1, family_size))
        needed = None if needed is None else max(MIN_PAIRS, needed)
    return replace(
        f,
        p_adjusted=p_adjusted,
        family_size=family_size,
        verdict=verdict,
        winner=f.leader if verdict == CLEAR else None,
        pairs_needed=needed,
    )


@dataclass
class _Pending:
    finding: Finding
    rule: Rule | None
    ranking: bool = False


def findings_for(
    trials: Sequence[TrialRow],
    metric: str,
    *,
    teacher_layers: int | None = None,
    higher: bool | None = None,
    margin: float | None = None,
) -> list[Finding]:
    """Every swept axis x pair of values (in sweep order), with verdicts adjusted over all of them (Holm)
    and best-practice judgements where they apply."""
    info = metric_info(metric, higher, margin)
    ctx = Context(trials, teacher_layers)
    pending: list[_Pending] = []
    for axis in axes(trials):
        ax = Axis(trials, axis)
        values = ax.values(trials)
        for i, a in enumerate(values):
            for b in values[i + 1 :]:
                if not ax.comparable(a, b):
                    continue
                pairs = ax.pairs(trials, a, b, metric)
                if not pairs:
                    continue
                pending += _comparisons(axis, a, b, pairs, metric, info.higher_is_better, margin, ctx)
    family = [p for p in pending if p.finding.n >= MIN_PAIRS]
    adjusted = holm([p.finding.p_value for p in family])
    for p, adj in zip(family, adjusted, strict=True):
        p.finding = decide(p.finding, adj, len(family))
    out = []
    for p in pending:
        f = p.finding
        if p.rule is not None:
            f = with_rule(f, p.rule)
            f = other_metric_note(f, trials, compare)
        f = cross_check(f, trials, compare)
        if p.ranking:
            f = bp9(f, ranking_stability(trials, f.axis, f.a, f.b, metric, info.higher_is_better, f.margin))
        out.append(f)
    return out


def _comparisons(
    axis: str,
    a: Any,
    b: Any,
    pairs: list[Pair],
    metric: str,
    higher: bool,
    margin: float | None,
    ctx: Context,
) -> list[_Pending]:
    """The comparison of all pairs plus one per best-practice scope that selects only some of them."""
    base = _Pending(compare(axis, a, b, pairs, metric, higher=higher, margin=margin), None)
    rules = rules_for(axis, a, b, ctx)
    scoped: list[_Pending] = []
    for rule in rules:
        sel = [p for p in pairs if rule.select is None or rule.select(p)]
        if len(sel) == len(pairs):
            base.rule = base.rule or rule
        elif sel:
            sub = compare(axis, a, b, sel, metric, higher=higher, margin=margin, scope=rule.scope)
            scoped.append(_Pending(sub, rule))
    if base.rule is None and rules and not any(r.practice for r in rules):
        base.rule = rules[0]
    base.ranking = axis == "distill.tokens" and base.rule is not None and base.rule.practice == "BP9"
    return [base, *scoped]


__all__ = ["MIN_PAIRS", "RULE_ROWS", "RULES_NOTE", "SIGN_FLIP_MIN_PAIRS", "compare", "decide", "findings_for"]
