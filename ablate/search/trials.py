"""A search's candidates as trials: the spec with the candidate's shape as its target and the search's
retraining as its distillation. Their shared stages (prune, and the pruned-eval that is the one-shot
score) are what scoring runs; the top_k of them run whole, as ordinary trials of the experiment.

A candidate's prune stage is hashed by its shape alone, so a candidate whose shape a spec target also
names shares that target's prune (and pruned-eval) stage, and raising top_k runs only the new trials.
"""

from __future__ import annotations

from typing import Any

from ablate.plan.graph import StageGraph
from ablate.plan.stages import benchmark_stage
from ablate.search.check import retrain_distill
from ablate.search.enumerate import Candidate
from ablate.spec.schema import Spec, Target
from ablate.spec.sweep import SEED_AXIS, TARGET_AXIS, Trial, get_path, resolved_config, stable_hash


def candidate_spec(spec: Spec, candidate: Candidate) -> Spec:
    """`spec` with the candidate's target added under its name and distill set to the retraining."""
    targets = {**spec.targets, candidate.name: Target.model_validate(candidate.target)}
    return spec.model_copy(update={"targets": targets, "distill": retrain_distill(spec)})


def candidate_trial(spec: Spec, candidate: Candidate, seed: int) -> Trial:
    """The trial that retrains `candidate` with `seed`. Its overrides name every axis the spec's grids
    sweep (with the value it runs), as every trial's do, so the report compares it axis by axis."""
    trial_spec = candidate_spec(spec, candidate)
    dumped = trial_spec.model_dump(mode="json")
    overrides: dict[str, Any] = {TARGET_AXIS: candidate.name}
    for axis in spec.sweep.axes():
        if axis not in (TARGET_AXIS, SEED_AXIS):
            overrides[axis] = get_path(dumped, axis)
    key = stable_hash(resolved_config(trial_spec, candidate.name, seed))
    return Trial(key, {**overrides, SEED_AXIS: seed}, candidate.name, seed, trial_spec)


def scoring_trials(spec: Spec, candidates: list[Candidate]) -> list[Trial]:
    """One trial per candidate (the first seed): only their shared stages run while scoring."""
    return [candidate_trial(spec, c, spec.sweep.seeds[0]) for c in candidates]


def retraining_trials(spec: Spec, candidates: list[Candidate]) -> list[Trial]:
    """The top_k candidates' trials, one per seed of `sweep.seeds`."""
    return [candidate_trial(spec, c, seed) for c in candidates for seed in spec.sweep.seeds]


PRUNED_BENCHMARK = "pruned-benchmark:"  # a scoring trial's stage key: the benchmark of its pruned model


def benchmark_task(metric: str) -> str | None:
    """The lm-eval task a TASK/METRIC score names (None for a held-out metric of ablate.evaluate)."""
    task, slash, _ = metric.rpartition("/")
    return task if slash else None


def add_scoring_benchmarks(graph: StageGraph, trials: list[Trial], task: str, base_dir: str | None) -> None:
    """One-shot scoring by a benchmark: the lm-eval run of `task` on each candidate's pruned model, added
    to the scoring graph as a shared stage of its trial (a candidate shared with a spec target shares it)."""
    for trial in trials:
        stages = graph.trial_stages[trial.key]
        stage = benchmark_stage(trial.spec, task, graph.stages[stages["prune"]], "pruned", base_dir)
        stages[PRUNED_BENCHMARK + task] = stage.hash
        graph.stages.setdefault(stage.hash, stage)
        graph.naive[stage.kind] += 1
