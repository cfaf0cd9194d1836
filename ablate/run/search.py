"""`ablate submit` of a spec with a `search` section: one-shot scoring, then the top_k retrained.

1. Scoring: every candidate's shared stages (tokenize, teacher, importance, its prune and its pruned-eval)
   run as one shared-only submission (no trial rows: a candidate is not a trial until it is retrained).
   Its one-shot score is its pruned-eval's value of `search.score.metric`.
2. The candidates are ranked, and every one is recorded with its score and rank (records:
   ``search_candidates``).
3. The top_k run as ordinary trials (target: the candidate's shape; distill: `search.retrain`), beside
   the spec's own grid, in one submission: one MLflow child each, resumable, reused when finished.
4. The winner, the best mean of `search.select` over a candidate's seeds, is recorded; ``ablate build``
   takes it with ``build: {trial: search}``.

Each phase is content-addressed like every stage: a re-submit runs nothing, and raising top_k runs only
the trials of the new candidates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ablate.plan.stages import PRUNED_EVAL
from ablate.report.metrics import metric_info
from ablate.run.executor import Executor
from ablate.run.stage_runners import read_benchmark, read_eval_metrics
from ablate.run.submit_result import Progress, SubmitResult
from ablate.search.enumerate import Candidate
from ablate.search.trials import (
    PRUNED_BENCHMARK,
    add_scoring_benchmarks,
    benchmark_task,
    retraining_trials,
    scoring_trials,
)
from ablate.spec.schema import Target
from ablate.spec.sweep import with_winner
from ablate.spec.validate import LoadedSpec
from ablate.track.search_records import CandidateRow


def rank(scores: dict[str, float | None], higher_is_better: bool) -> dict[str, int]:
    """Rank 1 = best score; unscored candidates (failed) get no rank; ties keep the enumeration order
    (largest first), as `scores` lists them."""
    order = [n for n, v in scores.items() if v is not None and not math.isnan(v)]
    order.sort(key=lambda n: -scores[n] if higher_is_better else scores[n])  # type: ignore[operator]
    return {name: i + 1 for i, name in enumerate(order)}


def _one_shot(executor: Executor, stages: dict[str, str], metric: str) -> float | None:
    """A candidate's one-shot value of `metric`: its pruned-eval's, or its pruned benchmark's (TASK/METRIC);
    None when that stage did not complete."""
    task = benchmark_task(metric)
    h = stages[PRUNED_BENCHMARK + task] if task else stages[PRUNED_EVAL]
    if executor.stage_status.get(h) != "completed":
        return None
    if task:
        values = read_benchmark(executor.store, h)["metrics"].get(task, {})
        value = values.get(metric.rpartition("/")[2])
    else:
        value = read_eval_metrics(executor.store, h).get(metric)
    return None if value is None else float(value)


def _score_rows(
    executor: Executor, candidates: Sequence[Candidate], metric: str, higher: bool
) -> list[CandidateRow]:
    scores: dict[str, float | None] = {}
    hashes: dict[str, tuple[str, str]] = {}
    for candidate, trial in zip(candidates, executor.loaded.trials, strict=True):
        stages = executor.graph.trial_stages[trial.key]
        prune_hash, eval_hash = stages["prune"], stages[PRUNED_EVAL]
        hashes[candidate.name] = (prune_hash, eval_hash)
        scores[candidate.name] = _one_shot(executor, stages, metric)
    ranks = rank(scores, higher)
    return [
        CandidateRow(
            name=c.name,
            shape=c.shape,
            params=c.params,
            prune_hash=hashes[c.name][0],
            eval_hash=hashes[c.name][1],
            metric=metric,
            score=scores[c.name],
            rank=ranks.get(c.name),
        )
        for c in candidates
    ]


def winner(
    rows: Sequence[CandidateRow], finals: dict[str, dict[str, float]], metric: str, higher: bool
) -> str | None:
    """The retrained candidate with the best mean of `metric` over its finished trials; a tie goes to the
    better one-shot rank. None when no retrained candidate has a value."""
    means: dict[str, tuple[float, int]] = {}
    for row in rows:
        values = [finals.get(k, {}).get(metric, math.nan) for k in row.trial_keys]
        values = [v for v in values if not math.isnan(v)]
        if values:
            mean = sum(values) / len(values)
            means[row.name] = (-mean if higher else mean, row.rank or 0)
    return min(means, key=means.__getitem__) if means else None


def _run_after_search(
    loaded: LoadedSpec, won: Candidate, so_far: SubmitResult, earlier: set[str], phase: Phase
) -> SubmitResult:
    """The trials of `from: search` targets, with the winner's shape, as one more submission."""
    target = Target.model_validate(won.target)
    after = [with_winner(t, target) for t in loaded.after_search]
    phase.say(f"{len(after)} trial(s) of the winner {won.name}")
    final = phase.executor(dataclasses.replace(loaded, trials=after), recompute=False)
    try:
        result = final.submit()
    finally:
        final.close()
    result.uncount(final.graph, earlier)
    result.merge(so_far)
    listed = {t["key"] for t in so_far.trials}
    result.trials = [*so_far.trials, *(t for t in result.trials if t["key"] not in listed)]
    result.search = so_far.search
    return result


@dataclass(frozen=True)
class Phase:
    """How each phase's submission is made: the cluster, the progress sink and what to recompute are the
    user's submission's (ablate.run.executor.submit hands them over)."""

    address: str | None
    progress: Progress | None
    recompute_stages: Sequence[str]

    def executor(self, loaded: LoadedSpec, recompute: bool = True, shared_only: bool = False) -> Executor:
        stages = self.recompute_stages if recompute else ()
        return Executor(loaded, self.address, self.progress, stages, shared_only=shared_only)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress("search", {"text": text})


def submit_search(loaded: LoadedSpec, phase: Phase) -> SubmitResult:
    """Score, rank, retrain the top_k (with the spec's own trials), record the winner (see above)."""
    spec, found = loaded.spec, loaded.search
    assert spec.search is not None and found is not None
    search = spec.search
    score_higher = metric_info(search.score.metric, search.score.higher_is_better).higher_is_better
    select_higher = metric_info(search.select_metric, search.select.higher_is_better).higher_is_better

    scoring = dataclasses.replace(loaded, trials=scoring_trials(spec, found.candidates))
    phase.say(f"scoring {len(found.candidates)} candidates one-shot by {search.score.metric}")
    phase1 = phase.executor(scoring, shared_only=True)
    task = benchmark_task(search.score.metric)
    if task is not None:  # scored by a benchmark: lm-eval on every pruned candidate
        add_scoring_benchmarks(phase1.graph, scoring.trials, task, str(loaded.path.parent))
    try:
        scored = phase1.submit()
        rows = _score_rows(phase1, found.candidates, search.score.metric, score_higher)
    finally:
        phase1.close()
    ran_already = {h for h, status in phase1.stage_status.items() if status == "completed"}

    ranked = sorted((r for r in rows if r.rank is not None), key=lambda r: r.rank or 0)
    top = [r.name for r in ranked[: search.score.top_k]]
    by_name = {c.name: c for c in found.candidates}
    retrain = retraining_trials(spec, [by_name[n] for n in top])
    keys: dict[str, list[str]] = {}
    for trial in retrain:
        keys.setdefault(trial.target, []).append(trial.key)
    rows = [dataclasses.replace(r, trial_keys=keys.get(r.name, [])) for r in rows]
    best_one_shot = ranked[0].name if ranked else None
    phase.say(f"retraining the top {len(top)} of {len(rows)}: {', '.join(top)}")

    own = {t.key for t in loaded.trials}
    trials = [*loaded.trials, *(t for t in retrain if t.key not in own)]
    main = phase.executor(dataclasses.replace(loaded, trials=trials))
    main.recompute -= ran_already  # what scoring re-ran in this submission is not run a third time
    try:
        main.records.record_search(spec.name, rows)
        result = main.submit()
        finals = {t.key: t.final_metrics for t in main.records.experiment_summary(spec.name).trials}
        chosen = winner([r for r in rows if r.trial_keys], finals, search.select_metric, select_higher)
        main.records.set_search_winner(spec.name, chosen)
    finally:
        main.close()
    result.uncount(main.graph, set(phase1.graph.stages))
    result.merge(scored)
    result.search = {
        "candidates": len(rows),
        "scored": len(ranked),
        "top_k": top,
        "one_shot_best": best_one_shot,
        "winner": chosen,
        "score_metric": search.score.metric,
        "select_metric": search.select_metric,
    }
    phase.say(f"winner: {chosen or 'none (no retrained candidate finished)'}")
    if loaded.after_search and chosen is not None:
        earlier = set(phase1.graph.stages) | set(main.graph.stages)
        result = _run_after_search(loaded, by_name[chosen], result, earlier, phase)
    return result
