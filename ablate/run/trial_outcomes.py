"""What a trial's events do to the records and the MLflow mirror: started, its steps, completed, failed,
stopped (cancel or ASHA), retried. The executor mixes this in; Ray Tune's callback
(:mod:`ablate.run.tune_hooks`) reaches it only through these methods (its ``TrialSink``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ablate.plan.stages import ALIGN, ALIGNED_BENCHMARK, BENCHMARK, trial_kinds
from ablate.run import ray_workers, stage_runners
from ablate.run.executor_state import ExecutorState
from ablate.run.mlflow_runs import size_fields
from ablate.track.mlflow_names import mlflow_rows

if TYPE_CHECKING:  # the attributes this mixin uses; Executor defines them
    from ablate.run.artifacts import ArtifactStore
    from ablate.track.db import Records


def scalars(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def curve_rows(facts: dict[str, Any]) -> list[tuple[str, int, float]]:
    """Per-step loss, lr and tokens from a distillation's curves (steps 1..n)."""
    rows = [("loss", i + 1, float(v)) for i, v in enumerate(facts.get("loss_curve") or [])]
    rows += [("lr", i + 1, float(v)) for i, v in enumerate(facts.get("lr_curve") or [])]
    tpp = facts.get("tokens_per_step") or 0
    if tpp:
        rows += [("tokens", i + 1, float((i + 1) * tpp)) for i in range(len(facts.get("loss_curve") or []))]
    return rows


def final_rows(final: dict[str, float], step: int) -> list[tuple[str, int, float]]:
    """Final eval metrics for MLflow: `eval_<name>` (`eval/<name>` there) at the last step, the same series
    as periodic evals (`distill.eval_every`), so the run table shows them and they never mix with per-step
    values. Never at step 0, where a new run holds its first metric's place (ablate.run.mlflow_runs)."""
    return [(f"eval_{k}", max(1, step), v) for k, v in final.items() if v is not None]


def benchmark_finals(records: Records, store: ArtifactStore, stages: dict[str, str]) -> dict[str, float]:
    """The trial's benchmark results as final metrics named TASK/METRIC (so any of them can be the
    report's --metric), each stage's results (with standard errors) stored in the records on the way."""
    out: dict[str, float] = {}
    for key in trial_kinds(stages):
        prefix = "aligned/" if key.startswith(ALIGNED_BENCHMARK) else "" if key.startswith(BENCHMARK) else None
        if prefix is not None:
            for task, values in stage_runners.record_benchmark(store, records, stages[key]).items():
                out |= {f"{prefix}{task}/{m}": float(v) for m, v in values.items() if not m.endswith("_stderr")}
    return out


def align_results(store: ArtifactStore, stages: dict[str, str]) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    """The trial's alignment stages as final metrics (`NAME/METRIC` after the stage, `NAME/before/METRIC`
    before it, `NAME/train_seconds`, `NAME/train_tokens`, `NAME/train_flops`) and their loss curves as
    per-step rows (`NAME/loss`)."""
    from ablate.run.align_stage import read_align_facts

    finals: dict[str, float] = {}
    rows: list[tuple[str, int, float]] = []
    for key in trial_kinds(stages):
        if not key.startswith(ALIGN):
            continue
        facts = read_align_facts(store, stages[key])
        name = facts["name"]
        finals |= {f"{name}/{m}": float(v) for m, v in facts["after"].items()}
        finals |= {f"{name}/before/{m}": float(v) for m, v in facts["before"].items()}
        finals |= {f"{name}/train_{k}": float(facts[k]) for k in ("seconds", "tokens", "flops")}
        rows += [(f"{name}/loss", i + 1, float(v)) for i, v in enumerate(facts.get("loss_curve") or [])]
    return finals, rows


class TrialOutcomes(ExecutorState):
    """The executor's handling of trial events (see the module docstring)."""

    run_ids: dict[str, str]
    ran: dict[str, dict[str, Any]]
    trial_tags: dict[str, dict[str, str]]
    objectives: dict[str, str]  # trial key -> distill.loss

    if TYPE_CHECKING:  # provided by the executor

        def cancel_stages(self, key: str, reason: str) -> None: ...

    def trial_started(self, key: str) -> None:
        self.records.set_trial_status(self.trial_ids[key], "running")  # its stages: claimed already
        self.mirror.set_status(self.run_ids[key], "RUNNING")
        self.progress("trial_start", {"key": key})

    def trial_began_work(self, key: str, result: dict[str, Any]) -> None:
        node, host = str(result.get("node") or ""), str(result.get("host") or "")
        self.ran[key] = {"node": node, "started": result.get("started")}
        self.trial_tags[key] = {"ablate.node": node, "ablate.host": host}
        self.records.log_event(
            f"trial {key} started on node {node[:16]} ({host}, pid {result.get('pid')})",
            experiment=self.name,
            trial_id=self.trial_ids[key],
        )

    def trial_work_ended(self, key: str, result: dict[str, Any]) -> None:
        ran = self.ran.setdefault(key, {})
        ran["finished"] = result.get("finished")
        if ran.get("started") and ran.get("finished"):
            ran["work_s"] = round(ran["finished"] - ran["started"], 3)

    def record_steps(self, key: str, rows: list[tuple[str, int, float]]) -> None:
        self.records.log_metrics(self.trial_ids[key], rows)
        self.mirror_metrics(key, rows)

    def mirror_metrics(self, key: str, rows: list[tuple[str, int, float]]) -> None:
        """Recorded rows to the trial's MLflow run, under their MLflow names (`train/kl` for a `kld`
        trial's loss, `train/ce` for a `ce` one's: ablate.track.mlflow_names); points it has are skipped."""
        self.mirror.log_step_metrics(self.run_ids[key], mlflow_rows(rows, self.objectives.get(key)))

    def mirror_size(self, key: str) -> None:
        """The student's parameter count (from its prune stage) to the trial's run: MLflow then plots
        quality against size (ablate.run.mlflow_runs)."""
        params, rows = size_fields(self.store, self.graph.trial_stages[key]["prune"])
        if params:
            self.mirror.add_params(self.run_ids[key], params, f"trial {key}")
            self.mirror.log_step_metrics(self.run_ids[key], rows)

    def _finish_tags(self, key: str) -> None:
        tags = self.trial_tags.pop(key, None)
        if tags:
            self.mirror.set_tags(self.run_ids[key], tags)

    def trial_finished(self, key: str, outcome: dict[str, Any], last_step: int | None) -> None:
        """Tune ended the trial without an error: it completed, failed on its own terms, or was stopped."""
        if outcome.get("phase") == ray_workers.PHASE_FAILED:
            stage = outcome.get("stage")
            self._fail(key, f"{stage or 'distill'} failed: {outcome.get('error', 'failed')}", stage)
        elif outcome.get("phase") != ray_workers.PHASE_DONE:
            self._stopped(key, last_step)
        else:
            self._completed(key, outcome)

    def _stopped(self, key: str, last_step: int | None) -> None:
        if self.records.cancel_requested(self.name):
            reason = "cancelled (ablate cancel) before it finished"
        else:  # the only other way Tune stops a trial that did not fail: the ASHA scheduler
            reason = f"stopped early by ASHA at step {last_step}: its loss was not among the best"
            self.result.early_stopped.append(key)
        self.records.set_trial_status(self.trial_ids[key], "cancelled", error=reason)
        self.cancel_stages(key, reason)
        self._finish_tags(key)
        self.mirror.set_terminated(self.run_ids[key], "KILLED")
        self.progress("trial_cancelled", {"key": key, "reason": reason})

    def _completed(self, key: str, outcome: dict[str, Any]) -> None:
        final = scalars(outcome.get("final") or {})
        facts = outcome.get("facts") or {}
        steps = int(facts.get("steps") or 0)
        self.record_steps(key, curve_rows(facts))  # the steps an earlier attempt ran are in the curves
        trial_id, run_id = self.trial_ids[key], self.run_ids[key]
        stages = self.graph.trial_stages[key]
        for kind in trial_kinds(stages):
            if not self._done(stages[kind]):
                self.records.mark_stage_completed(stages[kind], self.store.path_for(stages[kind]))
                self.stage_status[stages[kind]] = "completed"
                self._count(self.result.stages_run, self.graph.stages[stages[kind]].kind)
            elif stages[kind] not in self.shared_hashes:  # an earlier submission's or trial's (a shared prefix)
                self._count(self.result.stages_reused, self.graph.stages[stages[kind]].kind)
        final |= benchmark_finals(self.records, self.store, stages)
        aligned, align_rows = align_results(self.store, stages)
        final |= aligned
        self.record_steps(key, align_rows)
        self.records.log_final_metrics(trial_id, final)
        self.records.set_trial_status(trial_id, "completed")
        resumed = facts.get("resumed_from_step")
        if resumed is not None:
            self.records.log_event(
                f"trial {key}: distillation resumed from its checkpoint at step {resumed}",
                experiment=self.name,
                trial_id=trial_id,
            )
        self.mirror_metrics(key, final_rows(final, steps))
        self.mirror_size(key)
        self._finish_tags(key)
        self.mirror.set_terminated(run_id, "FINISHED")
        self.progress("trial_done", {"key": key, "metrics": final, "resumed_from_step": resumed})

    def trial_crashed(self, key: str, error: str) -> None:
        """The trial's process raised past its own error handling (or died): out of retries."""
        self._fail(key, error, None)

    def trial_retried(self, key: str, error: str) -> None:
        self.records.log_event(
            f"trial {key} crashed and is retried (resources.max_failures): {error}",
            level="warning",
            experiment=self.name,
            trial_id=self.trial_ids[key],
        )

    def _fail(self, key: str, error: str, kind: str | None) -> None:
        trial_id, run_id = self.trial_ids[key], self.run_ids[key]
        stages = self.graph.trial_stages[key]
        own = trial_kinds(stages)
        kinds = [kind] if kind in own else [k for k in own if not self._done(stages[k])][:1]
        for k in kinds:
            self.records.mark_stage_failed(stages[k], error)
            self.stage_status[stages[k]] = "failed"
            self._count(self.result.stages_failed, self.graph.stages[stages[k]].kind)
        self.records.set_trial_status(trial_id, "failed", error=error)
        self.records.log_event(
            f"trial {key} failed: {error}", level="error", experiment=self.name, trial_id=trial_id
        )
        self._finish_tags(key)
        self.mirror.set_terminated(run_id, "FAILED")
        self.progress("trial_failed", {"key": key, "error": error})


__all__ = ["TrialOutcomes", "align_results", "benchmark_finals", "curve_rows", "final_rows", "scalars"]
