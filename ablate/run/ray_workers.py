"""The bodies of what Ray runs: a shared stage's task (one process, or a TorchTrainer of the trial's
workers), a Tune trial (its distill and eval stages, reported through `tune.report`) and its Ray Train
workers. They call the same runners as the driver (ablate.run.stage_runners) and import no database or
MLflow code: workers never write to the records."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch

from ablate.distill.parallel import Parallel
from ablate.errors import AblateError
from ablate.plan.stages import ALIGN, ALIGNED_BENCHMARK, BENCHMARK, DISTILL_TEACHER, Stage, trial_kinds
from ablate.run.artifacts import ArtifactStore
from ablate.run.stage_runners import StageContext, read_distill_facts, read_eval_metrics, run_stage
from ablate.run.step_reports import StepBatches
from ablate.secrets import redact_text


def stage_task(
    stage: Stage, parents: dict[str, Stage], store_url: str, base_dir: str, threads: int, *deps: Any
) -> dict[str, Any]:
    """Body of the Ray task of a shared stage (its parent tasks' results arrive as `deps`, which only
    orders them). Lives here, not in the executor, so a worker imports no database or MLflow code."""
    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    facts = run_stage(stage, StageContext(ArtifactStore(store_url), parents, base_dir, cpus=threads))
    return {**facts, "seconds": round(time.perf_counter() - started, 3)}


def stage_on_workers(
    stage: Stage,
    parents: dict[str, Stage],
    store_url: str,
    base_dir: str,
    resources: dict[str, Any],
    *deps: Any,
) -> dict[str, Any]:
    """Body of the Ray task of a shared stage that trains on the trial's workers (teacher correction
    under ddp or fsdp): it starts a TorchTrainer of those workers, which run `run_stage` together, and
    reads the facts back from the published artifact."""
    started = time.perf_counter()
    store = ArtifactStore(store_url)
    if store.exists(stage.hash):
        store.verify(stage.hash)
        return {"reused": True, "seconds": 0.0}
    config = {
        "stage": stage,
        "parents": parents,
        "store": store_url,
        "base_dir": base_dir,
        "resources": resources,
    }
    torch_trainer(stage_worker, config, resources, f"{stage.kind}-{stage.hash[:16]}").fit()
    with store.open(stage.hash, "teacher.json", "r") as f:
        facts = json.load(f)
    return {**facts, "seconds": round(time.perf_counter() - started, 3)}


def stage_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a shared stage."""
    resources = config["resources"]
    parallel, device = _worker_place(resources)
    torch.set_num_threads(max(1, int(float(resources["cpu"]) / int(resources["workers"]))))
    ctx = StageContext(
        ArtifactStore(config["store"]),
        config["parents"],
        config["base_dir"],
        parallel=parallel,
        device=device,
        work_token=resources.get("work_token"),
    )
    run_stage(config["stage"], ctx)


def torch_trainer(
    worker: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    resources: dict[str, Any],
    name: str,
    callbacks: list[Any] | None = None,
):
    """A Ray Train TorchTrainer of `resources["workers"]` workers sharing the trial's CPUs and GPUs."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers, cpu = int(resources["workers"]), float(resources["cpu"])
    gpu = float(resources.get("gpu") or 0)
    per_worker = {"CPU": cpu / workers} | ({"GPU": gpu / workers} if gpu else {})
    return TorchTrainer(
        worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpu), resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{name}-{int(time.time())}",
            storage_path=resources["train_storage"],
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=0),  # retries belong to Tune and Ray tasks
        ),
    )


def _worker_place(resources: dict[str, Any]) -> tuple[Parallel, str | None]:
    """This Ray Train worker's place in the group and its device."""
    import ray.train.torch

    parallel = Parallel.current(resources["strategy"])
    return parallel, (str(ray.train.torch.get_device()) if resources.get("gpu") else None)


# ---------------------------------------------------------------------------------------------------- trials
# Keys of what a trial reports through tune.report (read by the executor's RecordingCallback).
PHASE_START, PHASE_STEP, PHASE_DONE, PHASE_FAILED = "start", "distill", "done", "failed"
PHASE_STAGE = "stage"  # the trial moved on to its next (step-less) stages: `stage` says which
_BOOKKEEPING = ("step", "steps")


def error_line(exc: BaseException) -> str:
    """An exception as one readable line: the innermost cause of a Ray/Tune wrapper, its type and the
    first line of its message (or the last line of a traceback text). An AblateError is the user's
    message: what it was raised from (a full disk's RuntimeError, a bad pickle) stays beneath it."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        wrapped = getattr(exc, "cause", None)  # Ray's RayTaskError(X) is also an X: unwrap it first
        if isinstance(wrapped, BaseException):
            exc = wrapped
            continue
        if isinstance(exc, AblateError):
            break
        inner = getattr(exc, "__cause__", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = redact_text(str(exc).strip())  # errors are recorded, printed and logged to MLflow
    if "Traceback (most recent call last)" in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    first = text.splitlines()[0].strip() if text else ""
    name = type(exc).__name__
    if first.startswith(name + ":") or first.startswith(name + " "):
        return first
    return f"{name}: {first}" if first else name


def warm_imports() -> None:
    """Import what the stages use (transformers above all: seconds on a cold process)."""
    import ablate.data.corpus  # noqa: F401
    import ablate.distill.train  # noqa: F401
    import ablate.evaluate  # noqa: F401
    import ablate.models.registry  # noqa: F401


def tune_trial(config: dict[str, Any], payloads: dict[str, dict[str, Any]]) -> None:
    """Body of one Ray Tune trial: the trial's distill and eval stages, everything reported through
    `tune.report` (the driver records it; workers never write to the records or MLflow). A trial of
    several workers (strategy ddp or fsdp in its payload) runs them on Ray Train (`train_on_workers`).

    Reports, in order: `phase=start` (node, host, pid, time), `phase=distill` results (`batch`: one or
    more optimizer steps, each with `step`, `steps`, `loss` and every numeric value under `m`; the last
    step's at the top, for schedulers; ablate.run.step_reports), one
    `phase=stage` when it moves on to its eval and benchmarks (`stage`: what, for the progress), then
    `phase=done` (`final`: eval metrics, `facts`: steps, tokens, resumed_from_step) or `phase=failed`
    (`error`: one line, `stage`: its kind). A deterministic failure (an AblateError: divergence, a bad
    model, bad data) is reported and the function returns, so Ray Tune neither retries it nor tears
    down the reusable actor; anything else (a crash, lost node) raises and counts against
    `resources.max_failures`.
    """
    payload = payloads[config["key"]]
    if payload.get("strategy", "single") != "single":
        train_on_workers(config["key"], payload)
        return
    from ray import tune

    trial_body(payload, tune.report)


def train_on_workers(key: str, payload: dict[str, Any]) -> None:
    """Run the trial on `workers` Ray Train workers (a TorchTrainer started from the Tune trial, which
    itself holds no resources); rank 0's reports reach Tune, so the driver records them as usual."""
    from ray.tune.integration.ray_train import TuneReportCallback

    name = f"{key}-{payload['stages']['distill'].hash[:16]}"
    torch_trainer(train_worker, {"payload": payload}, payload, name, [TuneReportCallback()]).fit()


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a trial: the same trial body on every rank, with its place in the group."""
    import ray.train

    payload = config["payload"]
    parallel, device = _worker_place(payload)
    trial_body(payload, ray.train.report, parallel, device)


def after_eval_context(
    kind: str,
    stages: dict[str, Stage],
    store: ArtifactStore,
    base_dir: str,
    models: dict[str, Any],
    device: str | None,
    report: Callable[[dict[str, Any]], None] | None,
) -> StageContext:
    """The context of a trial's stage after its eval: a benchmark of its student (on the model eval already
    loaded), an alignment stage (its parent: the distilled student or the stage before), or a benchmark of
    its aligned model (the last alignment stage's)."""
    if kind.startswith(BENCHMARK):
        return StageContext(store, {"distill": stages["distill"]}, base_dir, models=models)
    align_keys = [k for k in trial_kinds(stages) if k.startswith(ALIGN)]
    if kind.startswith(ALIGNED_BENCHMARK):
        return StageContext(store, {"align": stages[align_keys[-1]]}, base_dir, models=models)
    i = align_keys.index(kind)
    parent = stages[align_keys[i - 1]] if i else stages["distill"]
    name = stages[kind].config["stage"]["name"]

    def on_step(m: dict[str, Any]) -> None:
        if report is not None:
            text = f"align {name} ({i + 1} of {len(align_keys)}) step {m['step']}/{m['steps']}, loss {m['loss']:.3f}"
            report({"phase": PHASE_STAGE, "stage": text})

    if report is not None:
        report({"phase": PHASE_STAGE, "stage": f"align {name} ({i + 1} of {len(align_keys)})"})
    return StageContext(store, {"parent": parent}, base_dir, on_step, device=device)


def trial_body(
    payload: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    parallel: Parallel | None = None,
    device: str | None = None,
) -> None:
    """The trial's distill, eval and benchmark stages, told through `report` (see `tune_trial`). On several
    workers every rank calls this and reports the same number of times (Ray Train's report is a
    barrier); only rank 0's reports reach the driver, and only rank 0 evaluates."""
    import ray

    from ablate.models.placement import gpu_count

    parallel = parallel or Parallel()
    if device is None and gpu_count():  # a one-process trial trains on the GPU Ray gave it
        device = "cuda:0"
    torch.set_num_threads(max(1, int(float(payload["cpu"]) / int(payload.get("workers", 1)))))
    warm_imports()  # once per (reused) actor; `started` below is when the trial's own work begins
    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - informational only
        node = ""
    report(
        {
            "phase": PHASE_START,
            "node": node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
    )
    store = ArtifactStore(payload["store"])
    stages: dict[str, Stage] = payload["stages"]
    distill, evaluate, teacher = stages["distill"], stages["eval"], stages["teacher"]
    base_dir = payload["base_dir"]

    # On Ray Train workers a report waits for the controller's poll: steps go out in batches there
    # (ablate.run.step_reports); a one-process trial reports every step.
    steps_out = StepBatches(report, parallel)

    def on_step(metrics: dict[str, Any]) -> None:
        values = {
            k: float(v)
            for k, v in metrics.items()
            if k not in _BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        steps_out.add(
            {
                "phase": PHASE_STEP,
                "step": int(metrics["step"]),
                "steps": int(metrics.get("steps", 0)),
                "loss": values.get("loss", float("nan")),
                "m": values,
            }
        )

    kind = "distill"
    try:
        parents = {"prune": stages["prune"], "teacher": stages.get(DISTILL_TEACHER, teacher)}
        ctx = StageContext(store, parents, base_dir, on_step, parallel, device, payload.get("work_token"))
        facts = run_stage(distill, ctx)
        if facts.get("reused"):  # published by an earlier attempt: the driver records its curves
            facts = read_distill_facts(store, distill.hash)
        kind = "eval"
        benchmarks = sum(k.startswith(BENCHMARK) for k in stages)
        aligned = sum(k.startswith(ALIGN) for k in stages)
        more = f" and {benchmarks} benchmark(s)" if benchmarks else ""
        more += f", then {aligned} alignment stage(s)" if aligned else ""
        report({"phase": PHASE_STAGE, "stage": f"evaluating{more}"})  # every rank: a barrier on Ray Train
        metrics: dict[str, float] = {}
        if parallel.is_main:  # the published student is a plain model: one process evaluates it
            ctx = StageContext(store, {"distill": distill, "teacher": teacher}, base_dir)
            metrics = run_stage(evaluate, ctx)
            if metrics.get("reused"):
                metrics = read_eval_metrics(store, evaluate.hash)
            # Progress of the alignment stages, as progress lines (not metrics): a one-process trial only,
            # since a report is a barrier that the other workers of a Ray Train trial would not join.
            tell = None if parallel.distributed else report
            for kind in trial_kinds(stages)[2:]:
                run_stage(stages[kind], after_eval_context(kind, stages, store, base_dir, ctx.models, device, tell))
    except AblateError as exc:
        steps_out.flush()  # the steps before a divergence are recorded
        report({"phase": PHASE_FAILED, "stage": kind, "error": error_line(exc), "finished": time.time()})
        return
    report({"phase": PHASE_DONE, "final": metrics, "facts": facts, "finished": time.time()})
