"""Every finding checked on the other held-out quality metrics, and a sentence when they disagree.

The primary metric decides a finding; but held-out LM loss and the match to the teacher (KL, top-1
agreement) measure different things and can favour different sides (``ce`` trains on the text's own
tokens, so it tends to win on LM loss; ``kld`` trains on the teacher's distribution, so it tends to win on
KL and agreement). When they point different ways the report says which side each favours and what each
measures, so a reader picks the metric for the use they have in mind rather than the one the table sorts by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ablate.report.model import Finding, Pair, TrialRow, canon, finished, fmt_value

QUALITY_METRICS = ("lm_loss", "kl_to_teacher", "top1_agreement")
"""The held-out metrics every trial logs that judge quality in different senses (perplexity is a function
of lm_loss, so it never disagrees with it)."""
SAME_AS = {"perplexity": "lm_loss"}
MEANING = {
    "lm_loss": "how well the student predicts the held-out text itself (trust it for the student used on its "
    "own, as a language model)",
    "kl_to_teacher": "how closely its whole next-token distribution matches the teacher's (trust it when the "
    "student is to stand in for the teacher, or to be distilled further)",
    "top1_agreement": "how often its most likely next token is the teacher's (the same question for greedy "
    "decoding)",
}


def pairs_on(f: Finding, trials: Sequence[TrialRow], metric: str) -> list[Pair]:
    """A finding's pairs again, valued on another metric (pairs whose trials did not log it are left out)."""
    keys = {k for p in f.pairs for k in (p.key_a, p.key_b)}
    by_key = {t.key: t for t in trials if t.key in keys and finished(t, metric)}
    return [
        Pair(p.key_a, p.key_b, by_key[p.key_a].metrics[metric], by_key[p.key_b].metrics[metric], p.context)
        for p in f.pairs
        if p.key_a in by_key and p.key_b in by_key
    ]


def _on(
    f: Finding, trials: Sequence[TrialRow], metric: str, compare: Callable[..., Finding]
) -> Finding | None:
    pairs = pairs_on(f, trials, metric)
    if not pairs:
        return None
    return compare(f.axis, f.a, f.b, pairs, metric, scope=f.scope)


def cross_check(f: Finding, trials: Sequence[TrialRow], compare: Callable[..., Finding]) -> Finding:
    """``f`` with ``extra['by_metric']`` (the side each quality metric favours, beyond its tie margin) and,
    when they do not all favour one side, ``extra['disagreement']``: one sentence naming who leads on
    which metric and what each metric measures."""
    primary = SAME_AS.get(f.metric, f.metric)
    if primary not in QUALITY_METRICS or f.leader is None:
        return f
    leaders = {f.metric: f.leader}
    for metric in QUALITY_METRICS:
        if metric == primary:
            continue
        other = _on(f, trials, metric, compare)
        if other is not None and other.leader is not None and abs(other.mean_diff) > other.margin:
            leaders[metric] = other.leader
    if len({canon(v) for v in leaders.values()}) < 2:
        return replace(f, extra={**f.extra, "by_metric": {m: fmt_value(v) for m, v in leaders.items()}})
    sides: dict[str, list[str]] = {}
    for metric, leader in leaders.items():
        sides.setdefault(fmt_value(leader), []).append(metric)
    favours = "; ".join(f"{side} on {' and '.join(ms)}" for side, ms in sides.items())
    meant = " ".join(
        f"{m} measures {MEANING[SAME_AS.get(m, m)]}." for m in leaders if SAME_AS.get(m, m) in MEANING
    )
    sentence = (
        f"**The metrics disagree** (mean over the pairs: {favours}); the verdict above is on {f.metric}. "
        f"{meant}"
    )
    return replace(
        f,
        extra={
            **f.extra,
            "by_metric": {m: fmt_value(v) for m, v in leaders.items()},
            "disagreement": sentence,
        },
    )


__all__ = ["MEANING", "QUALITY_METRICS", "cross_check"]
