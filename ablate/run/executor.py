"""Run a spec: shared stages once as Ray tasks, each trial's distill + eval as a Ray Tune trial.

The SQL records are the source of truth; MLflow mirrors them. Both are written from the driver only
(parallel writers lock SQLite): trial workers send their metrics through `tune.report`, and the
driver's Tune callback records them. Ray Tune neither de-duplicates re-runs nor nests MLflow runs, so
ablate does both: finished stages and trials are skipped, an interrupted distillation resumes from its
checkpoint in the artifact store, and each trial keeps its one MLflow child run across submissions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.errors import AblateError, RunError
from ablate.plan.graph import StageGraph, build_graph
from ablate.plan.stages import Stage
from ablate.run.artifacts import ArtifactStore
from ablate.run.runners import run_stage
from ablate.spec.validate import LoadedSpec
from ablate.track.db import Records, connect
from ablate.track.mlflow import MlflowMirror

log = logging.getLogger(__name__)
SHARED_KINDS = ("teacher", "importance", "prune")
TRIAL_KINDS = ("distill", "eval")
OBJECT_STORE_BYTES = 256 * 1024**2  # trials exchange paths, not tensors: keep Ray's shared memory small
Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class SubmitResult:
    experiment: str
    stages_run: dict[str, int] = field(default_factory=dict)
    stages_reused: dict[str, int] = field(default_factory=dict)
    stages_failed: dict[str, int] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not sum(self.stages_failed.values()) and all(t["status"] == "completed" for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "ok": self.ok,
            "stages": {"run": self.stages_run, "reused": self.stages_reused, "failed": self.stages_failed},
            "trials": self.trials,
            "wall_s": round(self.wall_s, 3),
        }


def _absolute(path_or_url: str) -> str:
    return path_or_url if "://" in path_or_url else str(Path(path_or_url).expanduser().resolve())


def _absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db is relative to where `ablate` runs; pin it before Ray workers change dirs."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix) :]).resolve())
    return url


def init_ray(address: str | None) -> None:
    """Local Ray sized to this machine (dashboard off, object store capped), or a cluster by address."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES, **common
        )


def _stage_task(stage: Stage, parents: dict[str, Stage], store_url: str, base_dir: str, *deps: Any) -> dict:
    """Body of the Ray task of a shared stage (its parent tasks' results arrive as `deps`)."""
    import torch

    torch.set_num_threads(max(1, int(os.environ.get("ABLATE_STAGE_THREADS", "1"))))
    return run_stage(stage, ArtifactStore(store_url), parents, base_dir)


def _trial_body(config: dict, payloads: dict[str, dict]) -> None:
    """Body of one Ray Tune trial: the trial's distill and eval stages, metrics through tune.report."""
    import torch
    from ray import tune

    payload = payloads[config["key"]]
    torch.set_num_threads(max(1, int(payload["cpu"])))
    store = ArtifactStore(payload["store"])
    stages: dict[str, Stage] = payload["stages"]
    distill, evaluate = stages["distill"], stages["eval"]

    def on_step(metrics: dict[str, Any]) -> None:
        tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))} | {"phase": "distill"})

    facts = run_stage(
        distill, store, {"prune": stages["prune"], "teacher": stages["teacher"]}, payload["base_dir"], on_step
    )
    metrics = run_stage(
        evaluate, store, {"distill": distill, "teacher": stages["teacher"]}, payload["base_dir"]
    )
    if metrics.get("reused"):
        import json

        metrics = json.loads((store.local_path(evaluate.hash) / "metrics.json").read_text())
    final = {f"final_{k}": v for k, v in metrics.items()}
    extra = {k: v for k, v in facts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**final, **{f"distill_{k}": v for k, v in extra.items()}, "phase": "done"})


class Executor:
    """One submission of one spec."""

    def __init__(self, loaded: LoadedSpec, address: str | None = None, progress: Progress | None = None):
        self.loaded = loaded
        self.spec = loaded.spec
        self.name = loaded.spec.name
        self.address = address
        self.progress = progress or (lambda event, data: None)
        self.graph: StageGraph = build_graph(loaded.trials)
        self.base_dir = str(loaded.path.parent.resolve())
        self.store = ArtifactStore(_absolute(self.spec.tracking.artifacts))
        self.records: Records = connect(_absolute_sqlite(self.spec.tracking.db))
        self.mirror = MlflowMirror(_absolute_sqlite(self.spec.tracking.mlflow), self.name)
        self.trial_ids: dict[str, int] = {}
        self.run_ids: dict[str, str] = {}
        self.result = SubmitResult(self.name)

    # ---------------------------------------------------------------- records
    def register(self) -> None:
        spec_text = self.loaded.path.read_text()
        self.records.upsert_experiment(
            self.name, spec_text, hashlib.sha256(spec_text.encode()).hexdigest()[:16]
        )
        self.records.recover_interrupted(self.name)
        for stage in self.graph.stages.values():
            self.records.upsert_stage(stage.hash, stage.kind, stage.config, stage.parents)
            status = self.records.stage_status(stage.hash)
            present = self.store.exists(stage.hash)
            if status == "completed" and not present:
                self.records.reset_stage(stage.hash)  # its artifact vanished: run it again
            elif present and status != "completed":
                self.records.mark_stage_completed(stage.hash, self.store.path_for(stage.hash))
        parent = self.mirror.parent_run()
        self.records.set_experiment_mlflow(self.name, self.mirror.experiment_id, parent)
        for trial in self.loaded.trials:
            stages = self.graph.trial_stages[trial.key]
            info = self.records.upsert_trial(
                self.name, trial.key, trial.overrides, config=trial.resolved(), stages=list(stages.values())
            )
            self.trial_ids[trial.key] = info.id
            params = {**{k: str(v) for k, v in trial.overrides.items()}, "params": None}
            params.pop("params")
            tags = {f"ablate.stage.{kind}": h for kind, h in stages.items()} | {"ablate.target": trial.target}
            run_id = self.mirror.child_run(trial.key, params=params, tags=tags)
            self.run_ids[trial.key] = run_id
            if info.mlflow_run_id != run_id:
                self.records.set_trial_mlflow_run(info.id, run_id)

    def _count(self, bucket: dict[str, int], kind: str) -> None:
        bucket[kind] = bucket.get(kind, 0) + 1

    # ---------------------------------------------------------------- shared stages
    def run_shared_stages(self) -> dict[str, str]:
        """Teacher, importance and prune stages as Ray tasks in dependency order; returns failures."""
        trial_res = self.spec.resources.trial
        todo = [
            s
            for s in self.graph.stages.values()
            if s.kind in SHARED_KINDS and self.records.stage_status(s.hash) != "completed"
        ]
        if todo:
            init_ray(self.address)
        import ray

        remote = ray.remote(_stage_task)
        refs: dict[str, Any] = {}
        pending: dict[Any, Stage] = {}
        failures: dict[str, str] = {}
        for stage in self.graph.stages.values():  # insertion order is a topological order
            if stage.kind not in SHARED_KINDS:
                continue
            if self.records.stage_status(stage.hash) == "completed":
                self._count(self.result.stages_reused, stage.kind)
                continue
            parents = {self.graph.stages[p].kind: self.graph.stages[p] for p in stage.parents}
            deps = [refs[p] for p in stage.parents if p in refs]
            ref = remote.options(num_cpus=trial_res.cpu, num_gpus=trial_res.gpu, max_retries=0).remote(
                stage, parents, self.store.url, self.base_dir, *deps
            )
            refs[stage.hash] = ref
            pending[ref] = stage
            self.records.mark_stage_running(stage.hash)
            self.progress("stage_start", {"kind": stage.kind, "hash": stage.hash})
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            stage = pending.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a stage failure is recorded, not raised
                message = _error_text(exc)
                failures[stage.hash] = message
                self.records.mark_stage_failed(stage.hash, message)
                self._count(self.result.stages_failed, stage.kind)
                self.progress("stage_failed", {"kind": stage.kind, "hash": stage.hash, "error": message})
                continue
            self.records.mark_stage_completed(stage.hash, self.store.path_for(stage.hash))
            self._count(self.result.stages_run, stage.kind)
            self.progress("stage_done", {"kind": stage.kind, "hash": stage.hash})
        return failures

    # ---------------------------------------------------------------- trials
    def run_trials(self, failures: dict[str, str]) -> None:
        from ray import tune

        todo = []
        for trial in self.loaded.trials:
            stages = self.graph.trial_stages[trial.key]
            info = self.records.get_trial(self.name, trial.key)
            if (
                info is not None
                and info.status == "completed"
                and all(self.store.exists(stages[k]) for k in TRIAL_KINDS)
            ):
                for kind in TRIAL_KINDS:
                    self._count(self.result.stages_reused, kind)
                continue
            broken = [h for h in stages.values() if h in failures]
            if broken:
                error = f"upstream stage {broken[0]} failed: {failures[broken[0]]}"
                self.records.set_trial_status(self.trial_ids[trial.key], "failed", error=error)
                self.mirror.set_terminated(self.run_ids[trial.key], "FAILED")
                continue
            todo.append(trial)
        if not todo:
            return
        init_ray(self.address)
        trial_res = self.spec.resources.trial
        payloads = {
            t.key: {
                "stages": {k: self.graph.stages[h] for k, h in self.graph.trial_stages[t.key].items()},
                "store": self.store.url,
                "base_dir": self.base_dir,
                "cpu": trial_res.cpu,
            }
            for t in todo
        }
        for t in todo:
            for kind in TRIAL_KINDS:
                h = self.graph.trial_stages[t.key][kind]
                if self.store.exists(h):
                    self._count(self.result.stages_reused, kind)
        trainable = tune.with_resources(
            tune.with_parameters(_trial_body, payloads=payloads), {"cpu": trial_res.cpu, "gpu": trial_res.gpu}
        )
        scheduler = None
        if self.spec.resources.asha:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(metric="loss", mode="min", time_attr="step", grace_period=max(1, 10))
        callback = RecordingCallback(self)
        storage = Path(self.store.root if self.store.is_local else "~/.cache/ablate").expanduser() / ".tune"
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
                name=f"{self.name}-{int(time.time())}",
                storage_path=str(storage),
                failure_config=tune.FailureConfig(max_failures=self.spec.resources.max_failures),
                callbacks=[callback],
                stop=CancelStopper(self.records, self.name),
                verbose=0,
            ),
        )
        logging.getLogger("ray.tune").setLevel(logging.ERROR)  # no result.json by design: we record results
        tuner.fit()
        callback.flush_all()
        for t in todo:  # anything Tune stopped (cancel) without a terminal callback
            info = self.records.get_trial(self.name, t.key)
            if info is not None and info.status in ("pending", "running"):
                self.records.set_trial_status(info.id, "cancelled", error="cancelled before it finished")

    def submit(self) -> SubmitResult:
        started = time.perf_counter()
        self.register()
        failures = self.run_shared_stages()
        self.run_trials(failures)
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
            }
            for t in summary.trials
            if t.key in keys
        ]
        self.result.wall_s = time.perf_counter() - started
        self.records.log_event(
            f"submission finished in {self.result.wall_s:.1f}s: {sum(self.result.stages_run.values())} stages run, "
            f"{sum(self.result.stages_reused.values())} reused, {sum(self.result.stages_failed.values())} failed",
            experiment=self.name,
        )
        return self.result


def _error_text(exc: BaseException) -> str:
    """The innermost meaningful message of a (possibly Ray-wrapped) exception, one line first."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, AblateError):
        return f"{type(cause).__name__}: {cause}"
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


try:
    from ray.tune import Callback as _TuneCallback
    from ray.tune import Stopper as _TuneStopper
except ImportError:  # pragma: no cover - ray is a hard dependency
    _TuneCallback = object  # type: ignore[assignment,misc]
    _TuneStopper = object  # type: ignore[assignment,misc]


_LIVE: dict[int, Any] = {}


class _DriverOnly:
    """Tune pickles its callbacks and stoppers with the experiment state; ours hold the driver's
    database and MLflow handles, which stay in this process: pickling keeps only a registry id."""

    def __getstate__(self) -> dict:
        _LIVE[id(self)] = self.__dict__
        return {"_live_id": id(self)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_LIVE.get(state["_live_id"], {}))


class RecordingCallback(_DriverOnly, _TuneCallback):
    """Runs in the driver: turns Tune's trial events into SQL records and MLflow metrics.

    Per-step metrics are buffered and written in batches (one SQL insert and one MLflow log_batch per
    flush), so recording costs a few calls per trial rather than one per value.
    """

    FLUSH_S = 2.0

    def __init__(self, executor: Executor):
        self.ex = executor
        self.buffer: dict[str, list[tuple[str, int, float]]] = {}
        self.last_flush = time.monotonic()
        self.lock = threading.Lock()

    def _key(self, trial) -> str:
        return trial.config["key"]

    def on_trial_start(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.ex.records.set_trial_status(self.ex.trial_ids[key], "running")
        self.ex.mirror.set_status(self.ex.run_ids[key], "RUNNING")
        self.ex.progress("trial_start", {"key": key})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self._key(trial)
        if result.get("phase") == "distill" and "step" in result:
            step = int(result["step"])
            rows = self.buffer.setdefault(key, [])
            for name in ("loss", "lr", "tokens", "grad_norm", "loss_kld", "loss_ce", "loss_intermediate"):
                if name in result:
                    rows.append((name, step, float(result[name])))
            for name, value in result.items():
                if name.startswith("eval_") and isinstance(value, (int, float)):
                    rows.append((name, step, float(value)))
            self.ex.progress(
                "trial_step",
                {"key": key, "step": step, "steps": result.get("steps"), "loss": result.get("loss")},
            )
        if time.monotonic() - self.last_flush > self.FLUSH_S:
            self.flush_all()

    def flush(self, key: str) -> None:
        rows = self.buffer.pop(key, [])
        if rows:
            self.ex.records.log_metrics(self.ex.trial_ids[key], rows)
            self.ex.mirror.log_step_metrics(self.ex.run_ids[key], rows)

    def flush_all(self) -> None:
        for key in list(self.buffer):
            self.flush(key)
        self.last_flush = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.flush(key)
        last = trial.last_result or {}
        final = {k.removeprefix("final_"): float(v) for k, v in last.items() if k.startswith("final_")}
        trial_id, run_id = self.ex.trial_ids[key], self.ex.run_ids[key]
        stages = self.ex.graph.trial_stages[key]
        if last.get("phase") != "done" or not final:
            self.ex.records.set_trial_status(trial_id, "cancelled", error="stopped before it finished")
            self.ex.mirror.set_terminated(run_id, "KILLED")
            return
        for kind in TRIAL_KINDS:
            if self.ex.records.stage_status(stages[kind]) != "completed":
                self.ex.records.mark_stage_completed(stages[kind], self.ex.store.path_for(stages[kind]))
                self.ex._count(self.ex.result.stages_run, kind)
        self.ex.records.log_final_metrics(trial_id, final)
        self.ex.mirror.log_final_metrics(run_id, final)
        self.ex.records.set_trial_status(trial_id, "completed")
        self.ex.mirror.set_terminated(run_id, "FINISHED")
        self.ex.progress("trial_done", {"key": key, "metrics": final})

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.flush(key)
        error = _tune_error(trial)
        trial_id, run_id = self.ex.trial_ids[key], self.ex.run_ids[key]
        for kind in TRIAL_KINDS:
            h = self.ex.graph.trial_stages[key][kind]
            if not self.ex.store.exists(h):
                self.ex.records.mark_stage_failed(h, error)
                self.ex._count(self.ex.result.stages_failed, kind)
                break
        self.ex.records.set_trial_status(trial_id, "failed", error=error)
        self.ex.records.log_event(
            f"trial {key} failed: {error}", level="error", experiment=self.ex.name, trial_id=trial_id
        )
        self.ex.mirror.set_terminated(run_id, "FAILED")
        self.ex.progress("trial_failed", {"key": key, "error": error})


def _tune_error(trial) -> str:
    """The trial's exception as one readable line (Tune keeps the full traceback in error_file)."""
    try:
        exc = trial.get_error()
    except Exception:  # noqa: BLE001
        exc = None
    if exc is not None:
        return _error_text(exc)
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().strip().splitlines() if line.strip()]
        return lines[-1] if lines else "failed"
    return "failed (no error recorded by Ray Tune)"


class CancelStopper(_DriverOnly, _TuneStopper):
    """Stops every trial once `ablate cancel NAME` has asked for it (polled every few seconds)."""

    POLL_S = 2.0

    def __init__(self, records: Records, name: str):
        self.records, self.name = records, name
        self.last, self.cancelled = 0.0, False

    def __call__(self, trial_id, result) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last > self.POLL_S:
            self.last = now
            self.cancelled = self.records.cancel_requested(self.name)
        return self.cancelled


def submit(loaded: LoadedSpec, address: str | None = None, progress: Progress | None = None) -> SubmitResult:
    if not loaded.trials:
        raise RunError(f"spec {loaded.path} has no trials to run")
    return Executor(loaded, address, progress).submit()
