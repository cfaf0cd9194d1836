"""Shared stages (tokenize, teacher, importance, prune, the reference evals, the teacher's benchmarks) as
Ray tasks in dependency order, each claimed before it is launched (ablate.track.leases), so a stage
another live submission runs is waited for instead of run twice. The executor mixes this in.

The trials start once the stages they read are done. The stages no trial reads (the reference evals and
the teacher's benchmarks: the report's reference rows) keep running beside them, as Ray tasks that take
their turn for resources like any other; their results are recorded when the trials are done. At the
recipe's scale a 12B teacher's benchmarks take hours of a node that the trials can use meanwhile."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ablate.plan.stages import Stage, is_reference_eval
from ablate.run import ray_workers
from ablate.run.executor_state import ExecutorState
from ablate.run.in_process import WAIT_POLL_S, record_failure
from ablate.run.ray_workers import error_line
from ablate.run.reference_evals import mlflow_rows, reference_writes, write_new
from ablate.run.stage_runners import WORKER_STAGES, read_eval_metrics, record_benchmark

if TYPE_CHECKING:
    from ablate.plan.graph import StageGraph
    from ablate.spec.schema import Spec
    from ablate.track.leases import Leases

SHARED_KINDS = ("tokenize", "teacher", "importance", "prune")


def is_shared(stage: Stage) -> bool:
    """Stages every trial of a teacher shares: tokenize, teacher, importance, prune, the reference evals of
    the pruned students and the teacher, and the teacher's benchmarks (its reference row), and a search's
    benchmarks of pruned candidates (their one-shot scores); a student's benchmarks run in its trial, on
    the model its eval loaded."""
    return (
        stage.kind in SHARED_KINDS
        or is_reference_eval(stage)
        or (stage.kind == "benchmark" and stage.config["model"] in ("teacher", "pruned"))
    )


def shared_of(graph: StageGraph) -> list[Stage]:
    """The stages run before the trials, in dependency order: the shared kinds (is_shared), and the
    distillations a later pruning starts from (the earlier links of rounds and chains), which the
    importance and prune stages after them wait for."""
    sources = {p for s in graph.stages.values() if s.kind == "importance" for p in s.parents}
    return [s for s in graph.stages.values() if is_shared(s) or s.hash in sources]


def beside_trials(graph: StageGraph, shared: list[Stage]) -> set[str]:
    """The shared stages no trial and no other stage reads: reference evals and benchmarks that are no
    stage's parent (a search's one-shot benchmarks are read by its ranking, which runs them shared-only)."""
    return {
        s.hash for s in shared if (is_reference_eval(s) or s.kind == "benchmark") and not graph.children(s.hash)
    }


DRIVER_MEMORY_BYTES = 256 * 2**20  # what a task that only waits for its Ray Train workers reserves


@dataclass
class _SharedRun:
    """The shared stages of one submission as they run: what is left, launched, waited for and failed."""

    unresolved: dict[str, Stage]
    failures: dict[str, str] = field(default_factory=dict)
    refs: dict[str, Any] = field(default_factory=dict)  # stage hash -> its Ray task
    pending: dict[Any, Stage] = field(default_factory=dict)  # Ray task -> stage, not collected yet
    waited: set[str] = field(default_factory=set)  # stages found held by another submission


class SharedStages(ExecutorState):
    """The executor's running of shared stages (see the module docstring)."""

    spec: Spec
    leases: Leases
    base_dir: str
    reference_rows: dict[str, list[tuple[str, int, float]]]  # trial key -> MLflow rows (mirror_references)
    beside_hashes: set[str]  # the shared stages no trial reads (beside_trials)
    _shared_run: _SharedRun

    if TYPE_CHECKING:  # provided by the executor

        def _start_ray(self) -> None: ...
        def _worker_resources(self) -> dict[str, Any]: ...
        def _shared_resources(self) -> tuple[float, float]: ...
        def run_id(self, key: str) -> str: ...

    def run_shared_stages(self, beside: bool = False) -> dict[str, str]:
        """Tokenize, teacher, importance and prune stages as Ray tasks in dependency order; returns
        failures (the dict goes on filling while the stages `beside` leaves running finish).

        beside: return once every stage a trial reads is resolved, leaving the stages no trial reads
        (beside_trials) running; finish_shared_stages collects them. Otherwise return when all are.

        The tokenize stages of a stage's data go before it (StageGraph.data_of), so no two
        stages tokenize one source at once and a source that cannot be read fails what reads it.
        Each stage is claimed before it is launched (ablate.track.leases); one that another live
        submission runs is waited for (its record polled) and then counted as reused, and its
        children are launched once it is completed."""
        shared = shared_of(self.graph)
        self.reference_rows = {}
        for stage in shared:
            if self._done(stage.hash):
                self._count(self.result.stages_reused, stage.kind)
                self._record_results(stage)
        self._shared_run = _SharedRun({s.hash: s for s in shared if not self._done(s.hash)})
        self.beside_hashes = beside_trials(self.graph, shared)
        later = self.beside_hashes if beside else set()
        self._advance_shared({h for h in self._shared_run.unresolved if h not in later})
        return self._shared_run.failures

    def finish_shared_stages(self) -> None:
        """Wait for the shared stages run_shared_stages(beside=True) left running, and record them."""
        run = getattr(self, "_shared_run", None)
        if run is not None and run.unresolved:
            self._advance_shared(set(run.unresolved))

    def _advance_shared(self, until: set[str]) -> None:
        """Launch what can start and collect what ends, until no stage of `until` is unresolved; what can
        start is launched at least once, so the stages left for later are running (or waited for) on return."""
        run = self._shared_run
        while True:
            self._launch_ready(run)
            if not any(h in run.unresolved for h in until):
                return
            if run.pending:
                import ray

                timeout = WAIT_POLL_S if run.waited else None
                done, _ = ray.wait(list(run.pending), num_returns=1, timeout=timeout)
                for ref in done:
                    stage = run.pending.pop(ref)
                    del run.unresolved[stage.hash]
                    self._shared_outcome(stage, ref, run.failures)
            else:
                time.sleep(WAIT_POLL_S)  # only stages other submissions hold (or their children) are left

    def _launch_ready(self, run: _SharedRun) -> None:
        """Claim and launch every unresolved stage whose parents and data are ready (see run_shared_stages)."""
        unresolved, failures, refs, pending, waited = (
            run.unresolved, run.failures, run.refs, run.pending, run.waited
        )  # fmt: skip
        for stage in [s for s in unresolved.values() if s.hash not in refs]:
            data = self.graph.data_of(stage.hash) if stage.kind != "tokenize" else set()
            parent_failed = [p for p in (*sorted(data), *stage.parents) if p in failures]
            if parent_failed:
                del unresolved[stage.hash]
                what = (
                    "the tokenize stage of its data" if parent_failed[0] in data else "its parent stage"
                )
                self._stage_failed(stage, f"not run: {what} {parent_failed[0]} failed", failures)
                continue
            if any(h in unresolved for h in data):
                continue  # its data is being tokenized: launched once the shards are there
            if any(p not in refs and not self._done(p) for p in stage.parents):
                continue  # a parent another submission runs: launched once it is completed
            claim = self.leases.claim_stage(stage.hash, take_failed=stage.hash not in waited)
            if claim.state == "held":
                if stage.hash not in waited:
                    waited.add(stage.hash)
                    self._waiting(stage, claim.owner)
                continue
            if claim.state in ("completed", "failed"):  # the other submission finished it
                del unresolved[stage.hash]
                if claim.state == "failed":
                    self._stage_failed(
                        stage, f"failed in another submission: {claim.error}", failures, record=False
                    )
                else:
                    self._stage_reused(stage)
                continue
            refs[stage.hash] = self._launch_shared(stage, refs)
            pending[refs[stage.hash]] = stage

    def _launch_shared(self, stage: Stage, refs: dict[str, Any]) -> Any:
        """Start a claimed shared stage as a Ray task (after its parents' tasks, when it has some)."""
        self._start_ray()
        import ray

        trial_res = self.spec.resources.trial
        parents = {self.graph.stages[p].kind: self.graph.stages[p] for p in stage.parents}
        deps = [refs[p] for p in stage.parents if p in refs]
        retries = {"max_retries": self.spec.resources.max_failures, "retry_exceptions": False}
        if stage.kind in WORKER_STAGES and trial_res.strategy != "single":
            # Teacher correction trains like a trial: on the trial's workers (the task only waits).
            on_workers = ray.remote(ray_workers.stage_on_workers)
            ref = on_workers.options(num_cpus=0, memory=DRIVER_MEMORY_BYTES, **retries).remote(
                stage, parents, self.store.url, self.base_dir, self._worker_resources(), *deps
            )
        else:  # one process: resources.shared, by default one worker's share of the trial
            cpu, gpu = self._shared_resources()
            ref = (
                ray.remote(ray_workers.stage_task)
                .options(num_cpus=cpu, num_gpus=gpu, **retries)
                .remote(stage, parents, self.store.url, self.base_dir, max(1, int(cpu)), *deps)
            )
        self.progress("stage_start", {"kind": stage.kind, "hash": stage.hash})
        return ref

    def _shared_outcome(self, stage: Stage, ref: Any, failures: dict[str, str]) -> None:
        import ray

        try:
            facts = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a stage failure is recorded, not raised
            parent_failed = [p for p in stage.parents if p in failures]
            if parent_failed:  # Ray hands a failed parent's error to its children unrun
                message = f"not run: its parent stage {parent_failed[0]} failed"
            else:
                message = error_line(exc)
            self._stage_failed(stage, message, failures)
            return
        self.stage_status[stage.hash] = "completed"
        self.records.mark_stage_completed(stage.hash, self.store.path_for(stage.hash))
        self._record_results(stage, ran=True)
        self._count(self.result.stages_run, stage.kind)
        self.progress("stage_done", {"kind": stage.kind, "hash": stage.hash, "facts": facts})

    def _record_results(self, stage: Stage, ran: bool = False) -> None:
        """A benchmark's results go to the records (the report's teacher row reads them there), and a
        reference eval's into its trials' metrics (ablate.run.reference_evals).

        ran: the stage ran in this submission. Its trials may have finished before it (it runs beside
        them), their records already holding the teacher's loss from their own eval: all its rows then go
        to MLflow (which skips the points a run has), not only those new to the records."""
        if stage.kind == "benchmark":
            record_benchmark(self.store, self.records, stage.hash)
        elif is_reference_eval(stage):
            metrics = read_eval_metrics(self.store, stage.hash)
            for key, (rows, final) in reference_writes(self.graph, stage, metrics).items():
                if key in self.trial_ids:
                    written = write_new(self.records, self.trial_ids[key], rows, final)
                    mirrored = mlflow_rows(rows, final) if ran else written
                    if mirrored:
                        self.reference_rows.setdefault(key, []).extend(mirrored)

    def mirror_references(self) -> None:
        """The reference values this submission wrote, to the trials' MLflow runs (after the trials, from
        the driver thread, so MLflow is opened only when something was written)."""
        rows, self.reference_rows = self.reference_rows, {}
        for key, values in rows.items():
            self.mirror.log_step_metrics(self.run_id(key), values)

    def _stage_failed(
        self, stage: Stage, message: str, failures: dict[str, str], record: bool = True
    ) -> None:
        failures[stage.hash] = message
        self.stage_status[stage.hash] = "failed"
        if record:
            record_failure(self.records, stage, message, self.name)
        self._count(self.result.stages_failed, stage.kind)
        self.progress("stage_failed", {"kind": stage.kind, "hash": stage.hash, "error": message})

    def _stage_reused(self, stage: Stage) -> None:
        """A stage another submission completed while this one waited for it."""
        self.stage_status[stage.hash] = "completed"
        self._record_results(stage)
        self._count(self.result.stages_reused, stage.kind)
        self.progress("stage_done", {"kind": stage.kind, "hash": stage.hash, "facts": {"reused": True}})

    def _waiting(self, stage: Stage, owner: str | None) -> None:
        self.records.log_event(
            f"{stage.kind} stage {stage.hash} is being run by another submission ({owner}): waiting for it",
            experiment=self.name,
            stage_hash=stage.hash,
        )
        self.progress("stage_wait", {"kind": stage.kind, "hash": stage.hash, "owner": owner})


__all__ = ["DRIVER_MEMORY_BYTES", "SHARED_KINDS", "SharedStages", "WAIT_POLL_S", "is_shared"]
