"""The rows a student is measured against: its teacher and its pruned model before retraining.

A trial's final metrics say how good the student is, not how much retraining did: for that the report
needs where the student started (the pruned model, one-shot) and where it was heading (the teacher).
Both come from the records when the runs recorded them:

- **teacher**: the teacher's own held-out loss is the final metric ``teacher_lm_loss`` (mean over the
  trials of one teacher): the shared ``teacher-eval`` stage writes it into every trial of that teacher (the
  trial's eval, which runs the teacher on the same batches, too); its KL to itself is 0 and its top-1
  agreement with itself is 1 by definition.
- **pruned, before retraining**: the held-out metrics at step 0 (``eval_<metric>`` at step 0, before the
  first optimizer step), which the shared ``pruned-eval`` stage writes into every trial of that pruned model
  that does not re-initialise it (``scratch`` does). All trials of one prune stage start from the same
  weights.

What the records lack is said in the row (``Reference.missing``) rather than guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ablate.plan.stages import BEFORE_TRAINING as BEFORE
from ablate.plan.stages import TEACHER_LOSS
from ablate.report.labels import Labels
from ablate.report.model import Reference, TrialRow, canon, finished
from ablate.spec.schema import REINIT_LOSSES  # their step 0 is not the pruned model

PRUNE_FIELDS = ("target", "importance", "teacher", "data", "calibration")
"""What a prune stage's output depends on (its own config and its parents')."""


def teacher_group(t: TrialRow) -> str:
    return canon((t.config or {}).get("teacher") or t.overrides.get("teacher.correction"))


def prune_group(t: TrialRow) -> str:
    cfg = t.config or {}
    if not cfg:
        return canon({"target": t.shape, **{k: v for k, v in t.overrides.items() if k != "seed"}})
    return canon({k: cfg.get(k) for k in PRUNE_FIELDS})


def _loss_kind(t: TrialRow) -> str:
    return str(((t.config or {}).get("distill") or {}).get("loss", t.overrides.get("distill.loss", "")))


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _variant(labels: Labels, members: Sequence[TrialRow], fields: Sequence[str], others: int) -> str:
    """What tells this group apart from others of the same name: the values of the varying axes under
    ``fields`` (e.g. importance settings), when there are other groups."""
    if others <= 1:
        return ""
    t = members[0]
    parts = [
        f"{labels.short[a]}={labels.value(a, t.overrides.get(a))}"
        for a in labels.axes
        if a != "target" and any(a == f or a.startswith(f + ".") for f in fields)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def teacher_rows(trials: Sequence[TrialRow], params: int | None, labels: Labels) -> list[Reference]:
    groups: dict[str, list[TrialRow]] = {}
    for t in trials:
        groups.setdefault(teacher_group(t), []).append(t)
    out = []
    for group, members in groups.items():
        loss = _mean([t.metrics.get(TEACHER_LOSS) for t in members if t.status == "completed"])
        metrics: dict[str, float] = {"kl_to_teacher": 0.0, "top1_agreement": 1.0}
        missing = ""
        if loss is not None:
            metrics |= {"lm_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf}
        else:
            missing = f"its held-out LM loss (final metric {TEACHER_LOSS}) is not in the records"
        label = "teacher" + _variant(labels, members, ("teacher",), len(groups))
        out.append(Reference("teacher", label, group, params, metrics, missing))
    return out


def pruned_rows(
    trials: Sequence[TrialRow], series: Mapping[str, Mapping[str, list[float]]], labels: Labels
) -> list[Reference]:
    groups: dict[str, list[TrialRow]] = {}
    for t in trials:
        if t.shape is not None or t.overrides.get("target") is not None:
            groups.setdefault(prune_group(t), []).append(t)
    per_name: dict[str, int] = {}
    for members in groups.values():
        name = str(members[0].overrides.get("target", "student"))
        per_name[name] = per_name.get(name, 0) + 1
    out = []
    for group, members in groups.items():
        values: dict[str, list[float]] = {}
        for t in members:
            if _loss_kind(t) in REINIT_LOSSES:
                continue
            for name, value in before_training(series.get(t.key) or {}).items():
                values.setdefault(name, []).append(value)
        metrics = {k: v for k, v in ((k, _mean(vs)) for k, vs in values.items()) if v is not None}
        name = str(members[0].overrides.get("target", "student"))
        label = f"{name}, pruned, before retraining" + _variant(
            labels, members, ("importance", "teacher"), per_name[name]
        )
        missing = (
            ""
            if metrics
            else "no held-out evaluation at step 0 of its distillation is in the records (distill.eval_every)"
        )
        out.append(Reference("pruned", label, group, members[0].params, metrics, missing))
    return out


def before_training(s: Mapping[str, list[float]]) -> dict[str, float]:
    """The ``eval_*`` values a series holds at step 0 (before the first optimizer step)."""
    steps = s.get("step") or []
    if BEFORE not in steps:
        return {}
    i = steps.index(BEFORE)
    return {
        name[len("eval_") :]: vals[i]
        for name, vals in s.items()
        if name.startswith("eval_") and i < len(vals) and math.isfinite(vals[i])
    }


def recovered(trials: Sequence[TrialRow], refs: Sequence[Reference], metric: str) -> dict[str, float]:
    """Per finished trial: (pruned - trial) / (pruned - teacher) on ``metric``, where both are known and
    differ. 1 means retraining closed the whole gap to the teacher, 0 that it gained nothing."""
    teacher = {r.group: r.metrics.get(metric) for r in refs if r.kind == "teacher"}
    pruned = {r.group: r.metrics.get(metric) for r in refs if r.kind == "pruned"}
    out: dict[str, float] = {}
    for t in trials:
        if not finished(t, metric):
            continue
        tv, pv = teacher.get(teacher_group(t)), pruned.get(prune_group(t))
        if tv is None or pv is None or not (math.isfinite(tv) and math.isfinite(pv)) or pv == tv:
            continue
        out[t.key] = (pv - t.metrics[metric]) / (pv - tv)
    return out


def references_for(
    trials: Sequence[TrialRow],
    series: Mapping[str, Mapping[str, list[float]]],
    teacher_params: int | None,
    metric: str,
) -> tuple[list[Reference], dict[str, float]]:
    """The teacher and pruned rows of a report, and the share of the teacher gap each trial recovers."""
    labels = Labels(trials)
    refs = teacher_rows(trials, teacher_params, labels) + pruned_rows(trials, series, labels)
    return refs, recovered(trials, refs, metric)


def reference_of(refs: Sequence[Reference], kind: str, t: TrialRow) -> Reference | None:
    group = teacher_group(t) if kind == "teacher" else prune_group(t)
    return next((r for r in refs if r.kind == kind and r.group == group), None)


__all__ = [
    "BEFORE",
    "TEACHER_LOSS",
    "before_training",
    "prune_group",
    "recovered",
    "reference_of",
    "references_for",
    "teacher_group",
]
