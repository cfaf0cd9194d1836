"""The report's search section: every candidate's one-shot score and rank, the top_k's values after
retraining, how well the one-shot ranking predicted the retrained one (rank correlation over the
retrained candidates), and whether the one-shot best is also the retrained winner. Minitron's claim is
that it often is not; this is where a study shows it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ablate.report.metrics import metric_info
from ablate.report.model import TrialRow


def search_of(
    records: Any, experiment: str, trials: Sequence[TrialRow], section: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The search as the report shows it (empty without one): each candidate with its retrained mean of
    the search's selection metric over its finished seeds (what chose the winner), and the rank
    correlation. `section` is the spec's recorded search section."""
    rows = records.search_candidates(experiment)
    if not rows or not isinstance(section, Mapping):
        return {}
    select = section.get("select") or {}
    score = section.get("score") or {}
    metric = str(select.get("metric") or score.get("metric") or rows[0].metric)
    direction = select.get("higher_is_better") if select.get("metric") else score.get("higher_is_better")
    higher_is_better = metric_info(metric, direction).higher_is_better
    by_key = {t.key: t for t in trials}
    candidates: list[dict[str, Any]] = []
    for row in rows:
        values = [by_key[k].metrics.get(metric, math.nan) for k in row.trial_keys if k in by_key]
        values = [v for v in values if not math.isnan(v)]
        candidates.append(
            {
                **row.to_dict(),
                "retrained": sum(values) / len(values) if values else None,
                "seeds": len(values),
            }
        )
    retrained = [c for c in candidates if c["retrained"] is not None and c["rank"] is not None]
    order = sorted(retrained, key=lambda c: -c["retrained"] if higher_is_better else c["retrained"])
    for place, c in enumerate(order, 1):
        c["retrained_rank"] = place
    one_shot_best = next((c["name"] for c in candidates if c["rank"] == 1), None)
    winner = next((c["name"] for c in candidates if c["winner"]), None)
    return {
        "score_metric": rows[0].metric,
        "metric": metric,
        "candidates": candidates,
        "one_shot_best": one_shot_best,
        "winner": winner,
        "correlation": rank_correlation(
            [c["rank"] for c in retrained], [c["retrained_rank"] for c in retrained]
        ),
    }


def rank_correlation(one_shot: Sequence[int], retrained: Sequence[int]) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau (with its p-value) between the one-shot and retrained ranks. With
    fewer than three candidates there is nothing to estimate (two ranks always correlate at +-1)."""
    n = len(one_shot)
    if n < 3:
        return {"n": n, "spearman": None, "kendall": None, "p_value": None}
    from scipy import stats

    tau = stats.kendalltau(one_shot, retrained)
    rho = stats.spearmanr(one_shot, retrained)
    return {
        "n": n,
        "spearman": float(rho.statistic),
        "kendall": float(tau.statistic),
        "p_value": float(tau.pvalue),
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def search_section(search: Mapping[str, Any]) -> list[str]:
    """## Search: the candidate table (best one-shot first) and what the retraining changed."""
    if not search:
        return []
    metric, score = search["metric"], search["score_metric"]
    lines = [
        "## Search",
        "",
        f"Every candidate pruned and scored one-shot by `{score}`; the top ones retrained (`search.retrain`) "
        f"and compared by `{metric}` (mean over their finished seeds). Winner: "
        f"**{search['winner'] or 'none yet'}**; best one-shot: {search['one_shot_best'] or '-'}.",
        "",
        f"| one-shot rank | candidate | params | one-shot {score} | retrained {metric} | seeds | retrained rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in search["candidates"]:
        name = f"**{c['name']}** (winner)" if c["winner"] else c["name"]
        lines.append(
            f"| {c['rank'] or '-'} | {name} | {c['params']:,} | {_fmt(c['score'])} | {_fmt(c['retrained'])} | "
            f"{c['seeds'] or '-'} | {c.get('retrained_rank', '-')} |"
        )
    corr = search["correlation"]
    lines.append("")
    if corr["spearman"] is None:
        lines.append(
            f"Rank correlation: not estimated ({corr['n']} retrained candidate(s); it needs at least 3)."
        )
    else:
        lines.append(
            f"Rank correlation between the one-shot and retrained rankings over {corr['n']} retrained "
            f"candidates: Spearman {corr['spearman']:+.2f}, Kendall's tau {corr['kendall']:+.2f} "
            f"(p = {corr['p_value']:.2g})."
        )
    best, won = search["one_shot_best"], search["winner"]
    if won is not None and best is not None:
        same = "is" if best == won else "is not"
        lines.append(f"The one-shot best ({best}) {same} the retrained winner ({won}).")
    return lines
