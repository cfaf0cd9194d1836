"""What a reference eval (the shared `pruned-eval` and `teacher-eval` stages, ablate.plan.stages) writes
into the records of the trials it serves, where the report's reference rows read it
(ablate.report.references):

- pruned-eval: its metrics as the trial's per-step `eval_<metric>` at step 0, before the first optimizer
  step, for every trial of that prune stage whose distillation starts from the pruned weights (not the
  losses that re-initialise them, `scratch`);
- teacher-eval: the teacher's held-out LM loss as the final metric `teacher_lm_loss` of every trial of
  that teacher.

Written on every submission that uses the stage, so trials that completed before the stages existed get
them too; values the records hold already (to a relative 1e-6: the trial's own eval measures the teacher's
loss as well) are not written again, so a re-submission writes nothing. What is written goes to the
trial's MLflow run as well, as ``pruned/<metric>`` and ``teacher/lm_loss`` at step 0 (not ``eval/...``,
whose step 0 holds the run's first-metric place: ablate.run.mlflow_runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ablate.plan.stages import (
    BEFORE_TRAINING,
    PRUNED_EVAL,
    REFERENCE_EVALS,
    TEACHER_EVAL,
    TEACHER_LOSS,
    Stage,
)
from ablate.spec.schema import REINIT_LOSSES

if TYPE_CHECKING:
    from ablate.plan.graph import StageGraph
    from ablate.track.db import Records

Rows = list[tuple[str, int, float]]
REL_TOL = 1e-6
MLFLOW_METRICS = ("lm_loss", "perplexity", "kl_to_teacher", "top1_agreement")  # of the pruned student


def reference_writes(
    graph: StageGraph, stage: Stage, metrics: Mapping[str, float]
) -> dict[str, tuple[Rows, dict[str, float]]]:
    """Trial key -> (per-step rows, final metrics) the reference eval `stage` with `metrics` gives it."""
    role = stage.config["model"]
    key = PRUNED_EVAL if role == "pruned" else TEACHER_EVAL
    assert REFERENCE_EVALS[key] == role, role
    out: dict[str, tuple[Rows, dict[str, float]]] = {}
    for trial, stages in graph.trial_stages.items():
        if stages.get(key) != stage.hash:
            continue
        if role == "teacher":
            out[trial] = ([], {TEACHER_LOSS: float(metrics["lm_loss"])})
        elif graph.stages[stages["distill"]].config["distill"]["loss"] not in REINIT_LOSSES:
            out[trial] = ([(f"eval_{k}", BEFORE_TRAINING, float(v)) for k, v in metrics.items()], {})
    return out


def _same(a: float | None, b: float) -> bool:
    if a is None:
        return math.isnan(b)
    return a == b or math.isclose(a, b, rel_tol=REL_TOL)


def write_new(records: Records, trial_id: int, rows: Rows, final: Mapping[str, float]) -> Rows:
    """Write what the trial's records do not hold yet; returns what was written as MLflow rows."""
    names = dict.fromkeys([*(r[0] for r in rows), *final])
    held = {(r.name, r.step): r.value for n in names for r in records.trial_metrics(trial_id, name=n)}
    new_rows = [r for r in rows if (r[0], r[1]) not in held or not _same(held[(r[0], r[1])], r[2])]
    new_final = {k: v for k, v in final.items() if (k, None) not in held or not _same(held[(k, None)], v)}
    if new_rows:
        records.log_metrics(trial_id, new_rows)
    if new_final:
        records.log_final_metrics(trial_id, new_final)
    return mlflow_rows(new_rows, new_final)


def mlflow_rows(rows: Rows, final: Mapping[str, float]) -> Rows:
    """The MLflow rows of reference values written into a trial's records (see the module docstring)."""
    out = [(f"pruned/{name[len('eval_') :]}", BEFORE_TRAINING, v) for name, _, v in rows]
    out = [r for r in out if r[0].split("/", 1)[1] in MLFLOW_METRICS]
    if TEACHER_LOSS in final:
        out.append(("teacher/lm_loss", BEFORE_TRAINING, final[TEACHER_LOSS]))
    return out


__all__ = ["mlflow_rows", "reference_writes", "write_new"]
