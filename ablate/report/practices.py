"""The Minitron papers' claims and how a finding is judged against them (agrees / disagrees / inconclusive).

A paper verdict is only drawn from a comparison that has a verdict of its own:

- *wins* claims (best practices 2, 4, 5, 6, the 40x claim, teacher correction): **agrees** when the expected
  side is a clear win (Holm-adjusted paired t-test, see :mod:`ablate.report.findings`), **disagrees** when the
  other side is, otherwise **inconclusive**.
- *not beaten* (best practice 7: logit-only distillation is enough): **agrees** only when the 95% interval
  shows the alternative is better by less than the metric's equivalence margin (a non-inferiority test),
  **disagrees** when the alternative is a clear win, else **inconclusive**. "No clear difference" alone is
  not agreement.
- best practice 9 (rankings after light retraining already pick the candidate): at least 3 configurations
  trained at both budgets and seed replicates to measure noise; **agrees** when the configuration the small
  budget picks is, at the large budget, within the margin of the best (its 95% interval of the shortfall
  is below the margin), **disagrees** when it is worse by more than the margin beyond noise.
- best practice 5 names the metric it was judged on and what the other quality metric says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats as sps

from ablate.report.crosscheck import pairs_on
from ablate.report.model import (
    AGREES,
    CLEAR,
    DISAGREES,
    FEW,
    INCONCLUSIVE,
    Finding,
    Pair,
    TrialRow,
    canon,
    fmt_value,
)
from ablate.report.pairing import Axis
from ablate.report.stats import ALPHA, kendall_tau

SIZE_TOLERANCE = 0.10
"""Width and depth targets are 'of about equal size' (best practice 4) within this relative difference."""
HEAVY_DEPTH_CUT = 0.25
"""Removing at least this fraction of the teacher's layers is 'heavy depth pruning' (best practices 6/7)."""
MIN_CONFIGURATIONS = 3
"""Best practice 9 needs at least this many configurations trained at both budgets."""

WIDTH_AXES = frozenset({"hidden_size", "intermediate_size", "num_attention_heads"})
DEPTH_AXES = frozenset({"num_hidden_layers"})
DISTILL_LOSSES = ("kld", "kld+intermediate")
OTHER_QUALITY_METRIC = {"lm_loss": "kl_to_teacher", "perplexity": "kl_to_teacher", "kl_to_teacher": "lm_loss"}
"""Best practice 5 depends on the metric (ce optimises held-out loss, kld the match to the teacher): the
finding also reports this other metric."""

MAPPING_ROWS: tuple[tuple[str, str, str], ...] = (
    (
        f"target: width vs depth, students within {SIZE_TOLERANCE:.0%} in size",
        "best practice 4",
        "width is a clear win",
    ),
    (
        "distill.loss: kld vs ce",
        "best practice 5",
        "kld is a clear win on the primary metric (the other quality metrics are reported too)",
    ),
    ("distill.loss: scratch vs a distillation loss", "the 40x claim", "the distillation loss is a clear win"),
    (
        f"distill.loss: kld+intermediate vs kld, ≥{HEAVY_DEPTH_CUT:.0%} of the teacher's layers removed",
        "best practice 6",
        "kld+intermediate is a clear win",
    ),
    (
        f"distill.loss: kld+intermediate vs kld, <{HEAVY_DEPTH_CUT:.0%} of the layers removed",
        "best practice 7",
        "kld is shown within the margin of kld+intermediate (95% interval)",
    ),
    (
        "importance.width.batch_agg / seq_agg, targets that prune width",
        "best practice 2",
        "l2 (batch) / mean (sequence) is a clear win",
    ),
    (
        "distill.tokens: two budgets",
        "best practice 9",
        f"the small budget's pick is within the margin of the best at the large one ({MIN_CONFIGURATIONS}+ "
        "configurations at both budgets, seed replicates)",
    ),
    ("teacher.correction: off vs on", "teacher correction (paper 2)", "on is a clear win"),
)
"""(comparison, claim it tests, *agrees* when): the report's table of checks against the papers.
*disagrees*: the other side is a clear win (best practice 9: the pick is worse by more than the margin
beyond noise); *inconclusive*: anything else."""


@dataclass(frozen=True)
class Practice:
    """A claim of the Minitron papers that a comparison can test."""

    id: str
    title: str
    claim: str


PRACTICES: dict[str, Practice] = {
    p.id: p
    for p in (
        Practice("BP1", "best practice 1", "Train the largest model, then prune and distill iteratively."),
        Practice(
            "BP2", "best practice 2", "Width importance with (batch=L2, seq=mean); PPL or BI for depth."
        ),
        Practice("BP3", "best practice 3", "Single-shot importance; iterative brings no gain."),
        Practice("BP4", "best practice 4", "Prefer width over depth pruning (at up to 15B)."),
        Practice(
            "BP5", "best practice 5", "Retrain with distillation loss only (KLD), not conventional training."
        ),
        Practice(
            "BP6", "best practice 6", "Logit + intermediate + embedding distillation when depth is cut a lot."
        ),
        Practice("BP7", "best practice 7", "Logit-only distillation when depth is not cut much."),
        Practice("BP8", "best practice 8", "Prune from the model closest to the target size."),
        Practice(
            "BP9",
            "best practice 9",
            "Lightweight retraining (~1.8B tokens; rankings settle after ~300 steps) before choosing "
            "among searched candidates.",
        ),
        Practice(
            "BP10", "best practice 10", "With multi-phase pretraining, prune the final-phase checkpoint."
        ),
        Practice(
            "40x",
            "the 40x claim",
            "Pruning + distillation reaches a given quality with up to 40x fewer tokens than training from "
            "scratch, so at equal tokens the distilled student is clearly better.",
        ),
        Practice(
            "TC",
            "teacher correction (paper 2)",
            "Fine-tuning the teacher on the distillation data first gives a better distilled student.",
        ),
    )
}


def shape_kind(shape: Mapping[str, int] | None) -> str | None:
    """'width' (only hidden/FFN/heads pruned), 'depth' (only layers), 'width+depth', or None."""
    if not shape:
        return None
    axes = set(shape)
    if axes <= DEPTH_AXES:
        return "depth"
    if axes <= WIDTH_AXES:
        return "width"
    return "width+depth"


@dataclass(frozen=True)
class Rule:
    practice: str | None
    expected: Any = None
    mode: str = "wins"
    """'wins': the expected value should clearly win; 'not_beaten': it should not clearly lose;
    'none': no expected winner (reported for reference)."""
    scope: str = "all pairs"
    select: Callable[[Pair], bool] | None = None
    note: str = ""


class Context:
    """What the rules need to know about the experiment: target shapes and sizes (by the ``target`` axis's
    values, so each shape of a target name is its own) and the teacher's depth."""

    def __init__(self, trials: Sequence[TrialRow], teacher_layers: int | None):
        self.teacher_layers = teacher_layers
        self.target_shape: dict[str, dict[str, int]] = {}
        self.target_params: dict[str, int | None] = {}
        target = Axis(trials, "target")
        for t in trials:
            if isinstance(t.overrides.get("target"), str) and t.shape is not None:
                label = target.value(t)
                self.target_shape.setdefault(label, t.shape)
                self.target_params.setdefault(label, t.params)

    def depth_cut(self, shape: Mapping[str, int] | None) -> float | None:
        if not shape:
            return None
        if "num_hidden_layers" not in shape:
            return 0.0
        if not self.teacher_layers:
            return None
        return 1.0 - shape["num_hidden_layers"] / self.teacher_layers

    def pair_shape(self, p: Pair) -> dict[str, int] | None:
        shape = p.context.get("target")
        if isinstance(shape, dict):
            return shape
        name = p.context.get("target")
        return self.target_shape.get(name) if isinstance(name, str) else None


def rules_for(axis: str, a: Any, b: Any, ctx: Context) -> list[Rule]:
    vals = {a, b} if all(isinstance(v, str | int | float | type(None)) for v in (a, b)) else set()
    if axis == "target" and isinstance(a, str) and isinstance(b, str):
        kinds = {v: shape_kind(ctx.target_shape.get(v)) for v in (a, b)}
        if sorted(k or "" for k in kinds.values()) != ["depth", "width"]:
            return []
        width = a if kinds[a] == "width" else b
        pa, pb = ctx.target_params.get(a), ctx.target_params.get(b)
        if pa and pb:
            rel = abs(pa - pb) / max(pa, pb)
            if rel > SIZE_TOLERANCE:
                return [
                    Rule(
                        None,
                        note=f"Width vs depth, but the two students differ in size by {rel:.0%} "
                        f"(best practice 4 compares students of about equal size, within "
                        f"{SIZE_TOLERANCE:.0%}), so it is not tested here.",
                    )
                ]
            return [Rule("BP4", width)]
        return [Rule("BP4", width, note="Parameter counts unknown here; assumed about equal.")]
    if axis == "distill.loss":
        if vals == {"kld", "ce"}:
            return [Rule("BP5", "kld")]
        if "scratch" in vals and vals & set(DISTILL_LOSSES):
            return [Rule("40x", next(v for v in (a, b) if v in DISTILL_LOSSES))]
        if vals == {"kld", "kld+intermediate"}:

            def heavy(p: Pair) -> bool:
                cut = ctx.depth_cut(ctx.pair_shape(p))
                return cut is not None and cut >= HEAVY_DEPTH_CUT

            def light(p: Pair) -> bool:
                cut = ctx.depth_cut(ctx.pair_shape(p))
                return cut is not None and cut < HEAVY_DEPTH_CUT

            return [
                Rule(
                    "BP6",
                    "kld+intermediate",
                    scope=f"heavy depth pruning (≥{HEAVY_DEPTH_CUT:.0%} of layers removed)",
                    select=heavy,
                ),
                Rule(
                    "BP7",
                    "kld",
                    mode="not_beaten",
                    scope=f"little or no depth pruning (<{HEAVY_DEPTH_CUT:.0%} of layers removed)",
                    select=light,
                ),
            ]
        return []
    if axis in ("importance.width.batch_agg", "importance.width.seq_agg"):
        best = "l2" if axis.endswith("batch_agg") else "mean"
        expected = best if best in vals else None

        def prunes_width(p: Pair) -> bool:
            return bool(set(ctx.pair_shape(p) or {}) & WIDTH_AXES)

        return [
            Rule(
                "BP2",
                expected,
                mode="wins" if expected else "none",
                scope="targets that prune width",
                select=prunes_width,
            )
        ]
    if axis == "importance.depth.method":

        def prunes_depth(p: Pair) -> bool:
            return "num_hidden_layers" in (ctx.pair_shape(p) or {})

        return [
            Rule(
                "BP2",
                None,
                mode="none",
                scope="targets that prune depth",
                select=prunes_depth,
                note="Paper 1 recommends PPL (lm_loss) or BI (block_importance) for depth; paper 2 found "
                "contiguous removal scored on a downstream task better for Llama-3.1 8B->4B.",
            )
        ]
    if axis == "distill.tokens" and all(isinstance(v, int | float) for v in (a, b)):
        return [Rule("BP9", max(a, b))]
    if axis == "teacher.correction" and (a is None) != (b is None):
        return [Rule("TC", b if a is None else a)]
    return []


def _advantage_bound(f: Finding, expected: Any) -> float:
    """Upper 95% bound of how much better the alternative is than ``expected`` (in the metric's units,
    positive = the alternative is better)."""
    exp_is_a = canon(expected) == canon(f.a)
    # diff = A - B; "better" is larger when higher is better
    sign = (-1.0 if exp_is_a else 1.0) * (1.0 if f.higher_is_better else -1.0)
    lo, hi = f.ci
    return sign * hi if sign > 0 else sign * lo


def judge(f: Finding, rule: Rule) -> tuple[str | None, str]:
    """(agreement, one sentence explaining it); see the module docstring for the rules."""
    if rule.practice is None:
        return None, ""
    p = PRACTICES[rule.practice]
    exp = rule.expected
    leans = f"; {fmt_value(f.leader)} leads on average" if f.leader is not None else ""
    if rule.mode == "none" or exp is None:
        return None, f"{p.title}: {p.claim} No single expected winner for this pair."
    want = (
        "to win"
        if rule.mode == "wins"
        else "to be enough (the alternative no better by more than the margin)"
    )
    head = f"{p.title} expects {fmt_value(exp)} {want}"
    if f.verdict == FEW:
        return INCONCLUSIVE, f"{head}: too few pairs to tell{leans}."
    if f.verdict == CLEAR:
        ok = canon(f.winner) == canon(exp)
        return (AGREES if ok else DISAGREES), f"{head}; here {fmt_value(f.winner)} is a clear win."
    if rule.mode == "wins":
        return INCONCLUSIVE, f"{head}; here there is no clear difference{leans}."
    bound = _advantage_bound(f, exp)
    if bound < f.margin:
        return AGREES, (
            f"{head}; the alternative is at most {bound:+.4g} better (upper end of the 95% interval), "
            f"within the margin {f.margin:.4g}."
        )
    return INCONCLUSIVE, (
        f"{head}; no clear difference, but the 95% interval allows the alternative to be up to {bound:+.4g} "
        f"better, more than the margin {f.margin:.4g}, so equivalence is not shown{leans}."
    )


def with_rule(f: Finding, rule: Rule) -> Finding:
    agreement, text = judge(f, rule)
    return replace(
        f,
        practice=rule.practice,
        expected=rule.expected,
        agreement=agreement,
        explanation=text,
        note=rule.note,
    )


def other_metric_note(f: Finding, trials: Sequence[TrialRow], compare: Callable[..., Finding]) -> Finding:
    """Best practice 5: say which metric the verdict is on and what the other quality metric says."""
    other = OTHER_QUALITY_METRIC.get(f.metric)
    if f.practice != "BP5" or other is None:
        return f
    pairs = pairs_on(f, trials, other)
    text = f"{f.explanation} Judged on {f.metric}."
    if not pairs:
        return replace(f, explanation=text + f" The trials did not log {other}.")
    o = compare(f.axis, f.a, f.b, pairs, other)
    interval = (
        ""
        if math.isnan(o.ci[0])
        else f", 95% interval [{o.ci[0]:+.4g}, {o.ci[1]:+.4g}], p = {o.p_value:.2g} (not adjusted)"
    )
    said = f"{o.verdict}: {fmt_value(o.winner)}" if o.verdict == CLEAR else o.verdict
    text += f" On {other}: mean Δ {o.mean_diff:+.4g}{interval}, {said}."
    return replace(f, explanation=text, extra={**f.extra, "other_metric": other, "other": o.to_dict()})


# ---------------------------------------------------------------------- best practice 9


def ranking_stability(
    trials: Sequence[TrialRow], axis: str, a: Any, b: Any, metric: str, higher: bool, margin: float
) -> dict[str, Any]:
    """Best practice 9: is the configuration the smaller budget picks also (within the margin) the best at
    the larger one, beyond the seed-to-seed noise?"""
    small, large = (a, b) if a < b else (b, a)
    cs, cl = canon(small), canon(large)
    ax = Axis(trials, axis)
    labels: dict[str, str] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for t, v in ax.members(trials, small, large, metric):
        ctx = ax.context(t)
        ctx.pop("seed", None)
        key = canon(ctx)
        others = {k: x for k, x in t.overrides.items() if k not in (axis, "seed")}
        labels.setdefault(key, ", ".join(f"{k}={fmt_value(x)}" for k, x in others.items()) or "(fixed)")
        values.setdefault(key, {}).setdefault(v, []).append(t.metrics[metric])
    both = {k: v for k, v in values.items() if cs in v and cl in v}
    out: dict[str, Any] = {"configurations": len(both), "small": small, "large": large}
    if len(both) < MIN_CONFIGURATIONS:  # a rank correlation of two configurations is always +-1
        return out
    sign = -1.0 if higher else 1.0  # sign * value: smaller is better
    mean_s = {k: float(np.mean(v[cs])) for k, v in both.items()}
    mean_l = {k: float(np.mean(v[cl])) for k, v in both.items()}
    pick = min(both, key=lambda k: (sign * mean_s[k], labels[k]))
    best = min(both, key=lambda k: (sign * mean_l[k], labels[k]))
    keys = list(both)
    out.update(
        kendall_tau=kendall_tau([mean_s[k] for k in keys], [mean_l[k] for k in keys]),
        best_at_small=labels[pick],
        best_at_large=labels[best],
        same_best=pick == best,
        shortfall=sign * (mean_l[pick] - mean_l[best]),
    )
    # seed-to-seed noise at the large budget: pooled within-configuration variance
    groups = [v[cl] for v in both.values() if len(v[cl]) > 1]
    df = sum(len(g) - 1 for g in groups)
    if df == 0:
        out["noise"] = None
        return out
    sd = math.sqrt(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / df)
    t = float(sps.t.ppf(1 - ALPHA / 2, df))
    # how much better each other configuration is than the pick, with its 95% interval; the shortfall's
    # bounds are the largest of these bounds
    lows, highs = [], []
    for k in both:
        if k == pick:
            continue
        d = sign * (mean_l[pick] - mean_l[k])
        half = t * sd * math.sqrt(1 / len(both[pick][cl]) + 1 / len(both[k][cl]))
        lows.append(d - half)
        highs.append(d + half)
    out.update(noise=sd, shortfall_ci=(max(lows), max(highs)), margin=margin)
    return out


def bp9(f: Finding, stab: dict[str, Any]) -> Finding:
    """Best practice 9 is about choosing candidates on a small budget: judge it on the ranking, not on
    which budget is better (the finding's own verdict)."""
    n = stab.get("configurations", 0)
    small, large = fmt_value(stab.get("small")), fmt_value(stab.get("large"))
    head = (
        f"Best practice 9 is judged on the ranking of configurations, not on which budget wins: "
        f"{n} configuration{'s' if n != 1 else ''} trained at both {small} and {large} tokens."
    )
    if n < MIN_CONFIGURATIONS:
        agreement, text = INCONCLUSIVE, f"{head} It needs at least {MIN_CONFIGURATIONS}."
    elif stab.get("noise") is None:
        agreement, text = (
            INCONCLUSIVE,
            (
                f"{head} Best at {small}: {stab['best_at_small']}; best at {large}: {stab['best_at_large']}; "
                "but no configuration has several seeds, so a change of ranking cannot be told from noise."
            ),
        )
    else:
        lo, hi = stab["shortfall_ci"]
        m = stab["margin"]
        if hi < m:
            agreement = AGREES
        elif lo > m:
            agreement = DISAGREES
        else:
            agreement = INCONCLUSIVE
        text = (
            f"{head} Best at {small}: {stab['best_at_small']}; best at {large}: {stab['best_at_large']} "
            f"({'same' if stab['same_best'] else 'different'} choice, Kendall's tau {stab['kendall_tau']:+.2f}). "
            f"At {large} tokens the small budget's pick falls short of the best by {stab['shortfall']:.4g}, "
            f"95% interval [{lo:.4g}, {hi:.4g}] from the seed-to-seed noise (sd {stab['noise']:.3g}); "
            f"margin {m:.4g}."
        )
    return replace(f, agreement=agreement, explanation=text, extra={**f.extra, "ranking": stab})


__all__ = [
    "DEPTH_AXES",
    "HEAVY_DEPTH_CUT",
    "MAPPING_ROWS",
    "MIN_CONFIGURATIONS",
    "PRACTICES",
    "SIZE_TOLERANCE",
    "WIDTH_AXES",
    "Context",
    "Practice",
    "Rule",
    "bp9",
    "judge",
    "other_metric_note",
    "ranking_stability",
    "rules_for",
    "shape_kind",
    "with_rule",
]
