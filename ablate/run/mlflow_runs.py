"""What a trial's MLflow run says about it: its name, params, tags and first metric, and its size.

Enough for MLflow's own views to answer the sweep's questions without the report: the run is named after
what the sweep varied (``width-kld-s0``); its params hold the distillation settings, the importance
settings and the student's shape (the target's axes); its first metric is the report's metric
(``eval/lm_loss``, NaN at step 0 until the trial's eval: MLflow's compare view preselects the first metric
every run shares, and a run keeps its metrics in the order they first came). Once the trial's prune stage
has counted the student, its parameter count joins the params (``student.params``) and the metrics
(``student/params``, which MLflow's charts can plot quality against).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ablate.run.artifacts import ArtifactStore
from ablate.spec.sweep import Trial
from ablate.track.mlflow_names import eval_metric, trial_run_name

__all__ = ["KEY_DISTILL_PARAMS", "SIZE_METRIC", "TrialRun", "flatten", "size_fields", "trial_run"]

KEY_DISTILL_PARAMS = ("loss", "lr", "tokens", "global_batch", "micro_batch", "warmup_steps", "schedule")
SIZE_METRIC = "student/params"


@dataclass(frozen=True)
class TrialRun:
    name: str
    params: dict[str, Any]
    tags: dict[str, str]
    first_metrics: list[tuple[str, int, float]]


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """``{"width": {"method": "activation"}}`` under ``importance`` -> ``{"importance.width.method": ...}``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flatten(f"{prefix}.{k}", v)
        return out
    return {prefix: value}


def size_fields(store: ArtifactStore, prune_hash: str) -> tuple[dict[str, int], list[tuple[str, int, float]]]:
    """(params, metric rows) of the pruned student's parameter count as its prune stage counted it;
    empty before that stage ran."""
    if not store.exists(prune_hash):
        return {}, []
    with store.open(prune_hash, "prune.json", "r") as f:
        size = int(json.load(f)["params"])
    return {"student.params": size}, [(SIZE_METRIC, 0, float(size))]


def trial_run(trial: Trial, stages: dict[str, str], metric: str) -> TrialRun:
    """Name, params, tags and first metrics of the trial's run; ``metric`` is the report's (report.metric)."""
    resolved = trial.resolved()
    params: dict[str, Any] = {f"distill.{k}": resolved["distill"].get(k) for k in KEY_DISTILL_PARAMS}
    params |= {
        "data.seq_len": resolved["data"]["seq_len"],
        "teacher.model": resolved["teacher"]["model"],
        "target": trial.target,
        "seed": trial.seed,
    }
    params |= flatten("importance", resolved["importance"])
    params |= {f"student.{axis}": size for axis, size in trial.shape.items()}
    params |= {k: str(v) for k, v in trial.overrides.items()}  # what the sweep varied, as given
    tags = {f"ablate.stage.{kind}": h for kind, h in stages.items()} | {"ablate.target": trial.target}
    return TrialRun(trial_run_name(trial.overrides), params, tags, [(eval_metric(metric), 0, math.nan)])
