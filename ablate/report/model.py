"""The report's plain data: trials, pairs, findings, the best trial and the whole report (no logic beyond
formatting and JSON). Computed by :mod:`ablate.report.findings` and :mod:`ablate.report.records`,
rendered by :mod:`ablate.report.markdown` and :mod:`ablate.report.plots`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ablate.errors import AblateError
from ablate.jsonable import JsonRow, jsonable

CLEAR, NO_DIFF, FEW = "clear win", "no clear difference", "too few pairs"
AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"


class ReportError(AblateError):
    """The report cannot be made from these records (no such experiment, nothing finished, unknown metric)."""


def fmt_value(value: Any) -> str:
    """A sweep value as a short, stable label (None -> 'none', mappings as compact JSON)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class TrialRow(JsonRow):
    """One trial as the report shows it."""

    id: int
    key: str
    status: str
    overrides: dict[str, Any]
    config: dict[str, Any] | None
    metrics: dict[str, float]
    """Final metrics (held-out)."""
    error: str | None
    duration_s: float | None
    mlflow_run_id: str | None
    params: int | None
    """Exact parameter count of the student (None when the teacher's config is not available here)."""
    tokens: int | None
    """Training tokens seen (the last logged ``tokens`` step value; else the budget in the config)."""
    shape: dict[str, int] | None
    """The target shape (pruned axes and their sizes)."""

    @property
    def label(self) -> str:
        """The overrides without the seed, e.g. ``target=width, distill.loss=kld``."""
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.overrides.items() if k != "seed") or self.key


@dataclass(frozen=True)
class Pair:
    key_a: str
    key_b: str
    value_a: float
    value_b: float
    context: dict[str, Any]
    """What the two trials share (the resolved config without the compared axis)."""

    @property
    def diff(self) -> float:
        return self.value_a - self.value_b


@dataclass(frozen=True)
class Finding:
    """A paired comparison of two values of one axis, optionally restricted to a scope of pairs."""

    axis: str
    a: Any
    b: Any
    scope: str
    """'all pairs' or what restricts the pairs, e.g. 'heavy depth pruning'."""
    metric: str
    higher_is_better: bool
    pairs: list[Pair]
    n: int
    wins_a: int
    wins_b: int
    ties: int
    mean_diff: float
    """Mean of metric(a) - metric(b) (nan without pairs)."""
    ci: tuple[float, float]
    """95% t interval of the mean difference (nan below MIN_PAIRS pairs, where none is shown)."""
    p_value: float
    """Two-sided paired t-test of mean difference 0 (nan below MIN_PAIRS pairs)."""
    p_adjusted: float
    """``p_value`` after Holm's adjustment over the report's ``family_size`` comparisons."""
    family_size: int
    """How many comparisons of the report share the 5% family-wise error rate (1 for a lone comparison)."""
    verdict: str
    winner: Any
    """The value that clearly won (only with verdict 'clear win'); None otherwise."""
    leader: Any
    """The value better on average (None when the mean difference is below the metric's tie margin)."""
    margin: float
    """The metric's tie/equivalence margin: smaller differences do not count as a win."""
    settings: list[str] = field(default_factory=list)
    """Fields other than the seed in which the pairs differ from each other (empty: pure seed replicates)."""
    pairs_needed: int | None = None
    """Pairs a t-test would need for 80% power at a true difference of this size and spread."""
    practice: str | None = None
    """Id in :data:`PRACTICES` this comparison tests."""
    expected: Any = None
    """The value the paper expects to win (None when the claim names no winner)."""
    agreement: str | None = None
    """'agrees' / 'disagrees' / 'inconclusive' with the paper; None without a practice."""
    explanation: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label_a(self) -> str:
        return fmt_value(self.a)

    @property
    def label_b(self) -> str:
        return fmt_value(self.b)

    @property
    def title(self) -> str:
        scope = "" if self.scope == "all pairs" else f" ({self.scope})"
        return f"{self.axis}: {self.label_a} vs {self.label_b}{scope}"

    @property
    def slug(self) -> str:
        raw = f"{self.axis}-{self.label_a}-vs-{self.label_b}"
        if self.scope != "all pairs":
            raw += "-" + self.scope
        out = "".join(c if c.isalnum() else "-" for c in raw.lower())
        while "--" in out:
            out = out.replace("--", "-")
        return out.strip("-")[:80]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [{**asdict(p), "diff": p.diff} for p in self.pairs]
        d["title"] = self.title
        d["ci"] = list(self.ci)
        d["replicates_only"] = not self.settings
        return jsonable(d)


@dataclass(frozen=True)
class BestTrial(TrialRow):
    """The trial ``ablate build`` starts from (its row, with the resolved config it ran), and why it was
    chosen: the primary metric, its value and its configuration's mean over seeds."""

    metric: str
    value: float
    """The trial's value of the primary metric."""
    group_mean: float
    """Mean of the metric over the seeds of its configuration (what the choice was made on)."""
    seeds: int
    """Finished seeds of its configuration."""


@dataclass(frozen=True)
class Reference(JsonRow):
    """A model the trials are measured against: the teacher, or a pruned student before any retraining."""

    kind: str
    """'teacher' or 'pruned'."""
    label: str
    group: str
    """Which trials it is the reference of (canonical JSON of what the teacher / the prune stage computed)."""
    params: int | None
    metrics: dict[str, float]
    """Held-out metrics (empty where the records do not hold them; see ``missing``)."""
    missing: str = ""
    """What the records lack for this row, in words (empty when nothing is missing)."""


@dataclass
class Report:
    """Everything the report shows, computed from the records (see :func:`build_report`)."""

    experiment: str
    description: str
    spec_text: str
    spec_hash: str
    spec: dict[str, Any]
    """The spec as written (parsed YAML; an ``extends`` base is not merged in)."""
    metric: str
    higher_is_better: bool
    trials: list[TrialRow]
    findings: list[Finding]
    best_trial: BestTrial
    recipe: dict[str, Any]
    """What ``ablate build`` will run: trial key, why it was chosen, teacher, target, importance, distill
    settings (with build.tokens as the budget when set) and export formats."""
    teacher: dict[str, Any]
    """model reference, parameter count (None if unknown), layers."""
    tracking_uri: str
    mlflow_experiment_id: str | None
    mlflow_parent_run_id: str | None
    ui_base: str
    series: dict[str, dict[str, list[float]]]
    """trial key -> {"step", "tokens", "loss", "eval_<metric>"}: per-step values for the loss plot."""
    untested: list[str]
    """Ids of the best practices this experiment does not test."""
    counts: dict[str, int]
    compute: dict[str, Any] = field(default_factory=dict)
    margin: float = 0.0
    """The primary metric's tie/equivalence margin (see :mod:`ablate.report.metrics`)."""
    family_size: int = 0
    """Comparisons with a verdict; Holm's adjustment keeps the chance of any false 'clear win' among them
    at 5%."""
    benchmarks: dict[str, Any] = field(default_factory=dict)
    """lm-eval results: {"teacher": {task: {metric: v, metric_stderr: e}}, "trials": {key: {...}}}."""
    search: dict[str, Any] = field(default_factory=dict)
    """The spec's search, if it has one (:mod:`ablate.report.search`)."""
    align: dict[str, Any] = field(default_factory=dict)
    """The spec's alignment stages, if it has them (:mod:`ablate.report.align`)."""
    references: list[Reference] = field(default_factory=list)
    """The teacher(s) and each pruned student before retraining (:mod:`ablate.report.references`)."""
    recovered: dict[str, float] = field(default_factory=dict)
    """trial key -> share of the gap between its pruned student and its teacher that retraining closed on
    the primary metric (1: as good as the teacher, 0: no better than pruning alone)."""
    """What the experiment cost: stages per kind (against the naive count), summed stage and trial
    times, and each submission's own summary line."""

    @property
    def finished(self) -> list[TrialRow]:
        return [t for t in self.trials if finished(t, self.metric)]

    def run_url(self, run_id: str | None) -> str | None:
        if not run_id or not self.mlflow_experiment_id:
            return None
        from ablate.track.urls import model_training_view  # MLflow 3 opens the GenAI view otherwise

        return model_training_view(f"{self.ui_base}/#/experiments/{self.mlflow_experiment_id}/runs/{run_id}")

    def compare_url(self) -> str | None:
        runs = [t.mlflow_run_id for t in self.trials if t.mlflow_run_id]
        if not runs or not self.mlflow_experiment_id:
            return None
        return compare_runs_url(self.ui_base, self.mlflow_experiment_id, runs)

    def to_dict(self) -> dict[str, Any]:
        from ablate.secrets import redact

        return redact(  # the JSON leaves the process: no password of the spec goes with it
            jsonable(
                {
                    "experiment": self.experiment,
                    "description": self.description,
                    "spec_hash": self.spec_hash,
                    "metric": self.metric,
                    "higher_is_better": self.higher_is_better,
                    "margin": self.margin,
                    "family_size": self.family_size,
                    "counts": self.counts,
                    "teacher": self.teacher,
                    "trials": [t.to_dict() for t in self.trials],
                    "findings": [f.to_dict() for f in self.findings],
                    "best_trial": self.best_trial.to_dict(),
                    "recipe": self.recipe,
                    "untested_practices": self.untested,
                    "references": [r.to_dict() for r in self.references],
                    "recovered": self.recovered,
                    **({"benchmarks": self.benchmarks} if self.benchmarks else {}),
                    **({"search": self.search} if self.search else {}),
                    **({"align": self.align} if self.align else {}),
                    "mlflow": {
                        "tracking_uri": _redact(self.tracking_uri),
                        "experiment_id": self.mlflow_experiment_id,
                        "parent_run_id": self.mlflow_parent_run_id,
                        "compare_url": self.compare_url(),
                    },
                }
            )
        )


def compare_runs_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The MLflow 3 UI's run-comparison view (``#/compare-runs?runs=[..]&experiments=[..]``)."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    exps = quote(json.dumps([str(experiment_id)], separators=(",", ":")), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


def _redact(url: str) -> str:
    from ablate.secrets import redact_url

    return redact_url(url) if "://" in url else url


def finished(t: TrialRow, metric: str) -> bool:
    v = t.metrics.get(metric)
    return t.status == "completed" and v is not None and math.isfinite(v)
