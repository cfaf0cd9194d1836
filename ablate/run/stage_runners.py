"""What each stage kind does, given its config and its parents' artifacts: one function per kind.

Runners are plain functions of (stage, StageContext) so they run the same way in the driver (`ablate
build`, ablate.run.in_process), in a Ray task or in a Ray Tune trial (ablate.run.ray_workers). The
engine steps they are made of (splits, importance, evaluation) also serve the single-stage commands
(`ablate prune`, `eval`, `distill`, `correct`). Each runner writes its artifact through the store
(atomic) and returns a small dict of facts for the records. Layout of artifacts:

    tokenize    tokenize.json (where the source's token shards are in the ablate cache, tokens, documents)
    teacher     teacher.json (model ref, corrected?) and, when corrected, model/ (HF checkpoint)
    importance  importance scores (whatever ablate.prune.importance saves) + importance.json
    prune       model/ (HF checkpoint of the pruned student) + prune.json
    distill     model/ (HF checkpoint of the trained student) + result.json (TrainResult)
    eval        metrics.json (a trial's student, or a reference eval's pruned student or teacher)
    benchmark   benchmark.json (lm-eval metrics with standard errors, per task)
    align       model/ (HF checkpoint with its chat template) + align.json (ablate.run.align_stage)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.distill.parallel import Parallel
from ablate.errors import RunError
from ablate.plan.stages import Stage
from ablate.run.artifacts import ArtifactStore
from ablate.run.workdirs import store_work_dir
from ablate.spec.schema import MEMORY_FIELDS

StepCallback = Callable[[dict[str, Any]], None]
View = Callable[[Iterable[Any]], Iterable[Any]]


def _as_is(items: Iterable[Any]) -> Iterable[Any]:
    return items


@dataclass(frozen=True)
class StageContext:
    """Everything a runner needs besides its stage: where artifacts live, its parents by kind, the spec's
    folder (relative refs), the step callback, and for the stages that train (WORKER_STAGES) this
    worker's place in the trial, its device and the run's work token (see store_work_dir)."""

    store: ArtifactStore
    parents: dict[str, Stage] = field(default_factory=dict)
    base_dir: str | None = None
    on_step: StepCallback | None = None
    parallel: Parallel = field(default_factory=Parallel)
    device: str | None = None
    work_token: str | None = None
    cpus: int = 1
    """CPUs the stage holds: a tokenize stage encodes with that many processes."""
    models: dict[str, Any] = field(default_factory=dict)
    """(model, tokenizer) already loaded in this process, by the hash of the stage that made them: the
    trial's eval and benchmark stages share one load of its student and teacher."""

    def model_of(self, stage: Stage) -> tuple[Any, Any]:
        """The model a teacher, prune or distill stage made, loaded once per process and placed on its
        devices."""
        if stage.hash not in self.models:
            from ablate.models.placement import place
            from ablate.models.registry import load_model

            if stage.kind == "teacher":
                model, tokenizer = load_teacher(self.store, stage.hash)
            else:
                model, tokenizer = load_model(str(self.store.local_path(stage.hash) / "model"))
            self.models[stage.hash] = (place(model), tokenizer)
        return self.models[stage.hash]


def resolve_ref(ref: str, base_dir: str | None) -> str:
    """A relative local path in a spec is relative to the spec's folder when it exists there."""
    if base_dir and not ref.startswith("builtin:") and not Path(ref).is_absolute():
        candidate = Path(base_dir) / ref
        if candidate.exists():
            return str(candidate)
    return ref


def load_for_rank(ref: str, parallel: Parallel | None = None):
    """(model, tokenizer) of `ref`. Under FSDP only rank 0 reads the weights: the other workers build the
    model on the meta device and receive their shards of rank 0's weights when the trainer shards it,
    so no worker but one ever holds a whole copy (ablate.distill.parallel)."""
    from ablate.models.registry import load_config, load_model, load_tokenizer

    if parallel is not None and parallel.strategy == "fsdp" and parallel.world > 1 and not parallel.is_main:
        import torch

        from ablate.distill.models import meta_copy

        return meta_copy(load_config(ref), torch.float32), load_tokenizer(ref)  # load_model's dtype
    return load_model(ref)


def load_teacher(store: ArtifactStore, teacher_hash: str, parallel: Parallel | None = None):
    """The model a stage prunes or distils from: a teacher stage's (the corrected checkpoint if there is
    one, else the original), or a distill stage's student (a round or chain link: pruned from, or taught
    by, an earlier target's student). On the meta device on FSDP workers other than rank 0 (load_for_rank)."""
    folder = store.local_path(teacher_hash)
    if not (folder / "teacher.json").exists():  # a distilled student
        return load_for_rank(str(folder / "model"), parallel)
    info = json.loads((folder / "teacher.json").read_text())
    return load_for_rank(str(folder / "model") if info["corrected"] else info["model_ref"], parallel)


def splits_for(config: Mapping[str, Any], tokenizer, base_dir: str | None = None):
    """The train / eval / calibration splits a stage's `data` and `calibration` settings describe: read
    from the sources' token shards (tokenized once, into the ablate cache, on first use), the train
    split memory-mapped (ablate.data.prepare)."""
    from ablate.data.prepare import prepare_splits

    return prepare_splits(tokenizer, config["data"], base_dir, config["calibration"]["samples"])


def data_config(
    corpus: str, seq_len: int, eval_tokens: int, samples: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """The `data` and `calibration` settings of a stage, for a command that runs an engine step
    without a spec (`ablate prune`, `eval`, `distill`, `correct`)."""
    return {
        "data": {"corpus": corpus, "seq_len": seq_len, "eval_tokens": eval_tokens},
        "calibration": {"samples": samples, "batch_size": batch_size},
    }


def contiguous_drops(n_layers: int, layer_targets: Iterable[int]) -> list[int]:
    """How many contiguous layers each depth target drops from a model of `n_layers` (none for a target
    that keeps them all): the block sizes `contiguous` depth importance scores."""
    return [n_layers - layers for layers in layer_targets if layers < n_layers]


def score_importance(
    model, tokenizer, config: Mapping[str, Any], base_dir: str | None = None, view: View = _as_is
):
    """The importance scores an importance stage's settings ask for (`importance`, `data`,
    `calibration`, `depth_targets`; `importance.seed` seeds the random baseline, 0 by default),
    refused when not finite. `view` wraps the calibration batches (a progress bar)."""
    from ablate.data.corpus import batches
    from ablate.prune.importance import compute_importance, finite_or_raise

    settings = config["importance"]
    width = settings["width"]
    calibration = None
    if width["method"] == "activation":
        splits = splits_for(config, tokenizer, base_dir)
        calibration = view(batches(splits.calibration, config["calibration"]["batch_size"]))
    scores = compute_importance(
        model,
        width["method"],
        calibration,
        seed=settings.get("seed", 0),
        batch_agg=width["batch_agg"],
        seq_agg=width["seq_agg"],
        mlp_site=width["mlp_site"],
        # Absent at their defaults (schema._LATE_FIELDS), so a stage written before they existed reads as is.
        head_aggregation=width.get("head_aggregation", "token_l2"),
        depth_method=settings["depth"]["method"],
        contiguous_metric=settings["depth"].get("contiguous_metric", "lm_loss"),
        contiguous_drops=contiguous_drops(model.config.num_hidden_layers, config.get("depth_targets", [])),
    )
    return finite_or_raise(scores)


def eval_metrics(model, eval_ids, batch_size: int, teacher=None, view: View = _as_is) -> dict[str, Any]:
    """Held-out metrics of `model` on the eval split (KL and agreement with `teacher` when given);
    `view` wraps the batches (a progress bar)."""
    from ablate.data.corpus import batches
    from ablate.evaluate import evaluate

    return evaluate(model, view(batches(eval_ids, batch_size)), teacher=teacher, batch_size=batch_size)


def publish(
    ctx: StageContext,
    stage_hash: str,
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

    parallel = ctx.parallel
    if model is not None and parallel.strategy == "fsdp":
        state = full_model_state(model, parallel)
        if parallel.is_main:
            model, _ = load_model(reload_ref)
            model.load_state_dict(state)
    if parallel.is_main:
        with ctx.store.write(stage_hash) as out:
            if model is not None:
                model.to("cpu").save_pretrained(out / "model")
                tokenizer.save_pretrained(out / "model")
            for name, data in records.items():
                (out / name).write_text(json.dumps(data, indent=1))
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    parallel.barrier()


def run_tokenize(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Tokenize one data source with the teacher's tokenizer into the ablate cache's shards (a killed run
    resumes after its last finished shard; shards another run made are found, not remade). The artifact
    records where they are and what they hold; every stage reading the data opens them by content."""
    from ablate.data.prepare import tokenize_all
    from ablate.data.shards import read_index
    from ablate.data.sources import Source, resolve_path
    from ablate.models.registry import load_tokenizer

    config = stage.config
    tokenizer = load_tokenizer(resolve_ref(config["tokenizer"], ctx.base_dir))
    source = Source(resolve_path(config["source"], ctx.base_dir), 1.0, config["text_field"])
    started = time.perf_counter()
    (folder,) = tokenize_all(tokenizer, [source], int(config["seq_len"]), workers=max(1, ctx.cpus))
    index = read_index(folder) or {}
    facts = {
        "source": source.path,
        "shards_folder": str(folder),
        "source_fingerprint": index.get("source_fingerprint"),
        "tokens": index.get("total_tokens"),
        "documents": index.get("documents"),
        "shards": len(index.get("shards", [])),
        "seconds": round(time.perf_counter() - started, 3),
    }
    with ctx.store.write(stage.hash) as out:
        (out / "tokenize.json").write_text(json.dumps(facts, indent=1))
    return facts


def forget_shards(store: ArtifactStore, tokenize_hash: str) -> None:
    """Delete the cached shards a tokenize artifact points at (for --recompute), never a folder of shards
    the spec names itself: only folders inside the ablate cache's shard root go."""
    from ablate.data.prepare import shards_root

    if not store.exists(tokenize_hash):
        return
    with store.open(tokenize_hash, "tokenize.json", "r") as f:
        folder = Path(json.load(f)["shards_folder"])
    if folder.parent.resolve() == shards_root().resolve():
        shutil.rmtree(folder, ignore_errors=True)


def run_teacher(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Record the teacher, corrected first when the spec asks. With several workers every worker of the
    trial shape fine-tunes it together (like a distillation) and rank 0 publishes it."""
    ref = resolve_ref(stage.config["model"], ctx.base_dir)
    correction = stage.config["correction"]
    facts: dict[str, Any] = {"model_ref": ref, "corrected": bool(correction)}
    model = tokenizer = work = None
    if correction:
        from ablate.distill.correction import correct_teacher, correction_config
        from ablate.models.placement import place

        model, tokenizer = load_for_rank(ref, ctx.parallel)
        if not ctx.parallel.distributed:
            model = place(model, split=False)  # the trainer owns one device
        splits = splits_for(stage.config["data"], tokenizer, ctx.base_dir)
        config = correction_config(
            correction["tokens"],
            lr=correction["lr"],
            min_lr=correction["min_lr"],
            warmup_steps=correction["warmup_steps"],
            global_batch=correction["global_batch"],
            micro_batch=correction["micro_batch"],
            seq_len=stage.config["data"]["data"]["seq_len"],
            seed=0,
            device=ctx.device,
            **{k: correction[k] for k in MEMORY_FIELDS if correction.get(k) is not None},
        )
        model.train()
        work = store_work_dir(ctx.store, stage.hash, ctx.work_token)
        result = correct_teacher(
            model, splits.train, config, work, on_step=ctx.on_step, parallel=ctx.parallel
        )
        facts["correction"] = {
            "steps": result.steps,
            "tokens": result.tokens,
            "final_loss": result.final_loss,
        }
    publish(ctx, stage.hash, {"teacher.json": facts}, model, tokenizer, ref, work)
    return facts


def run_importance(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    from ablate.models.placement import place

    (source,) = ctx.parents.values()  # the teacher, or an earlier link's distilled student
    teacher_model, tokenizer = load_teacher(ctx.store, source.hash)
    teacher_model = place(teacher_model)  # on this stage's GPUs, split over several if there are
    started = time.perf_counter()
    scores = score_importance(teacher_model, tokenizer, stage.config, ctx.base_dir)
    method = stage.config["importance"]["width"]["method"]
    facts = {"method": method, "seconds": round(time.perf_counter() - started, 3)}
    with ctx.store.write(stage.hash) as out:
        scores.save(out / "scores")
        (out / "importance.json").write_text(json.dumps(facts, indent=1))
    return facts


def run_prune(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    from ablate.prune.apply import prune_model, save_pruned
    from ablate.prune.importance import ImportanceScores

    importance = ctx.parents["importance"]
    model, tokenizer = load_teacher(ctx.store, importance.parents[0])
    scores = ImportanceScores.load(ctx.store.local_path(importance.hash) / "scores")
    pruned = prune_model(model, scores, stage.config["target"])
    params = sum(p.numel() for p in pruned.parameters())
    with ctx.store.write(stage.hash) as out:
        save_pruned(pruned, tokenizer, out / "model")
        (out / "prune.json").write_text(
            json.dumps({"target": stage.config["target"], "params": params}, indent=1)
        )
    return {"params": params}


def run_distill(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Distil the pruned student. On several workers every worker of the trial calls this; they train
    together and rank 0 publishes the artifact (the others return the same facts)."""
    from ablate.distill.config import eval_interval
    from ablate.distill.train import TrainConfig, train

    parallel = ctx.parallel
    prune = ctx.parents["prune"]
    teacher_stage = ctx.parents.get("teacher") or ctx.parents["distill"]  # a chain link's: the last student
    distill = dict(stage.config["distill"])
    asked = distill.pop("eval_every", None)
    config = TrainConfig.from_mapping(
        distill, seq_len=stage.config["data"]["seq_len"], seed=stage.config["seed"], device=ctx.device
    )
    eval_every = eval_interval(asked, config.steps)  # None (the default): a few over the run
    # The evaluations measure KL to the teacher when it is in memory. Automatic ones load it only where
    # training does (the plan's memory estimate counts no teacher for ce/scratch): such trials' curves
    # have the data metrics only; an explicit eval_every loads it for them too.
    pruned = str(ctx.store.local_path(prune.hash) / "model")
    student, tokenizer = load_for_rank(pruned, parallel)
    teacher = None
    if config.needs_teacher or (eval_every and asked is not None):
        teacher, _ = load_teacher(ctx.store, teacher_stage.hash, parallel)
    splits = splits_for(stage.config, tokenizer, ctx.base_dir)
    eval_fn = None
    if eval_every:  # periodic held-out metrics (eval_lm_loss, eval_kl_to_teacher, ...) in the step stream
        batch_size = stage.config["calibration"]["batch_size"]
        eval_fn = lambda model: eval_metrics(model, splits.eval, batch_size, teacher)  # noqa: E731
    work = store_work_dir(ctx.store, stage.hash, ctx.work_token)
    student.train()
    result = train(
        student,
        teacher if config.needs_teacher else None,
        splits.train,
        config,
        work,
        on_step=ctx.on_step,
        eval_fn=eval_fn,
        eval_every=eval_every,
        parallel=parallel,
    )
    student.eval()
    record = result.to_dict()
    record["checkpoint"] = ""  # the work folder goes once the artifact is published
    record["workers"], record["strategy"] = parallel.world, parallel.strategy
    publish(ctx, stage.hash, {"result.json": record}, student, tokenizer, pruned, work)
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


def run_eval(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Held-out metrics on the eval split. A trial's eval measures its distilled student against its
    teacher; a reference eval (config "model") its pruned student before retraining, against the teacher
    the same way ("pruned"), or the teacher alone ("teacher": no KL or agreement to measure)."""
    role = stage.config.get("model")
    teacher = None
    if role == "teacher":
        model, tokenizer = ctx.model_of(ctx.parents["teacher"])
    else:
        model, tokenizer = ctx.model_of(ctx.parents["prune" if role == "pruned" else "distill"])
        teacher, _ = ctx.model_of(ctx.parents["teacher"])
    splits = splits_for(stage.config, tokenizer, ctx.base_dir)
    metrics = eval_metrics(model, splits.eval, stage.config["calibration"]["batch_size"], teacher)
    metrics = {k: float(v) for k, v in metrics.items()}
    with ctx.store.write(stage.hash) as out:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def run_benchmark(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """lm-eval on the model of the stage's one parent (a student's distill, or the teacher), the very
    object already in memory when the trial's eval loaded it; results to benchmark.json."""
    from ablate.benchmarks.harness import run_benchmarks
    from ablate.benchmarks.tasks_index import resolve

    (parent,) = ctx.parents.values()
    model, tokenizer = ctx.model_of(parent)
    config = stage.config
    tasks = resolve([config["task"]], ctx.base_dir)
    out = run_benchmarks(
        model, tokenizer, tasks, config["limit"], config["num_fewshot"], config["batch_size"]
    )
    facts = {"tasks": list(tasks.names), **out}
    with ctx.store.write(stage.hash) as folder:
        (folder / "benchmark.json").write_text(json.dumps(facts, indent=1))
    return facts


def run_align(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """An alignment stage (ablate.run.align_stage, on TRL): imported when one runs."""
    from ablate.run.align_stage import run_align as run

    return run(stage, ctx)


WORKER_STAGES = ("teacher", "distill")  # the stages that train, and so can run on several workers
RUNNERS: dict[str, Callable[[Stage, StageContext], dict[str, Any]]] = {
    "tokenize": run_tokenize,
    "teacher": run_teacher,
    "importance": run_importance,
    "prune": run_prune,
    "distill": run_distill,
    "eval": run_eval,
    "benchmark": run_benchmark,
    "align": run_align,
}


def run_stage(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Run one stage unless its artifact is already complete (then read back its facts). A complete
    artifact is reused only once it verifies (ArtifactCorrupt otherwise, never a silent reuse)."""
    if ctx.store.exists(stage.hash):
        ctx.store.verify(stage.hash)
        return {"reused": True}
    if stage.kind not in RUNNERS:
        raise RunError(f"no runner for stage kind {stage.kind!r}")
    return RUNNERS[stage.kind](stage, ctx)


def read_eval_metrics(store: ArtifactStore, eval_hash: str) -> dict[str, float]:
    """The metrics of a published eval artifact."""
    with store.open(eval_hash, "metrics.json", "r") as f:
        return {k: float(v) for k, v in json.load(f).items()}


def read_benchmark(store: ArtifactStore, benchmark_hash: str) -> dict[str, Any]:
    """What a published benchmark artifact measured ({'metrics': {task: {...}}, 'n_samples', ...})."""
    with store.open(benchmark_hash, "benchmark.json", "r") as f:
        return json.load(f)


def record_benchmark(store: ArtifactStore, records: Any, benchmark_hash: str) -> dict[str, Any]:
    """A published benchmark's results copied into the records (when there are records; writing them
    again replaces them); returns its metrics, {task: {metric: v, metric_stderr: e}}."""
    data = read_benchmark(store, benchmark_hash)
    if records is not None:
        records.record_benchmarks(benchmark_hash, data["metrics"], data.get("n_samples"))
    return data["metrics"]


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
