"""What an experiment's records say: paired comparisons per swept axis and the best-practice verdicts.

:func:`build_report` reads the records of one experiment and returns a :class:`Report` (plain data, no files
written): every trial with its parameters, tokens and final metrics; one :class:`Finding` per swept axis and
pair of its values; the best trial and the recipe ``ablate build`` will use. ``ablate/report/markdown.py``
renders it; ``ablate build`` calls ``build_report(records, name).best_trial`` / ``.recipe``.

How a comparison is made (also printed in every report, see :data:`RULES`):

- **Pairs.** For an axis and two of its values A and B, a pair is a trial with A and a trial with B whose
  resolved configs are equal in everything else (seed included, so seeds pair up). Only completed trials
  with a finite value of the metric take part.
- **Difference.** ``metric(A) - metric(B)`` per pair; the finding reports their mean, how many pairs each
  side won (lower wins for losses, perplexity and KL; higher for agreement/accuracy metrics), and a 95%
  bootstrap interval of the mean (:data:`N_BOOT` resamples, seeded by the comparison's name, so the same
  records always give the same interval). The interval is Hesterberg's *expanded* percentile interval
  (:func:`expanded_alpha`): a plain percentile bootstrap is too narrow with the handful of pairs an
  ablation has; the expansion makes it as wide as a t interval.
- **Verdict.** ``too few pairs`` with fewer than :data:`MIN_PAIRS` pairs (a bootstrap of two numbers is
  just their range, which would call any two same-sign results a win); otherwise ``clear win``
  when the interval excludes zero and the winner also won most of the pairs, else ``no clear difference``.
  Mean differences below :data:`REL_TOL` of the metric's size count as no difference.
- **Best practices.** Where an axis matches a claim of the Minitron papers (DESIGN.md section 2), the
  finding says whether this experiment agrees (clear win for the expected side), disagrees (clear win for
  the other side) or is inconclusive.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import yaml

from ablate.errors import AblateError

__all__ = [
    "CLEAR",
    "FEW",
    "HEAVY_DEPTH_CUT",
    "MAPPING",
    "MIN_PAIRS",
    "N_BOOT",
    "NO_DIFF",
    "PRACTICES",
    "RULES",
    "SIZE_TOLERANCE",
    "BestTrial",
    "Finding",
    "Pair",
    "Practice",
    "Report",
    "ReportError",
    "TrialRow",
    "bootstrap_ci",
    "build_report",
    "compare",
    "expanded_alpha",
    "fmt_value",
    "higher_is_better",
    "kendall_tau",
    "shape_kind",
]

MIN_PAIRS = 3
"""Fewer pairs than this: verdict 'too few pairs'."""
N_BOOT = 10_000
"""Bootstrap resamples per comparison."""
REL_TOL = 1e-6
"""|mean difference| below this fraction of the metric's typical size is treated as no difference."""
SIZE_TOLERANCE = 0.10
"""Width and depth targets are 'of about equal size' (best practice 4) within this relative difference."""
HEAVY_DEPTH_CUT = 0.25
"""Removing at least this fraction of the teacher's layers is 'heavy depth pruning' (best practices 6/7)."""
BOOT_SALT = "ablate-report-v1"

CLEAR, NO_DIFF, FEW = "clear win", "no clear difference", "too few pairs"
AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"

RULES = (
    f"Pairs are completed trials equal in everything but the compared axis (seeds pair up). "
    f"Δ = metric(A) − metric(B) per pair; the interval is a 95% bootstrap interval of the mean Δ "
    f"({N_BOOT} resamples, seeded, so it is the same on every regeneration; expanded percentile method, "
    f"as wide as a t interval with few pairs, so with 3 pairs it is about their range). "
    f"Verdict: *{FEW}* below {MIN_PAIRS} pairs (a bootstrap of two numbers is only their range); "
    f"*{CLEAR}* when the interval excludes 0 and the winner also won most pairs; "
    f"otherwise *{NO_DIFF}*. Add seeds for more pairs: a clear win on 3 to 5 pairs is a strong hint, not proof."
)

MAPPING = (
    f"Checks against the papers: width vs depth targets within {SIZE_TOLERANCE:.0%} in size → best practice 4; "
    "kld vs ce → best practice 5; scratch vs a distillation loss → the 40x claim; kld+intermediate vs kld "
    f"with at least {HEAVY_DEPTH_CUT:.0%} of the teacher's layers removed → best practice 6, with fewer → "
    "best practice 7; width-importance aggregation (importance.width.batch_agg / seq_agg) on targets that "
    "prune width → best practice 2; distill.tokens budgets → best practice 9, judged on whether the smaller "
    "budget already picks the same best configuration; teacher.correction off vs on → teacher correction "
    "(paper 2). *agrees*: the side the paper expects clearly wins (best practice 7: the alternative does not "
    "clearly win); *disagrees*: the other side clearly wins; *inconclusive*: anything else."
)

WIDTH_AXES = frozenset({"hidden_size", "intermediate_size", "num_attention_heads"})
DEPTH_AXES = frozenset({"num_hidden_layers"})
DISTILL_LOSSES = ("kld", "kld+intermediate")


class ReportError(AblateError):
    """The report cannot be made from these records (no such experiment, nothing finished, unknown metric)."""


# ====================================================================== metric direction


def higher_is_better(metric: str) -> bool:
    """Agreement and accuracy-like metrics are maximised; losses, perplexity, KL and anything else minimised."""
    m = metric.lower()
    return any(w in m for w in ("agreement", "accuracy", "acc", "top1", "top-1", "score", "f1"))


# ====================================================================== practices


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


# ====================================================================== plain results


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


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


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class TrialRow:
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

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


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
    verdict: str
    winner: Any
    """The value that clearly won (only with verdict 'clear win'); None otherwise."""
    leader: Any
    """The value better on average (None on an exact tie)."""
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
        return _jsonable(d)


@dataclass(frozen=True)
class BestTrial:
    """The trial ``ablate build`` starts from: key, overrides and resolved config (what the trial ran)."""

    key: str
    overrides: dict[str, Any]
    config: dict[str, Any] | None
    metrics: dict[str, float]
    params: int | None
    mlflow_run_id: str | None
    metric: str
    value: float
    """The trial's value of the primary metric."""
    group_mean: float
    """Mean of the metric over the seeds of its configuration (what the choice was made on)."""
    seeds: int
    """Finished seeds of its configuration."""

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


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
    """What the experiment cost: stages per kind (against the naive count), summed stage and trial
    times, and each submission's own summary line."""

    @property
    def finished(self) -> list[TrialRow]:
        return [t for t in self.trials if _finished(t, self.metric)]

    def run_url(self, run_id: str | None) -> str | None:
        if not run_id or not self.mlflow_experiment_id:
            return None
        return f"{self.ui_base}/#/experiments/{self.mlflow_experiment_id}/runs/{run_id}"

    def compare_url(self) -> str | None:
        runs = [t.mlflow_run_id for t in self.trials if t.mlflow_run_id]
        if not runs or not self.mlflow_experiment_id:
            return None
        return compare_runs_url(self.ui_base, self.mlflow_experiment_id, runs)

    def to_dict(self) -> dict[str, Any]:
        from ablate.secrets import redact

        return redact(  # the JSON leaves the process: no password of the spec goes with it
            _jsonable(
                {
                    "experiment": self.experiment,
                    "description": self.description,
                    "spec_hash": self.spec_hash,
                    "metric": self.metric,
                    "higher_is_better": self.higher_is_better,
                    "counts": self.counts,
                    "teacher": self.teacher,
                    "trials": [t.to_dict() for t in self.trials],
                    "findings": [f.to_dict() for f in self.findings],
                    "best_trial": self.best_trial.to_dict(),
                    "recipe": self.recipe,
                    "untested_practices": self.untested,
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


def _finished(t: TrialRow, metric: str) -> bool:
    v = t.metrics.get(metric)
    return t.status == "completed" and v is not None and math.isfinite(v)


# ====================================================================== statistics


def _seed_for(name: str) -> int:
    return zlib.crc32(f"{BOOT_SALT}|{name}".encode())


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # fmt: skip
"""Student t 97.5% quantiles for 1..30 degrees of freedom."""


def _t975(df: int) -> float:
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054  # Cornish-Fisher expansion, accurate to ~1e-4 beyond 30 degrees of freedom
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def expanded_alpha(n: int, alpha: float = 0.05) -> float:
    """The tail probability at which an expanded percentile interval reads the bootstrap distribution.

    The plain percentile bootstrap is too narrow with few pairs (it uses the plug-in variance and normal
    quantiles); Hesterberg's expanded percentile interval reads it at alpha' with
    ``z(alpha'/2) = sqrt(n / (n - 1)) * t(alpha/2, n - 1)`` so it is as wide as a t interval would be.
    Only alpha = 0.05 is supported.
    """
    if alpha != 0.05:
        raise ValueError("only 95% intervals are supported")
    if n < 2:
        return alpha
    x = math.sqrt(n / (n - 1)) * _t975(n - 1)
    return math.erfc(x / math.sqrt(2.0))  # = 2 * Phi(-x)


def bootstrap_ci(diffs: Sequence[float], *, seed: int, n_boot: int = N_BOOT) -> tuple[float, float]:
    """95% expanded percentile bootstrap interval of the mean of ``diffs`` (deterministic for a seed).

    Resamples the pairs with replacement ``n_boot`` times; reads the distribution of resampled means at
    :func:`expanded_alpha` (wider than 2.5%/97.5% with few pairs; with 3 pairs it is about their range).
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return (math.nan, math.nan)
    if d.size == 1:
        return (float(d[0]), float(d[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = np.sort(d[idx].mean(axis=1))
    a = expanded_alpha(d.size) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (float(lo), float(hi))


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


def compare(
    axis: str,
    a: Any,
    b: Any,
    pairs: Sequence[Pair],
    metric: str,
    *,
    higher: bool | None = None,
    scope: str = "all pairs",
    n_boot: int = N_BOOT,
) -> Finding:
    """The statistics and verdict of one paired comparison (no best-practice judgement yet)."""
    higher = higher_is_better(metric) if higher is None else higher
    diffs = [p.diff for p in pairs]
    n = len(diffs)
    scale = max([abs(p.value_a) for p in pairs] + [abs(p.value_b) for p in pairs] + [1e-12])
    tol = REL_TOL * scale
    better_a = [(d > tol) if higher else (d < -tol) for d in diffs]
    better_b = [(d < -tol) if higher else (d > tol) for d in diffs]
    wins_a, wins_b = sum(better_a), sum(better_b)
    ties = n - wins_a - wins_b
    mean = float(np.mean(diffs)) if n else math.nan
    ci = bootstrap_ci(diffs, seed=_seed_for(f"{axis}|{_canon(a)}|{_canon(b)}|{scope}"), n_boot=n_boot)
    leader = None
    if n and abs(mean) > tol:
        leader = a if ((mean > 0) == higher) else b
    if n < MIN_PAIRS:
        verdict = FEW
    elif leader is not None and (ci[0] > 0 or ci[1] < 0):
        wins_leader = wins_a if _canon(leader) == _canon(a) else wins_b
        verdict = CLEAR if wins_leader * 2 > (wins_a + wins_b) else NO_DIFF
    else:
        verdict = NO_DIFF
    winner = leader if verdict == CLEAR else None
    return Finding(
        axis=axis,
        a=a,
        b=b,
        scope=scope,
        metric=metric,
        higher_is_better=higher,
        pairs=list(pairs),
        n=n,
        wins_a=wins_a,
        wins_b=wins_b,
        ties=ties,
        mean_diff=mean,
        ci=ci,
        verdict=verdict,
        winner=winner,
        leader=leader,
    )


# ====================================================================== pairing


def _drop_path(config: Mapping[str, Any], path: str) -> dict[str, Any]:
    out = json.loads(_canon(config))
    if path == "target" or path.startswith("targets."):
        out.pop("target", None)
        return out
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            return out
        node = node[part]
    node.pop(parts[-1], None)
    return out


def _context(t: TrialRow, axis: str) -> dict[str, Any]:
    """Everything about the trial except `axis`: its resolved config (seed included), else its overrides."""
    if t.config is not None:
        return _drop_path(t.config, axis)
    return {k: v for k, v in t.overrides.items() if k != axis}


def _axes(trials: Sequence[TrialRow]) -> list[str]:
    axes: dict[str, None] = {}
    for t in trials:
        for k in t.overrides:
            if k != "seed":
                axes.setdefault(k, None)
    return list(axes)


def _values(trials: Sequence[TrialRow], axis: str) -> list[Any]:
    seen: dict[str, Any] = {}
    for t in trials:
        if axis in t.overrides:
            seen.setdefault(_canon(t.overrides[axis]), t.overrides[axis])
    return list(seen.values())


def pairs_for(trials: Sequence[TrialRow], axis: str, a: Any, b: Any, metric: str) -> list[Pair]:
    """Pairs of finished trials with `axis` = a and = b that are equal in everything else."""
    ca, cb = _canon(a), _canon(b)
    by_ctx: dict[str, dict[str, TrialRow]] = {}
    order: list[str] = []
    for t in trials:
        if axis not in t.overrides or not _finished(t, metric):
            continue
        v = _canon(t.overrides[axis])
        if v not in (ca, cb):
            continue
        ctx = _canon(_context(t, axis))
        if ctx not in by_ctx:
            by_ctx[ctx] = {}
            order.append(ctx)
        by_ctx[ctx].setdefault(v, t)
    out = []
    for ctx in order:
        group = by_ctx[ctx]
        if ca in group and cb in group:
            ta, tb = group[ca], group[cb]
            out.append(Pair(ta.key, tb.key, ta.metrics[metric], tb.metrics[metric], json.loads(ctx)))
    return out


# ====================================================================== best-practice rules


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
class _Rule:
    practice: str | None
    expected: Any = None
    mode: str = "wins"
    """'wins': the expected value should clearly win; 'not_beaten': it should not clearly lose;
    'none': no expected winner (reported for reference)."""
    scope: str = "all pairs"
    select: Callable[[Pair], bool] | None = None
    note: str = ""


class _Context:
    """What the rules need to know about the experiment: target shapes, sizes and the teacher's depth."""

    def __init__(self, trials: Sequence[TrialRow], teacher_layers: int | None):
        self.teacher_layers = teacher_layers
        self.target_shape: dict[str, dict[str, int]] = {}
        self.target_params: dict[str, int | None] = {}
        for t in trials:
            name = t.overrides.get("target")
            if isinstance(name, str) and t.shape is not None:
                self.target_shape.setdefault(name, t.shape)
                self.target_params.setdefault(name, t.params)

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


def _rules(axis: str, a: Any, b: Any, ctx: _Context) -> list[_Rule]:
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
                    _Rule(
                        None,
                        note=f"Width vs depth, but the two students differ in size by {rel:.0%} "
                        f"(best practice 4 compares students of about equal size, within "
                        f"{SIZE_TOLERANCE:.0%}), so it is not tested here.",
                    )
                ]
            return [_Rule("BP4", width)]
        return [_Rule("BP4", width, note="Parameter counts unknown here; assumed about equal.")]
    if axis == "distill.loss":
        if vals == {"kld", "ce"}:
            return [_Rule("BP5", "kld")]
        if "scratch" in vals and vals & set(DISTILL_LOSSES):
            return [_Rule("40x", next(v for v in (a, b) if v in DISTILL_LOSSES))]
        if vals == {"kld", "kld+intermediate"}:

            def heavy(p: Pair) -> bool:
                cut = ctx.depth_cut(ctx.pair_shape(p))
                return cut is not None and cut >= HEAVY_DEPTH_CUT

            def light(p: Pair) -> bool:
                cut = ctx.depth_cut(ctx.pair_shape(p))
                return cut is not None and cut < HEAVY_DEPTH_CUT

            return [
                _Rule(
                    "BP6",
                    "kld+intermediate",
                    scope=f"heavy depth pruning (≥{HEAVY_DEPTH_CUT:.0%} of layers removed)",
                    select=heavy,
                ),
                _Rule(
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
            _Rule(
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
            _Rule(
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
        return [_Rule("BP9", max(a, b))]
    if axis == "teacher.correction" and (a is None) != (b is None):
        return [_Rule("TC", b if a is None else a)]
    return []


def _judge(f: Finding, rule: _Rule) -> tuple[str | None, str]:
    """(agreement, one sentence explaining it)."""
    if rule.practice is None:
        return None, ""
    p = PRACTICES[rule.practice]
    exp = rule.expected
    leans = f"; {fmt_value(f.leader)} leads on average" if f.leader is not None else ""
    if rule.mode == "none" or exp is None:
        return None, f"{p.title}: {p.claim} No single expected winner for this pair."
    want = "to win" if rule.mode == "wins" else "to be enough (no clear gain from the alternative)"
    head = f"{p.title} expects {fmt_value(exp)} {want}"
    if f.verdict == FEW:
        return INCONCLUSIVE, f"{head}: too few pairs to tell{leans}."
    if f.verdict == CLEAR:
        ok = _canon(f.winner) == _canon(exp)
        return (AGREES if ok else DISAGREES), f"{head}; here {fmt_value(f.winner)} clearly wins."
    if rule.mode == "wins":
        return INCONCLUSIVE, f"{head}; here there is no clear difference{leans}."
    return AGREES, f"{head}; here there is no clear difference{leans}."


def _with_rule(f: Finding, rule: _Rule) -> Finding:
    agreement, text = _judge(f, rule)
    fields = {k: getattr(f, k) for k in f.__dataclass_fields__}
    return Finding(
        **{
            **fields,
            "practice": rule.practice,
            "expected": rule.expected,
            "agreement": agreement,
            "explanation": text,
            "note": rule.note,
        }
    )


def _ranking_stability(
    trials: Sequence[TrialRow], axis: str, a: Any, b: Any, metric: str, higher: bool
) -> dict[str, Any]:
    """Best practice 9: do the configurations rank the same at both budgets (means over seeds)?"""
    ca, cb = _canon(a), _canon(b)
    labels: dict[str, str] = {}
    values: dict[str, dict[str, list[float]]] = {}
    for t in trials:
        if axis not in t.overrides or not _finished(t, metric):
            continue
        v = _canon(t.overrides[axis])
        if v not in (ca, cb):
            continue
        ctx = _context(t, axis)
        ctx.pop("seed", None)
        key = _canon(ctx)
        others = {k: x for k, x in t.overrides.items() if k not in (axis, "seed")}
        labels.setdefault(key, ", ".join(f"{k}={fmt_value(x)}" for k, x in others.items()) or "(fixed)")
        values.setdefault(key, {}).setdefault(v, []).append(t.metrics[metric])
    rows = [
        (labels[k], float(np.mean(v[ca])), float(np.mean(v[cb])))
        for k, v in values.items()
        if ca in v and cb in v
    ]
    if len(rows) < 2:
        return {"configurations": len(rows)}
    xs, ys = [r[1] for r in rows], [r[2] for r in rows]
    pick = max if higher else min
    best_a = rows[xs.index(pick(xs))][0]
    best_b = rows[ys.index(pick(ys))][0]
    return {
        "configurations": len(rows),
        "kendall_tau": kendall_tau(xs, ys),
        "best_at_a": best_a,
        "best_at_b": best_b,
        "same_best": best_a == best_b,
    }


def findings_for(
    trials: Sequence[TrialRow],
    metric: str,
    *,
    teacher_layers: int | None = None,
    higher: bool | None = None,
    n_boot: int = N_BOOT,
) -> list[Finding]:
    """Every swept axis x pair of values (in sweep order), with best-practice verdicts where they apply."""
    higher = higher_is_better(metric) if higher is None else higher
    ctx = _Context(trials, teacher_layers)
    out: list[Finding] = []
    for axis in _axes(trials):
        values = _values(trials, axis)
        for i, a in enumerate(values):
            for b in values[i + 1 :]:
                pairs = pairs_for(trials, axis, a, b, metric)
                if not pairs:
                    continue
                base = compare(axis, a, b, pairs, metric, higher=higher, n_boot=n_boot)
                rules = _rules(axis, a, b, ctx)
                scoped: list[Finding] = []
                main_rule: _Rule | None = None
                for rule in rules:
                    sel = [p for p in pairs if rule.select is None or rule.select(p)]
                    if len(sel) == len(pairs):
                        main_rule = main_rule or rule
                    elif sel:
                        sub = compare(axis, a, b, sel, metric, higher=higher, scope=rule.scope, n_boot=n_boot)
                        scoped.append(_with_rule(sub, rule))
                if main_rule is not None:
                    base = _with_rule(base, main_rule)
                elif rules and not any(r.practice for r in rules):
                    base = _with_rule(base, rules[0])
                if axis == "distill.tokens" and main_rule is not None and main_rule.practice == "BP9":
                    stab = _ranking_stability(trials, axis, a, b, metric, higher)
                    base = _bp9(base, stab)
                out.append(base)
                out.extend(scoped)
    return out


def _bp9(f: Finding, stab: dict[str, Any]) -> Finding:
    """Best practice 9 is about choosing candidates on a small budget: judge it on ranking stability."""
    n = stab.get("configurations", 0)
    if n < 2:
        agreement = INCONCLUSIVE
        text = (
            f"{f.explanation} Ranking stability between {f.label_a} and {f.label_b} tokens needs at least "
            "two configurations trained at both budgets."
        )
    else:
        tau = stab["kendall_tau"]
        same = stab["same_best"]
        agreement = AGREES if same else DISAGREES
        text = (
            f"{f.explanation} Ranking of the {n} configurations at {f.label_a} vs {f.label_b} tokens: "
            f"Kendall's tau {tau:+.2f}; best at {f.label_a}: {stab['best_at_a']}; best at "
            f"{f.label_b}: {stab['best_at_b']} ({'same' if same else 'different'} choice). "
            "Best practice 9 holds when the small budget already picks the same candidate."
        )
    fields = {k: getattr(f, k) for k in f.__dataclass_fields__}
    return Finding(**{**fields, "agreement": agreement, "explanation": text, "extra": stab})


# ====================================================================== reading the records


def _parse_spec(spec_text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(spec_text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _get(d: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


class _Params:
    """Parameter counts of target shapes (meta device; cached), from the teacher's architecture config."""

    def __init__(self, teacher_ref: str | None, config_path: str | None):
        self.config = None
        self.cache: dict[str, int | None] = {}
        if teacher_ref is None:
            return
        try:
            from ablate.models.registry import load_config

            self.config = load_config(teacher_ref, config_path)
        except Exception:  # planning data is optional for a report
            if config_path is not None:
                try:
                    from ablate.models.registry import load_config

                    self.config = load_config(teacher_ref)
                except Exception:
                    self.config = None

    @property
    def teacher_layers(self) -> int | None:
        return None if self.config is None else int(self.config.num_hidden_layers)

    def teacher(self) -> int | None:
        return self.count({})

    def count(self, shape: Mapping[str, int]) -> int | None:
        if self.config is None:
            return None
        key = _canon(dict(shape))
        if key not in self.cache:
            try:
                from ablate.models.arch import count_parameters, pruned_config

                cfg = pruned_config(self.config, shape) if shape else self.config
                self.cache[key] = int(count_parameters(cfg))
            except Exception:
                self.cache[key] = None
        return self.cache[key]


def _series(records: Any, trial_id: int, metric: str) -> dict[str, list[float]]:
    rows = records.trial_metrics(trial_id, final=False)
    by: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.name in ("loss", "tokens", f"eval_{metric}"):
            by.setdefault(r.name, {})[int(r.step)] = float(r.value)
    steps = sorted(by.get("loss", {}) | by.get(f"eval_{metric}", {}))
    if not steps:
        return {}
    tokens = by.get("tokens", {})
    out = {
        "step": [float(s) for s in steps],
        "tokens": [tokens.get(s, math.nan) for s in steps],
        "loss": [by.get("loss", {}).get(s, math.nan) for s in steps],
    }
    if f"eval_{metric}" in by:
        out[f"eval_{metric}"] = [by[f"eval_{metric}"].get(s, math.nan) for s in steps]
    return out


def _axis_order(spec: Mapping[str, Any], trials: Sequence[Any]) -> list[str]:
    """Override keys in the spec's order: target (when not in the grid), the grid's axes as written, any
    others sorted, seed last. (PostgreSQL's JSONB does not keep key order, so the records cannot say.)"""
    grid = _get(spec, "sweep.grid")
    written = [str(k) for k in grid] if isinstance(grid, dict) else []
    present = sorted({k for t in trials for k in t.overrides})
    order = ([] if "target" in written else ["target"]) + written
    order += [k for k in present if k not in order and k != "seed"]
    return [*order, "seed"]


def _best(trials: Sequence[TrialRow], metric: str, higher: bool) -> BestTrial:
    """Best configuration by the mean over its finished seeds; within it, its best trial."""
    groups: dict[str, list[TrialRow]] = {}
    for t in trials:
        if _finished(t, metric):
            ctx = dict(t.config) if t.config is not None else dict(t.overrides)
            ctx.pop("seed", None)
            groups.setdefault(_canon(ctx), []).append(t)
    sign = -1.0 if higher else 1.0
    best_group = min(
        groups.values(), key=lambda g: (sign * float(np.mean([t.metrics[metric] for t in g])), g[0].key)
    )
    best = min(best_group, key=lambda t: (sign * t.metrics[metric], t.key))
    return BestTrial(
        key=best.key,
        overrides=dict(best.overrides),
        config=None if best.config is None else json.loads(_canon(best.config)),
        metrics=dict(best.metrics),
        params=best.params,
        mlflow_run_id=best.mlflow_run_id,
        metric=metric,
        value=best.metrics[metric],
        group_mean=float(np.mean([t.metrics[metric] for t in best_group])),
        seeds=len(best_group),
    )


def _recipe(
    spec: Mapping[str, Any], best: BestTrial, trials: Sequence[TrialRow], metric: str
) -> dict[str, Any]:
    build = spec.get("build") if isinstance(spec.get("build"), dict) else {}
    choice = str(build.get("trial", "best"))
    chosen: TrialRow | None = None
    if choice != "best":
        chosen = next((t for t in trials if t.key == choice), None)
    if chosen is not None:
        key, config, reason = chosen.key, chosen.config, f"build.trial = {choice} in the spec"
        status = chosen.status
    else:
        key, config = best.key, best.config
        reason = f"best {metric} (mean over seeds of its configuration)"
        status = "completed"
        if choice != "best":
            reason += f"; build.trial {choice!r} names no trial of this experiment"
    config = json.loads(_canon(config)) if config is not None else {}
    distill = dict(config.get("distill") or {})
    tokens = build.get("tokens")
    if tokens is not None:
        from ablate.spec.units import parse_tokens

        try:
            distill["tokens"] = int(parse_tokens(tokens))
        except Exception:
            distill["tokens"] = tokens
    return _jsonable(
        {
            "trial": key,
            "reason": reason,
            "trial_status": status,
            "teacher": config.get("teacher"),
            "target": config.get("target"),
            "importance": config.get("importance"),
            "calibration": config.get("calibration"),
            "data": config.get("data"),
            "distill": distill,
            "seed": config.get("seed"),
            "formats": list(build.get("formats") or ["hf"]),
        }
    )


def build_report(
    records: Any,
    name: str,
    metric: str = "lm_loss",
    *,
    higher: bool | None = None,
    n_boot: int = N_BOOT,
    ui_base: str | None = None,
) -> Report:
    """Compute the report of experiment ``name`` from ``records`` (an :class:`ablate.track.db.Records`).

    ``metric`` is the final metric every comparison and the best-trial choice use (lower is better unless
    it is an agreement/accuracy-like metric, see :func:`higher_is_better`; ``higher`` overrides that).
    ``ui_base`` is the MLflow UI address used for run links (default: the ``tracking.mlflow`` server if it
    is one, else ``http://127.0.0.1:5000``, where ``ablate ui`` serves a local store).

    Raises :class:`ReportError` (exit 2 in the CLI) when the experiment does not exist, has no completed
    trial with a value of ``metric``, or nobody logged ``metric``.
    """
    from ablate.track.db import UnknownExperiment

    exp = records.get_experiment(name)
    if exp is None:
        try:
            records.experiment_summary(name)  # raises with the list of known names
        except UnknownExperiment as e:
            raise ReportError(str(e)) from None
        raise ReportError(f"no experiment named {name!r} in the records")
    summary = records.experiment_summary(name)
    infos = {t.key: t for t in records.trials(name)}
    spec = _parse_spec(exp.spec_text)
    higher = higher_is_better(metric) if higher is None else higher

    logged = sorted({m for t in summary.trials for m in t.final_metrics})
    completed = [t for t in summary.trials if t.status == "completed"]
    if not completed:
        counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v) or "no trials"
        raise ReportError(
            f"experiment {name!r} has no finished trials yet ({counts}); run `ablate submit` on its spec "
            f"and see `ablate status {name}`"
        )
    if metric not in logged:
        raise ReportError(
            f"no trial of {name!r} logged the metric {metric!r}; logged final metrics: "
            f"{', '.join(logged) or 'none'} (pass one of them with --metric)"
        )
    if not any(
        t.final_metrics.get(metric) is not None and math.isfinite(t.final_metrics[metric]) for t in completed
    ):
        raise ReportError(
            f"experiment {name!r} has no completed trial with a finite value of {metric!r}; "
            "see `ablate status " + name + "`"
        )

    first_config = next((i.config for i in infos.values() if i.config), None) or {}
    teacher_ref = _get(first_config, "teacher.model") or _get(spec, "teacher.model")
    params = _Params(teacher_ref, _get(spec, "teacher.config"))

    axis_order = _axis_order(spec, summary.trials)
    rows: list[TrialRow] = []
    series: dict[str, dict[str, list[float]]] = {}
    for t in summary.trials:
        info = infos.get(t.key)
        config = info.config if info is not None else None
        shape = dict(config["target"]) if config and isinstance(config.get("target"), dict) else None
        s = _series(records, info.id, metric) if info is not None else {}
        if s:
            series[t.key] = s
        done_tokens = [v for v in s.get("tokens", []) if math.isfinite(v)]
        tokens = int(done_tokens[-1]) if done_tokens else _get(config, "distill.tokens")
        rows.append(
            TrialRow(
                id=info.id if info is not None else -1,
                key=t.key,
                status=t.status,
                overrides={k: t.overrides[k] for k in sorted(t.overrides, key=axis_order.index)},
                config=config,
                metrics=dict(sorted(t.final_metrics.items())),
                error=t.error,
                duration_s=t.duration_s,
                mlflow_run_id=t.mlflow_run_id,
                params=params.count(shape) if shape is not None else None,
                tokens=int(tokens) if isinstance(tokens, int | float) else None,
                shape=shape,
            )
        )

    findings = findings_for(rows, metric, teacher_layers=params.teacher_layers, higher=higher, n_boot=n_boot)
    best = _best(rows, metric, higher)
    tested = {f.practice for f in findings if f.practice}
    tracking_uri = str(_get(spec, "tracking.mlflow") or "sqlite:///.ablate/mlflow.db")
    if ui_base is None:
        ui_base = (
            tracking_uri.rstrip("/")
            if tracking_uri.startswith(("http://", "https://"))
            else ("http://127.0.0.1:5000")
        )
    return Report(
        experiment=name,
        description=str(spec.get("description") or ""),
        spec_text=exp.spec_text,
        spec_hash=exp.spec_hash,
        spec=spec,
        metric=metric,
        higher_is_better=higher,
        trials=rows,
        findings=findings,
        best_trial=best,
        recipe=_recipe(spec, best, rows, metric),
        teacher={
            "model": teacher_ref,
            "params": params.teacher(),
            "layers": params.teacher_layers,
        },
        tracking_uri=tracking_uri,
        mlflow_experiment_id=exp.mlflow_experiment_id,
        mlflow_parent_run_id=exp.mlflow_run_id,
        ui_base=ui_base,
        series=series,
        untested=[p for p in PRACTICES if p.startswith("BP") and p not in tested],
        counts={k: v for k, v in summary.counts.items()},
        compute=_compute(records, name, len(rows)),
    )


def _compute(records: Any, name: str, n_trials: int) -> dict[str, Any]:
    """Stages the experiment's trials use and the time recorded on them (from the records alone)."""
    stages = records.stages(name)
    kinds: dict[str, int] = {}
    seconds = 0.0
    for st in stages:
        kinds[st.kind] = kinds.get(st.kind, 0) + 1
        if (
            st.kind in ("teacher", "importance", "prune")
            and st.status == "completed"
            and st.started_at
            and st.finished_at
        ):
            seconds += (st.finished_at - st.started_at).total_seconds()
    submissions = [
        e.message
        for e in records.events(name, min_level="info", limit=200)
        if e.message.startswith("submission finished")
    ]
    return {
        "stages": kinds,
        "stages_total": len(stages),
        "naive_stages": 5 * n_trials,
        "stage_seconds": round(seconds, 1),
        "submissions": submissions,
    }
