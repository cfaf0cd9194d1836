"""The report's benchmark table: lm-eval results of every trial's student beside its teacher's, read
from the records (benchmark stages linked to each trial), in the papers' layout."""

from __future__ import annotations

from typing import Any

from ablate.benchmarks.table import benchmark_table


def benchmarks_of(records: Any, trial_ids: dict[str, int]) -> dict[str, Any]:
    """{"teacher": {task: {...}}, "trials": {key: {task: {...}}}}; empty when nothing was benchmarked."""
    teacher: dict[str, Any] = {}
    trials: dict[str, dict[str, Any]] = {}
    for key, trial_id in trial_ids.items():
        stages = [
            s for s in records.trial_stages(trial_id) if s.kind == "benchmark" and s.status == "completed"
        ]
        if not stages:
            continue
        results = records.benchmark_results(s.hash for s in stages)
        for stage in stages:
            found = results.get(stage.hash, {})
            role = stage.config.get("model")
            if role == "teacher":
                teacher.update(found)
            elif role == "student":  # not a search candidate's pruned model, nor the aligned model
                trials.setdefault(key, {}).update(found)
    if not (teacher or trials):
        return {}
    return {"teacher": teacher, "trials": trials}


def benchmarks_section(benchmarks: dict[str, Any], labels: dict[str, str], teacher_ref: str) -> list[str]:
    """## Benchmarks: the teacher's row first, then each trial that has results (value ± standard error)."""
    if not benchmarks:
        return []
    rows = [(f"teacher `{teacher_ref}`", benchmarks["teacher"])]
    rows += [(labels.get(key, f"`{key}`"), results) for key, results in benchmarks["trials"].items()]
    return [
        "## Benchmarks",
        "",
        "lm-evaluation-harness on each trial's distilled student and on the teacher (value ± standard error; "
        "each metric is also a trial metric named TASK/METRIC, usable as `--metric`).",
        "",
        *benchmark_table(rows),
    ]
