"""`ablate build` in MLflow: one run per recipe, nested under the experiment's parent run, holding the
built model's metrics (its eval first, then the teacher's, sizes and benchmarks), the model card, the
build report and the path of the checkpoint (tag ``ablate.checkpoint`` and the run's description).

A second build of the same recipe logs to the same run (found by its ``ablate.recipe`` tag); a metric
point it has is not logged again. MLflow is a mirror: a store that cannot be reached, or a local SQLite
store that does not exist (records copied elsewhere, or never submitted with MLflow), costs a line of
output, never the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.build import export as ex
from ablate.secrets import redact_text
from ablate.spec.units import format_tokens
from ablate.track.mlflow_names import eval_metric, trial_run_name
from ablate.track.urls import sqlite_missing

if TYPE_CHECKING:
    from collections.abc import Callable

    from ablate.build.pipeline import BuildResult
    from ablate.build.recipe import Recipe

__all__ = ["build_metrics", "build_run_name", "log_build"]

FIRST_METRIC = "lm_loss"  # the build's own choice of trial (ablate.build.recipe.METRIC)
TAG_CHECKPOINT = "ablate.checkpoint"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI


def build_run_name(recipe: Recipe) -> str:
    """``build-width-kld-s0-4k``: the trial's run name and the final distillation's budget."""
    return f"build-{trial_run_name(recipe.trial.overrides)}-{format_tokens(recipe.tokens)}"


def _numbers(prefix: str, values: dict[str, Any]) -> list[tuple[str, float]]:
    return [
        (f"{prefix}/{k}", float(v))
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]


def build_metrics(result: BuildResult) -> list[tuple[str, int, float]]:
    """The build's metrics at step 0, its held-out ``lm_loss`` first (MLflow's compare view preselects
    the first metric runs share): ``eval/*`` of the built model, ``teacher/*`` of the teacher on the same
    split, ``eval/TASK/METRIC`` and ``teacher/TASK/METRIC`` benchmarks, ``size/*`` and ``params/*``."""
    model = {eval_metric(k): float(v) for k, v in result.metrics.items()}
    rows = sorted(model.items(), key=lambda kv: kv[0] != eval_metric(FIRST_METRIC))
    rows += _numbers("teacher", result.teacher_metrics)
    for who, prefix in (("model", "eval"), ("teacher", "teacher")):
        for task, values in (result.benchmarks.get(who) or {}).items():
            clean = {m: v for m, v in values.items() if not m.endswith("_stderr")}
            rows += _numbers(f"{prefix}/{task}", clean)
    rows += _numbers("size", result.sizes) + _numbers("params", result.params)
    return [(name, 0, value) for name, value in rows]


def _params(recipe: Recipe, result: BuildResult) -> dict[str, Any]:
    trial = recipe.trial
    return {
        "recipe": recipe.id,
        "trial": trial.key,
        "trial.run_name": trial_run_name(trial.overrides),
        "chosen_by": recipe.chosen_by,
        "tokens": recipe.tokens,
        "trial_tokens": recipe.trial_tokens,
        "target": trial.target,
        "distill.loss": trial.spec.distill.loss,
        **{f"student.{axis}": size for axis, size in trial.shape.items()},
        "student.params": result.params.get("student"),
        "teacher.model": trial.spec.teacher.model,
        "formats": ",".join(recipe.formats),
    }


def log_build(recipe: Recipe, result: BuildResult, say: Callable[[str], None]) -> str:
    """Log a finished (not dry-run) build to the experiment's MLflow store; returns the run id, or ""
    when it was not logged (the reason is said)."""
    uri = recipe.source.mlflow
    if not uri:
        return ""
    if sqlite_missing(uri):
        say(f"MLflow: no store at {uri.removeprefix('sqlite:///')}; the build is not logged there")
        return ""
    try:
        from ablate.build.pipeline import PLAN, THROUGHPUT
        from ablate.track.mlflow import MlflowMirror

        mirror = MlflowMirror(uri, recipe.source.name)
        run_id = mirror.build_run(
            recipe.id,
            build_run_name(recipe),
            _params(recipe, result),
            {
                TAG_CHECKPOINT: result.model_dir,
                "ablate.trial_key": recipe.trial.key,
                TAG_NOTE: f"`ablate build` of trial `{recipe.trial.key}` (recipe `{recipe.id}`), "
                f"{format_tokens(recipe.tokens)} tokens.\n\nCheckpoint: `{result.model_dir}`",
            },
        )
        mirror.log_step_metrics(run_id, build_metrics(result))
        card = Path(result.model_dir) / "README.md"
        if card.is_file():
            mirror.log_artifact(run_id, card, "card")
        if result.report and Path(result.report).is_file():
            mirror.log_artifact(run_id, result.report, "report")
        for name in (ex.MANIFEST, PLAN, THROUGHPUT):
            path = Path(result.out) / name
            if path.is_file():
                mirror.log_artifact(run_id, path, "build")
        mirror.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the model on disk is what matters
        say(f"warning: the build is not logged to MLflow: {redact_text(str(exc))}")
        return ""
    say(f"MLflow: build run {run_id} ({build_run_name(recipe)}) in experiment {recipe.source.name}")
    return run_id
