"""What each stage kind does, given its config and its parents' artifacts: one function per kind.

Runners are plain functions of (stage, store) so they run the same way in the driver, in a Ray task or
in a Ray Tune trial. Each writes its artifact through the store (atomic) and returns a small dict of
facts for the records. Layout of artifacts:

    teacher     teacher.json (model ref, corrected?) and, when corrected, model/ (HF checkpoint)
    importance  importance scores (whatever ablate.prune.importance saves) + importance.json
    prune       model/ (HF checkpoint of the pruned student) + prune.json
    distill     model/ (HF checkpoint of the trained student) + result.json (TrainResult)
    eval        metrics.json
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ablate.distill.parallel import Parallel
from ablate.errors import AblateError, RunError
from ablate.plan.stages import Stage
from ablate.run.artifacts import ArtifactStore
from ablate.secrets import redact_text

log = logging.getLogger(__name__)
StepCallback = Callable[[dict[str, Any]], None]


def resolve_ref(ref: str, base_dir: str | None) -> str:
    """A relative local path in a spec is relative to the spec's folder when it exists there."""
    if base_dir and not ref.startswith("builtin:") and not Path(ref).is_absolute():
        candidate = Path(base_dir) / ref
        if candidate.exists():
            return str(candidate)
    return ref


def load_teacher(store: ArtifactStore, teacher_hash: str):
    """The teacher a trial distils from: the corrected checkpoint if there is one, else the original."""
    from ablate.models.registry import load_model

    folder = store.local_path(teacher_hash)
    info = json.loads((folder / "teacher.json").read_text())
    model, tokenizer = load_model(str(folder / "model") if info["corrected"] else info["model_ref"])
    return model, tokenizer


def splits_for(config: dict[str, Any], tokenizer, base_dir: str | None):
    """The train / eval / calibration splits a stage's `data` and `calibration` settings describe."""
    from ablate.data.corpus import token_splits

    data, calibration = config["data"], config["calibration"]
    return token_splits(
        tokenizer,
        resolve_ref(data["corpus"], base_dir),
        data["seq_len"],
        data["eval_tokens"],
        calibration["samples"],
    )


def run_teacher(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
    parallel: Parallel | None = None,
    device: str | None = None,
    work_token: str | None = None,
) -> dict[str, Any]:
    """Record the teacher, corrected first when the spec asks. With `parallel` every worker of the
    trial shape fine-tunes it together (like a distillation) and rank 0 publishes it."""
    from ablate.distill.parallel import Parallel

    parallel = parallel or Parallel()
    ref = resolve_ref(stage.config["model"], base_dir)
    correction = stage.config["correction"]
    facts: dict[str, Any] = {"model_ref": ref, "corrected": bool(correction)}
    model = tokenizer = work = None
    if correction:
        from ablate.distill.correction import correct_teacher, correction_config
        from ablate.models.placement import place
        from ablate.models.registry import load_model

        model, tokenizer = load_model(ref)
        if not parallel.distributed:
            model = place(model, split=False)  # the trainer owns one device
        splits = splits_for(stage.config["data"], tokenizer, base_dir)
        config = correction_config(
            correction["tokens"],
            lr=correction["lr"],
            min_lr=correction["min_lr"],
            warmup_steps=correction["warmup_steps"],
            global_batch=correction["global_batch"],
            micro_batch=correction["micro_batch"],
            seq_len=stage.config["data"]["data"]["seq_len"],
            seed=0,
            device=device,
        )
        model.train()
        work = store_work_dir(store, stage.hash, work_token)
        result = correct_teacher(model, splits.train, config, work, on_step=on_step, parallel=parallel)
        facts["correction"] = {
            "steps": result.steps,
            "tokens": result.tokens,
            "final_loss": result.final_loss,
        }
    publish(store, stage.hash, parallel, {"teacher.json": facts}, model, tokenizer, ref, work)
    return facts


def publish(
    store: ArtifactStore,
    stage_hash: str,
    parallel: Parallel,
    records: dict[str, Any],
    model: Any = None,
    tokenizer: Any = None,
    reload_ref: str | None = None,
    work: Path | None = None,
) -> None:
    """Publish what a training stage made, from whichever of its workers this is: under FSDP the model is
    gathered (a collective) and loaded into a fresh copy of `reload_ref`; rank 0 writes the artifact
    (`model/` as a plain HF checkpoint, each of `records` as JSON) and then drops the work folder, whose
    resume checkpoint (weights + optimizer state, several times the model) a later submission no
    longer needs. Every worker returns once it is published."""
    from ablate.distill.parallel import full_model_state
    from ablate.models.registry import load_model

    if model is not None and parallel.strategy == "fsdp":
        state = full_model_state(model, parallel)
        if parallel.is_main:
            model, _ = load_model(reload_ref)
            model.load_state_dict(state)
    if parallel.is_main:
        with store.write(stage_hash) as out:
            if model is not None:
                model.to("cpu").save_pretrained(out / "model")
                tokenizer.save_pretrained(out / "model")
            for name, data in records.items():
                (out / name).write_text(json.dumps(data, indent=1))
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    parallel.barrier()


def run_importance(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    from ablate.data.corpus import batches
    from ablate.models.placement import place
    from ablate.prune.importance import baseline_importance, estimate_importance

    teacher_model, tokenizer = load_teacher(store, parents["teacher"].hash)
    teacher_model = place(teacher_model)  # on this stage's GPUs, split over several if there are
    settings = stage.config["importance"]
    width = settings["width"]
    started = time.perf_counter()
    if width["method"] == "activation":
        splits = splits_for(stage.config, tokenizer, base_dir)
        scores = estimate_importance(
            teacher_model,
            batches(splits.calibration, stage.config["calibration"]["batch_size"]),
            batch_agg=width["batch_agg"],
            seq_agg=width["seq_agg"],
            mlp_site=width["mlp_site"],
            depth_method=settings["depth"]["method"],
            contiguous_drops=[
                teacher_model.config.num_hidden_layers - layers
                for layers in stage.config.get("depth_targets", [])
                if layers < teacher_model.config.num_hidden_layers
            ],
        )
    else:
        scores = baseline_importance(teacher_model, width["method"], seed=0)
    facts = {"method": width["method"], "seconds": round(time.perf_counter() - started, 3)}
    with store.write(stage.hash) as out:
        scores.save(out / "scores")
        (out / "importance.json").write_text(json.dumps(facts, indent=1))
    return facts


def run_prune(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    from ablate.prune.apply import prune_model, save_pruned
    from ablate.prune.importance import ImportanceScores

    importance = parents["importance"]
    teacher_hash = importance.parents[0]
    model, tokenizer = load_teacher(store, teacher_hash)
    scores = ImportanceScores.load(store.local_path(importance.hash) / "scores")
    pruned = prune_model(model, scores, stage.config["target"])
    params = sum(p.numel() for p in pruned.parameters())
    with store.write(stage.hash) as out:
        save_pruned(pruned, tokenizer, out / "model")
        (out / "prune.json").write_text(
            json.dumps({"target": stage.config["target"], "params": params}, indent=1)
        )
    return {"params": params}


STALE_WORK_S = 600.0  # a work folder of another host untouched this long belongs to a dead run


def store_work_dir(store: ArtifactStore, stage_hash: str, token: str | None = None) -> Path:
    """Where this run of a stage keeps its checkpoints: a folder of its own, `<hash>.<token>` under the
    store's `.work/` (local stores) or the local cache (remote ones), so no other run of the stage can
    write to it or remove it when it publishes. `token` names the run (the submission's
    `host.pid.nonce`; the same for every worker of a trial); without one, this process's.

    A folder a dead run left (a killed submission) is taken over by renaming it, so the run resumes
    from its checkpoint; every worker of a trial may try, one rename wins and the others see its result.
    """
    base = Path(store.root) / ".work" if store.is_local else Path("~/.cache/ablate/work").expanduser()
    base.mkdir(parents=True, exist_ok=True)
    token = token or f"{socket.gethostname()}.{os.getpid()}.{os.urandom(6).hex()}"
    path = base / f"{stage_hash}.{token}"
    left = [p for p in base.glob(f"{stage_hash}*") if p != path and _left_by_dead_run(p, stage_hash)]
    for old in sorted(left, key=_newest_mtime, reverse=True):
        try:
            os.rename(old, path)  # onto a missing or empty folder only: never over a checkpoint
            log.info("resuming %s from the work folder %s", stage_hash, old.name)
            break
        except OSError:
            continue
    path.mkdir(parents=True, exist_ok=True)
    return path


def _newest_mtime(folder: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in folder.rglob("*")), default=folder.stat().st_mtime)
    except OSError:
        return 0.0


def _left_by_dead_run(folder: Path, stage_hash: str) -> bool:
    """Whether a work folder of the stage belongs to no live run: one named by a process of this host
    that is gone, one of another host untouched for STALE_WORK_S, or one of an older ablate (no token)."""
    if folder.name == stage_hash:
        return True
    if not folder.name.startswith(stage_hash + "."):
        return False  # another stage whose hash merely starts the same way
    parts = folder.name[len(stage_hash) + 1 :].rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[0] == socket.gethostname():
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return time.time() - _newest_mtime(folder) > STALE_WORK_S


def run_distill(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
    parallel: Parallel | None = None,
    device: str | None = None,
    work_token: str | None = None,
) -> dict[str, Any]:
    """Distil the pruned student. With `parallel` every worker of the trial calls this; they train
    together and rank 0 publishes the artifact (the others return the same facts)."""
    from ablate.distill.parallel import Parallel
    from ablate.distill.train import TrainConfig, train
    from ablate.models.registry import load_model

    parallel = parallel or Parallel()
    prune, teacher_stage = parents["prune"], parents["teacher"]
    distill = dict(stage.config["distill"])
    eval_every = distill.pop("eval_every", None)
    config = TrainConfig.from_mapping(
        distill, seq_len=stage.config["data"]["seq_len"], seed=stage.config["seed"], device=device
    )
    student, tokenizer = load_model(str(store.local_path(prune.hash) / "model"))
    teacher = None
    if config.needs_teacher or eval_every:
        teacher, _ = load_teacher(store, teacher_stage.hash)
    splits = splits_for(stage.config, tokenizer, base_dir)
    eval_fn = None
    if eval_every:  # periodic held-out metrics (eval_lm_loss, eval_kl_to_teacher, ...) in the step stream
        from ablate.evaluate import evaluate

        batch_size = stage.config["calibration"]["batch_size"]
        eval_fn = lambda model: evaluate(model, splits.eval, teacher=teacher, batch_size=batch_size)  # noqa: E731
    work = store_work_dir(store, stage.hash, work_token)
    student.train()
    result = train(
        student,
        teacher if config.needs_teacher else None,
        splits.train,
        config,
        work,
        on_step=on_step,
        eval_fn=eval_fn,
        eval_every=eval_every,
        parallel=parallel,
    )
    student.eval()
    record = result.to_dict()
    record["checkpoint"] = ""  # the work folder goes once the artifact is published
    record["workers"], record["strategy"] = parallel.world, parallel.strategy
    pruned = str(store.local_path(prune.hash) / "model")
    publish(store, stage.hash, parallel, {"result.json": record}, student, tokenizer, pruned, work)
    facts: dict[str, Any] = {
        "steps": result.steps,
        "tokens": result.tokens,
        "final_loss": result.final_loss,
        "resumed_from_step": result.resumed_from_step,
    }
    if result.resumed_from_step:
        # Steps up to the checkpoint were reported by the interrupted attempt, but those reported after
        # its last flush to the records (or after the checkpoint was written) never reached them: the
        # curves up to the resume point let the driver fill those gaps.
        n = result.resumed_from_step
        facts |= {
            "loss_curve": result.loss_curve[:n],
            "lr_curve": result.lr_curve[:n],
            "tokens_per_step": result.tokens_per_step,
        }
    return facts


def run_eval(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    from ablate.data.corpus import batches
    from ablate.evaluate import evaluate
    from ablate.models.placement import place
    from ablate.models.registry import load_model

    student, tokenizer = load_model(str(store.local_path(parents["distill"].hash) / "model"))
    teacher, _ = load_teacher(store, parents["teacher"].hash)
    student, teacher = place(student), place(teacher)
    splits = splits_for(stage.config, tokenizer, base_dir)
    with torch.inference_mode():
        metrics = evaluate(
            student, list(batches(splits.eval, stage.config["calibration"]["batch_size"])), teacher=teacher
        )
    metrics = {k: float(v) for k, v in metrics.items()}
    with store.write(stage.hash) as out:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


WORKER_STAGES = ("teacher", "distill")  # the stages that train, and so can run on several workers
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "teacher": run_teacher,
    "importance": run_importance,
    "prune": run_prune,
    "distill": run_distill,
    "eval": run_eval,
}


def run_stage(
    stage: Stage,
    store: ArtifactStore,
    parents: dict[str, Stage],
    base_dir: str | None = None,
    on_step: StepCallback | None = None,
    parallel: Parallel | None = None,
    device: str | None = None,
    work_token: str | None = None,
) -> dict[str, Any]:
    """Run one stage unless its artifact is already complete (then read back its facts). `parallel`,
    `device` and `work_token` (see store_work_dir) reach the stages whose work is split over workers
    (WORKER_STAGES: they train). A complete artifact is reused only once it verifies (ArtifactCorrupt
    otherwise, never a silent reuse)."""
    if store.exists(stage.hash):
        store.verify(stage.hash)
        return {"reused": True}
    if stage.kind not in RUNNERS:
        raise RunError(f"no runner for stage kind {stage.kind!r}")
    if stage.kind in WORKER_STAGES:
        return RUNNERS[stage.kind](stage, store, parents, base_dir, on_step, parallel, device, work_token)
    return RUNNERS[stage.kind](stage, store, parents, base_dir, on_step)


def stage_task(
    stage: Stage, parents: dict[str, Stage], store_url: str, base_dir: str, threads: int, *deps: Any
) -> dict[str, Any]:
    """Body of the Ray task of a shared stage (its parent tasks' results arrive as `deps`, which only
    orders them). Lives here, not in the executor, so a worker imports no database or MLflow code."""
    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    facts = run_stage(stage, ArtifactStore(store_url), parents, base_dir)
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
    store = ArtifactStore(config["store"])
    run_stage(
        config["stage"],
        store,
        config["parents"],
        config["base_dir"],
        None,
        parallel,
        device,
        resources.get("work_token"),
    )


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
_BOOKKEEPING = ("step", "steps")


def error_line(exc: BaseException) -> str:
    """An exception as one readable line: the innermost cause of a Ray/Tune wrapper, its type and the
    first line of its message (or the last line of a traceback text). An AblateError is the user's
    message: what it was raised from (a full disk's RuntimeError, a bad pickle) stays beneath it."""
    seen = set()
    while id(exc) not in seen and not isinstance(exc, AblateError):
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or getattr(exc, "__cause__", None)
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

    Reports, in order: `phase=start` (node, host, pid, time), one `phase=distill` per optimizer step
    (`step`, `steps`, `loss` at the top for schedulers, every numeric value under `m`), then
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


def trial_body(
    payload: dict[str, Any],
    report: Callable[[dict[str, Any]], None],
    parallel: Parallel | None = None,
    device: str | None = None,
) -> None:
    """The trial's distill and eval stages, told through `report` (see `tune_trial`). On several
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

    def on_step(metrics: dict[str, Any]) -> None:
        values = {
            k: float(v)
            for k, v in metrics.items()
            if k not in _BOOKKEEPING and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        report(
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
        facts = run_stage(
            distill,
            store,
            {"prune": stages["prune"], "teacher": teacher},
            base_dir,
            on_step,
            parallel,
            device,
            payload.get("work_token"),
        )
        if facts.get("reused"):  # published by an earlier attempt: the driver records its curves
            facts = read_distill_facts(store, distill.hash)
        kind = "eval"
        metrics: dict[str, float] = {}
        if parallel.is_main:  # the published student is a plain model: one process evaluates it
            metrics = run_stage(evaluate, store, {"distill": distill, "teacher": teacher}, base_dir)
            if metrics.get("reused"):
                metrics = read_eval_metrics(store, evaluate.hash)
    except AblateError as exc:
        report({"phase": PHASE_FAILED, "stage": kind, "error": error_line(exc), "finished": time.time()})
        return
    report({"phase": PHASE_DONE, "final": metrics, "facts": facts, "finished": time.time()})


def read_eval_metrics(store: ArtifactStore, eval_hash: str) -> dict[str, float]:
    """The metrics of a published eval artifact."""
    with store.open(eval_hash, "metrics.json", "r") as f:
        return {k: float(v) for k, v in json.load(f).items()}


def read_distill_facts(store: ArtifactStore, distill_hash: str) -> dict[str, Any]:
    """What a published distill artifact says about its run (scalars, and the loss and lr curves)."""
    with store.open(distill_hash, "result.json", "r") as f:
        result = json.load(f)
    return {
        "steps": result.get("steps"),
        "tokens": result.get("tokens"),
        "final_loss": result.get("final_loss"),
        "resumed_from_step": result.get("resumed_from_step"),
        "loss_curve": result.get("loss_curve") or [],
        "lr_curve": result.get("lr_curve") or [],
        "tokens_per_step": result.get("tokens_per_step"),
    }
