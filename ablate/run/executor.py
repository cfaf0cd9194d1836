"""Run a spec: shared stages once as Ray tasks, each trial's distill + eval as a Ray Tune trial.

The SQL records are the source of truth; MLflow mirrors them. Both are written from the driver only
(parallel writers lock SQLite): trial workers send their metrics through `tune.report`, and the
driver's Tune callback records them in batches. Ray Tune neither de-duplicates re-runs nor nests MLflow
runs, so ablate does both:

- a stage whose artifact is in the store is never run again (in this submission or a later one, by this
  experiment or another); a trial whose distill and eval artifacts exist is recorded from them in the
  driver without starting Ray at all. Reuse needs the artifact's checksums to verify: a damaged one stops
  the submission before any work (ArtifactCorrupt), and `--recompute` deletes and re-runs named stages;
- an interrupted distillation resumes from its checkpoint in `<artifacts>/.work/<distill hash>.<run>`;
- two submissions at once (the same spec, or specs sharing stages) run each stage and trial once: a
  submission claims what it runs (ablate.track.leases) and waits for what another live one holds;
- each trial keeps its one MLflow child run (found by tag) across submissions, and a submission with
  nothing to do opens neither Ray nor MLflow.

A deterministic trial failure (an `AblateError` in the trial: divergence, a bad model) is reported by the
trial itself and recorded as failed without retries; a crash counts against `resources.max_failures`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ablate.errors import RunError
from ablate.plan.graph import StageGraph, build_graph
from ablate.plan.stages import Stage, trial_kinds
from ablate.run import ray_workers, recompute, stage_runners
from ablate.run.artifacts import ArtifactCorrupt, ArtifactStore
from ablate.run.mlflow_runs import trial_run
from ablate.run.ray_session import init_ray
from ablate.run.shared_stages import DRIVER_MEMORY_BYTES, WAIT_POLL_S, SharedStages, shared_of
from ablate.run.submit_result import Progress, SubmitResult
from ablate.run.trial_outcomes import TrialOutcomes, align_results, benchmark_finals, curve_rows, final_rows
from ablate.spec import budget
from ablate.spec.validate import LoadedSpec
from ablate.track.db import Records, TrialInfo, connect
from ablate.track.leases import Leases
from ablate.track.mlflow import MlflowMirror
from ablate.track.urls import absolute_sqlite, absolute_store

log = logging.getLogger(__name__)

__all__ = ["Executor", "SubmitResult", "init_ray", "submit"]


class Executor(SharedStages, TrialOutcomes):
    """One submission of one spec."""

    def __init__(
        self,
        loaded: LoadedSpec,
        address: str | None = None,
        progress: Progress | None = None,
        recompute_stages: Sequence[str] = (),
        shared_only: bool = False,
    ):
        self.loaded = loaded
        # Only the shared stages of these trials, and no trial rows: a search's one-shot scoring, whose
        # "trials" are its candidates (ablate.run.search); the top_k become trials of a later submission.
        self.shared_only = shared_only
        self.spec = loaded.spec
        self.name = loaded.spec.name
        self.address = address
        self.progress = progress or (lambda event, data: None)
        self.graph: StageGraph = build_graph(loaded.trials, str(loaded.path.parent))
        self.recompute = recompute.select(self.graph, recompute_stages)  # hashes run again, not reused
        self.base_dir = str(loaded.path.parent.resolve())
        self.store = ArtifactStore(absolute_store(self.spec.tracking.artifacts))
        self.records: Records = connect(absolute_sqlite(self.spec.tracking.db))
        self.leases = Leases(self.records)  # this submission's claims on stages and trials
        self.experiment_id: int | None = None
        self.mlflow_uri = absolute_sqlite(self.spec.tracking.mlflow)
        self._mirror: MlflowMirror | None = None
        self.trial_ids: dict[str, int] = {}
        self.trial_infos: dict[str, TrialInfo] = {}
        self.run_ids: dict[str, str] = {}
        self.stage_status: dict[str, str] = {}
        self.shared_hashes: set[str] = set()  # set by register()
        self.beside_hashes: set[str] = set()  # shared stages no trial reads (set by run_shared_stages)
        self.ran: dict[str, dict[str, Any]] = {}  # trial key -> node, start and end of its work (this run)
        self.trial_tags: dict[str, dict[str, str]] = {}  # MLflow tags set when the trial ends
        self.objectives = {t.key: t.spec.distill.loss for t in loaded.trials}  # names MLflow's metrics
        self._opener: threading.Thread | None = None
        self._opener_error: BaseException | None = None
        self.result = SubmitResult(self.name)

    # ---------------------------------------------------------------- MLflow, opened only when needed
    @property
    def mirror(self) -> MlflowMirror:
        if self._mirror is None:
            self._mirror = MlflowMirror(self.mlflow_uri, self.name)
            parent = self._mirror.parent_run()
            self._mirror.set_status(parent, "RUNNING")  # ended again (FINISHED / FAILED) by submit()
            self.records.set_experiment_mlflow(self.name, self._mirror.experiment_id, parent)
        return self._mirror

    def run_id(self, key: str) -> str:
        """The trial's MLflow child run, found or created on first use (ablate.run.mlflow_runs: its
        readable name, params, stage hashes as tags, and the report's metric first)."""
        if key not in self.run_ids:
            trial = next(t for t in self.loaded.trials if t.key == key)
            fields = trial_run(trial, self.graph.trial_stages[key], self.spec.report.metric)
            run_id = self.mirror.child_run(
                key, fields.params, fields.tags, run_name=fields.name, first_metrics=fields.first_metrics
            )
            self.run_ids[key] = run_id
            info = self.trial_infos.get(key)
            if info is None or info.mlflow_run_id != run_id:
                self.records.set_trial_mlflow_run(self.trial_ids[key], run_id)
        return self.run_ids[key]

    # ---------------------------------------------------------------- records
    def register(self) -> None:
        spec_text = self.loaded.path.read_text()
        experiment = self.records.upsert_experiment(
            self.name, spec_text, hashlib.sha256(spec_text.encode()).hexdigest()[:16]
        )
        self.experiment_id = experiment.id
        recovered = self.leases.recover_interrupted(experiment.id)  # what a live submission holds stays
        if any(recovered.values()):
            self.records.log_event(
                f"recovered after an interrupted submission: {recovered['trials']} trial(s), "
                f"{recovered['stages']} stage(s) were running",
                level="warning",
                experiment=self.name,
            )
        known = {s.hash: s.status for s in self.records.stages()}
        # Run before the trials, by the shared phase (and counted there); the graph is final by now (a
        # search adds its scoring benchmarks before submitting).
        self.shared_hashes = {s.hash for s in shared_of(self.graph)}
        for stage in self.graph.stages.values():
            if self.shared_only and stage.hash not in self.shared_hashes:
                continue
            status = known.get(stage.hash)
            if status is None:
                self.records.upsert_stage(stage.hash, stage.kind, stage.config, stage.parents)
                status = "pending"
            present = self._present(stage)
            if status == "completed" and not present:
                self.records.reset_stage(stage.hash)  # its artifact vanished: run it again
                status = "pending"
            elif present and status != "completed":
                self.records.mark_stage_completed(stage.hash, self.store.path_for(stage.hash))
                status = "completed"
            self.stage_status[stage.hash] = status
        existing = {t.key: t for t in self.records.trials(self.name)}
        for trial in [] if self.shared_only else self.loaded.trials:
            info = existing.get(trial.key)
            stages = self.graph.trial_stages[trial.key]
            if info is None or info.status != "completed" or not self._linked(info.id, stages):
                # new, unfinished, or finished before a stage was added (a benchmark task): (re)linked
                info = self.records.upsert_trial(
                    self.name,
                    trial.key,
                    trial.overrides,
                    config=trial.resolved(),
                    stages=list(stages.values()),
                )
            self.trial_infos[trial.key] = info
            self.trial_ids[trial.key] = info.id
            if info.mlflow_run_id:
                self.run_ids[trial.key] = info.mlflow_run_id

    def _linked(self, trial_id: int, stages: dict[str, str]) -> bool:
        """Whether the records link the trial to every stage it has now."""
        return set(stages.values()) <= {s.hash for s in self.records.trial_stages(trial_id)}

    def _present(self, stage: Stage) -> bool:
        """Whether the stage's artifact is there to reuse: never when --recompute names it (it is deleted),
        and only once its checksums verify (a damaged one stops the submission: it is never reused)."""
        if stage.hash in self.recompute:
            if stage.kind == "tokenize":
                stage_runners.forget_shards(self.store, stage.hash)  # else the re-run finds the same shards
            self.store.delete(stage.hash)
            return False
        if not self.store.exists(stage.hash):
            return False
        try:
            self.store.verify(stage.hash)
        except ArtifactCorrupt as exc:
            raise exc.for_spec(str(self.loaded.path)) from None
        return True

    def _count(self, bucket: dict[str, int], kind: str) -> None:
        bucket[kind] = bucket.get(kind, 0) + 1

    def _done(self, h: str) -> bool:
        return self.stage_status.get(h) == "completed"

    # ---------------------------------------------------------------- shared stages
    # ---------------------------------------------------------------- trials
    def _trial_done(self, key: str) -> bool:
        info = self.trial_infos[key]
        stages = self.graph.trial_stages[key]
        return info.status == "completed" and all(self._done(stages[k]) for k in trial_kinds(stages))

    def run_trials(self, failures: dict[str, str]) -> None:
        """Record or run every trial not done yet, in rounds: each round takes the trials it can claim
        (ablate.track.leases) with the stages they run, records those whose artifacts exist and runs the
        rest in one Tune run; a trial (or a stage of it) another live submission holds waits for the
        next round, and a trial that submission finished is taken from the records as it left it."""
        self._runs_ready()
        remaining = []
        for trial in self.loaded.trials:
            if self._trial_done(trial.key):
                self._count_trial_reused(trial.key)
            else:
                remaining.append(trial)
        waited: set[str] = set()
        while remaining:
            todo, from_artifacts, later = [], [], []
            for trial in remaining:
                verdict = self._take_trial(trial.key, failures, waited)
                if verdict == "wait":
                    later.append(trial)
                elif verdict == "artifacts":
                    from_artifacts.append(trial.key)
                elif verdict == "tune":
                    todo.append(trial)
            for key in from_artifacts:
                try:
                    self._record_from_artifacts(key)
                finally:
                    self.leases.release_trial(self.trial_ids[key])
            if todo:
                try:
                    self._tune(todo)
                finally:
                    for t in todo:  # stages a failed trial never reached go back to pending
                        for h in self.graph.trial_stages[t.key].values():
                            if not self._done(h):
                                self.leases.unclaim_stage(h)
                        self.leases.release_trial(self.trial_ids[t.key])
            remaining = later
            if remaining and not (todo or from_artifacts):
                time.sleep(WAIT_POLL_S)

    def _take_trial(self, key: str, failures: dict[str, str], waited: set[str]) -> str:
        """Claim a trial and the stages it still needs: "wait" (another submission holds one of them),
        "done" (nothing left to do here), "artifacts" (record it from the store) or "tune" (run it)."""
        trial_id = self.trial_ids[key]
        stages = self.graph.trial_stages[key]
        claim = self.leases.claim_trial(trial_id)
        if claim.state == "held":
            if key not in waited:
                waited.add(key)
                self.records.log_event(
                    f"trial {key} is being run by another submission ({claim.owner}): waiting for it",
                    experiment=self.name,
                    trial_id=trial_id,
                )
                self.progress("trial_wait", {"key": key, "owner": claim.owner})
            return "wait"
        self._refresh_stages(list(stages.values()))
        info = self.records.get_trial(self.name, key)
        if info is not None:  # another submission may have finished it since this one registered
            self.trial_infos[key] = info
            if self._trial_done(key) or (key in waited and info.status in ("failed", "cancelled")):
                self.leases.release_trial(trial_id)  # the outcome it left is this trial's outcome
                if info.status == "completed":
                    self._count_trial_reused(key)
                    self.progress("trial_done", {"key": key, "metrics": {}, "reused": True})
                return "done"
        # A failed reference eval or teacher benchmark is no input of the trial: it leaves the trial to run.
        broken = [h for h in stages.values() if h in failures and h not in self.beside_hashes]
        if broken:
            error = f"upstream stage {broken[0]} failed: {failures[broken[0]]}"
            self.records.set_trial_status(trial_id, "failed", error=error)
            self.mirror.set_terminated(self.run_id(key), "FAILED")
            self.progress("trial_failed", {"key": key, "error": error})
            self.leases.release_trial(trial_id)
            return "done"
        kinds = trial_kinds(stages)
        for kind in kinds:  # in order: an eval is claimed only once its distill is ours or done
            h = stages[kind]
            if self._done(h):
                continue
            stage_claim = self.leases.claim_stage(h)
            if stage_claim.state == "completed":
                self.stage_status[h] = "completed"
            elif stage_claim.state == "held":  # another experiment's trial makes this very stage
                for mine in kinds[: kinds.index(kind)]:
                    self.leases.unclaim_stage(stages[mine])
                if h not in waited:
                    waited.add(h)
                    self._waiting(self.graph.stages[h], stage_claim.owner)
                return "wait"
        if all(self._done(stages[k]) for k in kinds):
            return "artifacts"
        return "tune"

    def _refresh_stages(self, hashes: list[str]) -> None:
        """Stages another submission completed since this one registered."""
        for h in hashes:
            if not self._done(h):
                info = self.records.get_stage(h)
                if info is not None and info.status == "completed" and self.store.exists(h):
                    self.stage_status[h] = "completed"

    def _record_from_artifacts(self, key: str) -> None:
        """A trial whose distill and eval artifacts exist (another experiment made them, or a killed
        submission published them before recording): record it from the store, no Ray involved."""
        stages = self.graph.trial_stages[key]
        facts = stage_runners.read_distill_facts(self.store, stages["distill"])
        final = stage_runners.read_eval_metrics(self.store, stages["eval"])
        final |= benchmark_finals(self.records, self.store, stages)
        aligned, align_rows = align_results(self.store, stages)
        final |= aligned
        rows = curve_rows(facts) + align_rows
        trial_id, run_id = self.trial_ids[key], self.run_id(key)
        self.records.log_metrics(trial_id, rows)
        self.records.log_final_metrics(trial_id, final)
        self.records.set_trial_status(trial_id, "completed")
        self.mirror_metrics(key, rows + final_rows(final, facts.get("steps") or 0))
        self.mirror_size(key)
        self.mirror.set_terminated(run_id, "FINISHED")
        self._count_trial_reused(key)
        self.progress("trial_done", {"key": key, "metrics": final, "reused": True})

    def _count_trial_reused(self, key: str) -> None:
        stages = self.graph.trial_stages[key]
        for k in trial_kinds(stages):
            if stages[k] not in self.shared_hashes:  # counted by the shared phase already
                self._count(self.result.stages_reused, self.graph.stages[stages[k]].kind)

    def _start_ray(self) -> None:
        """Start (or join) Ray. Meanwhile a thread opens MLflow and the child runs of the trials to come
        (seconds: MLflow's imports, its schema on first use, a few calls per run), which the driver needs
        only once results arrive: `_runs_ready` waits for it."""
        keys = [
            t.key
            for t in ([] if self.shared_only else self.loaded.trials)
            if t.key not in self.run_ids and not self._trial_done(t.key)
        ]
        if keys and self._opener is None:

            def open_runs() -> None:
                try:
                    for key in keys:
                        self.run_id(key)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the driver thread
                    self._opener_error = exc

            self._opener = threading.Thread(target=open_runs, name="ablate-mlflow-runs", daemon=True)
            self._opener.start()
        init_ray(self.address)
        self._check_trial_fits()

    def _tune_storage(self) -> Path:
        return Path(self.store.root if self.store.is_local else "~/.cache/ablate").expanduser() / ".tune"

    def _worker_resources(self) -> dict[str, Any]:
        """What a trial's processes get: CPUs and GPUs in total, workers, strategy, Ray Train's folder."""
        res = self.spec.resources.trial
        return {
            "cpu": res.cpu,
            "gpu": res.gpu,
            "workers": res.workers,
            "strategy": res.strategy,
            "train_storage": str(self._tune_storage() / "train"),
            "work_token": self.leases.owner.replace(":", "."),  # names its work folders (store_work_dir)
        }

    def _shared_resources(self) -> tuple[float, float]:
        """CPUs and GPUs of a one-process shared stage (resources.shared, else one worker's share)."""
        trial, shared = self.spec.resources.trial, self.spec.resources.shared
        cpu = shared.cpu if shared.cpu is not None else trial.cpu_per_worker
        gpu = shared.gpu if shared.gpu is not None else trial.gpu_per_worker
        return cpu, gpu

    def _check_trial_fits(self) -> None:
        """A trial that asks for more CPUs or GPUs than a local Ray has would wait for them forever:
        refuse it with the numbers instead (a cluster may autoscale, so it is trusted)."""
        import ray

        if self.address or os.environ.get("RAY_ADDRESS"):
            return
        have = ray.cluster_resources()
        res = self.spec.resources.trial
        shared = dict(zip(("cpu", "gpu"), self._shared_resources(), strict=True))
        for name, want in (("cpu", res.cpu), ("gpu", res.gpu)):
            got = float(have.get(name.upper(), 0))
            if want > got + 1e-9:
                raise RunError(
                    f"resources.trial.{name}: a trial asks for {want:g} {name.upper()}s "
                    f"({res.workers} worker(s)) but this machine's Ray has {got:g}; lower resources.trial.{name} "
                    "(and workers), or submit to a Ray cluster with --address"
                )
            if shared[name] > got + 1e-9:
                raise RunError(
                    f"resources.shared.{name}: a shared stage asks for {shared[name]:g} {name.upper()}s but this "
                    f"machine's Ray has {got:g}; lower resources.shared.{name}"
                )

    def _runs_ready(self) -> None:
        if self._opener is not None:
            self._opener.join()
            self._opener = None
        if self._opener_error is not None:
            error, self._opener_error = self._opener_error, None
            raise error

    def _tune(self, todo: list) -> None:
        self._start_ray()
        self._runs_ready()
        from ray import tune

        trial_res = self.spec.resources.trial
        for t in todo:
            self.run_id(t.key)  # every child run exists before the first result arrives
            # a trial stage done before the trial ran (its distill, say) is counted reused when it completes
        payloads = {
            t.key: {
                "stages": {k: self.graph.stages[h] for k, h in self.graph.trial_stages[t.key].items()},
                "store": self.store.url,
                "base_dir": self.base_dir,
                **self._worker_resources(),
            }
            for t in todo
        }
        # A trial of several workers holds no CPU or GPU itself (only the memory of a process that
        # waits): its Ray Train workers get the trial's CPUs and GPUs, split evenly, in a placement
        # group of their own. Ray refuses an empty request, hence the memory.
        held = (
            {"cpu": 0, "gpu": 0, "memory": DRIVER_MEMORY_BYTES}
            if trial_res.strategy != "single"
            else {"cpu": trial_res.cpu, "gpu": trial_res.gpu}
        )
        trainable = tune.with_resources(tune.with_parameters(ray_workers.tune_trial, payloads=payloads), held)
        scheduler = None
        if self.spec.resources.asha:
            from ray.tune.schedulers import ASHAScheduler

            steps = max(_trial_steps(t.resolved()) for t in todo)
            # Rungs on the distillation loss by optimizer step. stop_last_trials=False: a trial that
            # reaches the last step must still run its eval.
            scheduler = ASHAScheduler(
                metric="loss",
                mode="min",
                time_attr="step",
                max_t=steps,
                grace_period=max(1, steps // 8),
                stop_last_trials=False,
            )
        from ablate.run.tune_hooks import CancelStopper, RecordingCallback

        callback = RecordingCallback(self)
        tuner_name = f"{self.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        storage = self._tune_storage()
        tuner = tune.Tuner(
            trainable,
            param_space={"key": tune.grid_search([t.key for t in todo])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=self.spec.resources.max_concurrent,
                reuse_actors=True,
                scheduler=scheduler,
                trial_name_creator=lambda tr: tr.config["key"],
                trial_dirname_creator=lambda tr: tr.config["key"],
            ),
            run_config=tune.RunConfig(
                name=tuner_name,
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=self.spec.resources.max_failures),
                callbacks=[callback],
                stop=CancelStopper(lambda: self.records.cancel_requested(self.name)),
                verbose=0,
                log_to_file=False,
            ),
        )
        for name in ("ray.tune", "ray.train"):
            logging.getLogger(name).setLevel(logging.ERROR)  # no result files by design: we record results
        try:
            tuner.fit()
        finally:
            callback.flush_all()
            # Tune's experiment folder holds nothing we read (results are in the records): drop it.
            shutil.rmtree(storage / tuner_name, ignore_errors=True)
        for t in todo:  # anything Tune stopped (cancel) without a terminal callback
            info = self.records.get_trial(self.name, t.key)
            if info is not None and info.status in ("pending", "running"):
                self.records.set_trial_status(info.id, "cancelled", error="cancelled before it finished")
                self.cancel_stages(t.key, "cancelled before it finished")
                self.mirror.set_terminated(self.run_ids[t.key], "KILLED")

    def cancel_stages(self, key: str, reason: str) -> None:
        """The stages a stopped trial held (its distill, its eval) are cancelled, not left running."""
        stages = self.graph.trial_stages[key]
        for kind in trial_kinds(stages):
            h = stages[kind]
            if not self._done(h) and self.leases.unclaim_stage(h, "cancelled", reason):
                self.stage_status[h] = "cancelled"

    # ---------------------------------------------------------------- the whole submission
    def submit(self) -> SubmitResult:
        started = time.perf_counter()
        self.leases.start_heartbeat()
        self.register()
        # The reference evals and the teacher's benchmarks run beside the trials (ablate.run.shared_stages);
        # a search's scoring (shared_only) is all shared stages.
        failures = self.run_shared_stages(beside=not self.shared_only)
        if self.shared_only:
            self.result.wall_s = time.perf_counter() - started
            return self.result
        self.run_trials(failures)
        self.finish_shared_stages()
        self.mirror_references()
        summary = self.records.experiment_summary(self.name)
        keys = {t.key for t in self.loaded.trials}
        self.result.trials = [
            {
                "key": t.key,
                "status": t.status,
                "overrides": t.overrides,
                "metrics": t.final_metrics,
                "error": t.error,
                "duration_s": t.duration_s,
                **({"ran": self.ran[t.key]} if t.key in self.ran else {}),
            }
            for t in summary.trials
            if t.key in keys
        ]
        self.result.wall_s = time.perf_counter() - started
        if self._mirror is not None and not self.leases.others_active(self.experiment_id or 0):
            # something was written to MLflow: the parent run ends with the last submission working on it
            self.mirror.set_terminated(self.mirror.parent_run(), "FINISHED" if self.result.ok else "FAILED")
        self.records.log_event(
            f"submission finished in {self.result.wall_s:.1f}s: {sum(self.result.stages_run.values())} stages run, "
            f"{sum(self.result.stages_reused.values())} reused, {sum(self.result.stages_failed.values())} failed",
            experiment=self.name,
        )
        return self.result

    def close(self) -> None:
        """Release the records, after the MLflow opener thread (if one started) is done: a submission that
        stops early must not leave a thread writing to MLflow (and running its migrations) behind it."""
        if self._opener is not None:
            self._opener.join()
            self._opener = None
        try:
            self.leases.release_all()  # what it still holds (it stopped early) is free for others
        finally:
            self.records.close()


def _trial_steps(resolved: dict[str, Any]) -> int:
    """Optimizer steps of a trial's distillation (the trainer's own formula)."""
    d = resolved["distill"]
    return max(1, budget.steps(int(d["tokens"]), int(d["global_batch"]), int(resolved["data"]["seq_len"])))


def submit(
    loaded: LoadedSpec,
    address: str | None = None,
    progress: Progress | None = None,
    recompute_stages: Sequence[str] = (),
) -> SubmitResult:
    """Run `loaded` (see the module docstring); the records and MLflow hold the outcome.
    `recompute_stages` (kinds or hashes, see ablate.run.recompute) run again instead of being reused."""
    if loaded.search is not None:
        from ablate.run.search import Phase, submit_search

        return submit_search(loaded, Phase(address, progress, recompute_stages))
    if not loaded.trials:
        raise RunError(f"spec {loaded.path} has no trials to run")
    executor = Executor(loaded, address, progress, recompute_stages)
    try:
        return executor.submit()
    finally:
        executor.close()
