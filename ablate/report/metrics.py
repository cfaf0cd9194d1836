"""Which way a metric goes and how small a difference is 'no difference': declared, never guessed.

Every metric a trial logs is in :data:`KNOWN` (a benchmark metric, ``TASK/METRIC``, by its METRIC, so
``pydoc_cloze/acc`` goes as ``acc``); any other metric must be declared in
the spec (``report: {metric: ..., higher_is_better: ..., margin: ...}``) or on the command line
(``ablate report --higher-is-better``), and the report refuses to guess from the metric's name.

The margin is the smallest difference a user would act on. Differences below it count as ties in the win
counts, and it is the equivalence margin of best practices 7 and 9 ("no worse than the alternative by
more than the margin"). It does not enter the clear-win test, which is a plain paired t-test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ablate.report.model import ReportError


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    margin: float
    """In the metric's units; for ``relative`` metrics a fraction of the pair's mean value."""
    relative: bool = False

    def tie_margin(self, a: float, b: float) -> float:
        """The margin for one pair of values (relative metrics scale with the values)."""
        if self.relative:
            return self.margin * (abs(a) + abs(b)) / 2
        return self.margin

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


KNOWN: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        # 0.01 nats of held-out loss is a 1% change in perplexity.
        MetricInfo("lm_loss", False, 0.01),
        MetricInfo("perplexity", False, 0.01, relative=True),
        MetricInfo("kl_to_teacher", False, 0.01),
        # half a point of next-token agreement with the teacher
        MetricInfo("top1_agreement", True, 0.005),
        MetricInfo("loss", False, 0.01),
        # lm-evaluation-harness accuracies (fractions): half a point
        MetricInfo("acc", True, 0.005),
        MetricInfo("acc_norm", True, 0.005),
        MetricInfo("exact_match", True, 0.005),
        # the align section's held-out metrics (ablate.align.metrics)
        MetricInfo("instruct_loss", False, 0.01),
        MetricInfo("pref_margin", True, 0.1),  # nats of log-likelihood over a whole answer
        MetricInfo("pref_win_rate", True, 0.01),
    )
}


def metric_info(name: str, higher_is_better: bool | None = None, margin: float | None = None) -> MetricInfo:
    """The direction and margin of ``name``: from :data:`KNOWN`, overridden by what the user declared.

    Raises :class:`ReportError` for a metric that is neither known nor declared (naming both fixes).
    """
    known = KNOWN.get(name)
    task, slash, base = name.rpartition("/")
    if known is None and slash and task and base in KNOWN:  # a benchmark's: "TASK/acc" goes as "acc" goes
        known = KNOWN[base]
    if margin is not None and not (math.isfinite(margin) and margin >= 0):
        raise ReportError(f"report.margin must be a finite number >= 0 (got {margin!r})")
    if known is None and higher_is_better is None:
        raise ReportError(
            f"the direction of metric {name!r} is unknown (known: {', '.join(sorted(KNOWN))}); declare it "
            f"in the spec (report: {{metric: {name}, higher_is_better: true}}) or pass --higher-is-better / "
            "--lower-is-better"
        )
    if known is None:
        return MetricInfo(name, bool(higher_is_better), 0.0 if margin is None else margin)
    return MetricInfo(
        name,
        known.higher_is_better if higher_is_better is None else higher_is_better,
        known.margin if margin is None else margin,
        relative=known.relative if margin is None else False,
    )


def higher_is_better(metric: str) -> bool:
    """Whether larger values of a known metric are better (raises for an undeclared unknown one)."""
    return metric_info(metric).higher_is_better


__all__ = ["KNOWN", "MetricInfo", "higher_is_better", "metric_info"]
