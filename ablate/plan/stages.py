"""Stage kinds and their content hashes.

A stage's identity is a hash of its kind, its own resolved config and its parents' hashes, so two
trials that need the same teacher, importance pass or pruned model share one stage, in this
submission and in every later one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ablate.benchmarks.fingerprint import task_fingerprint
from ablate.spec.schema import MEMORY_FIELDS, Distill, Spec
from ablate.spec.sweep import Trial, stable_hash, target_lineage

STAGE_KINDS = ("tokenize", "teacher", "importance", "prune", "distill", "eval", "benchmark", "align")
TOKENIZE = "tokenize:"  # trial_stages key of the tokenize stage of the trial's k-th data source: tokenize:K
BENCHMARK = "benchmark:"  # trial_stages key of a benchmark of the trial's student: benchmark:TASK
TEACHER_BENCHMARK = "teacher-benchmark:"  # ... and of its teacher (a shared stage)
ALIGN = "align:"  # trial_stages key of the trial's alignment stages, in order: align:0, align:1, ...
ALIGNED_BENCHMARK = "aligned-benchmark:"  # ... and of a benchmark of its aligned model (after the last)
# trial_stages keys of the held-out evals of its pruned student before retraining and of its teacher
# alone: shared stages, the report's reference rows
PRUNED_EVAL = "pruned-eval"
ROUND = "round"  # trial_stages keys of the links a student is pruned through first: roundK:importance, ...
DISTILL_TEACHER = "distill-teacher"  # a chain link's teacher: the previous link's distill stage
TEACHER_EVAL = "teacher-eval"
REFERENCE_EVALS = {PRUNED_EVAL: "pruned", TEACHER_EVAL: "teacher"}  # key -> config["model"]
BEFORE_TRAINING = 0
"""The step a trial's records hold its pruned student's held-out metrics at (``eval_<metric>``)."""
TEACHER_LOSS = "teacher_lm_loss"
"""The final metric a trial's records hold its teacher's held-out LM loss as."""


@dataclass(frozen=True)
class Stage:
    kind: str
    config: dict[str, Any]
    parents: tuple[str, ...] = ()
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {self.kind!r}")
        object.__setattr__(
            self, "hash", f"{self.kind}-{stable_hash([self.kind, self.config, list(self.parents)], 16)}"
        )


def trial_stages(trial: Trial, base_dir: str | None = None) -> dict[str, Stage]:
    """The stages one trial needs, each hashed over exactly what it depends on: keyed by kind, a
    tokenize stage per data source as tokenize:K, the reference evals as pruned-eval and teacher-eval,
    and a benchmark per eval task as benchmark:TASK (and teacher-benchmark:TASK)."""
    spec = trial.spec
    resolved = trial.resolved()
    correction = resolved["teacher"]["correction"]
    if correction:
        # Unset batch sizes follow distillation's; resolved here so the hash sees the real values.
        correction = {
            **correction,
            "global_batch": correction["global_batch"] or spec.distill.global_batch,
            "micro_batch": correction["micro_batch"] or spec.distill.micro_batch,
        }
        for name in MEMORY_FIELDS:  # unset: distillation's; present only when not the default
            value = correction.pop(name, None)
            value = getattr(spec.distill, name) if value is None else value
            if value != Distill.model_fields[name].default:
                correction[name] = value
    teacher = Stage(
        "teacher",
        {
            "model": resolved["teacher"]["model"],
            "correction": correction,
            # Correction trains on the corpus's train split, so the data is part of a corrected teacher.
            "data": {"data": resolved["data"], "calibration": resolved["calibration"]}
            if correction
            else None,
        },
    )
    # Splits (train / eval / calibration) are cut from one packed stream using data and calibration
    # settings, so every stage that reads a split depends on both sections.
    data = {"data": resolved["data"], "calibration": resolved["calibration"]}
    importance_config = {"importance": resolved["importance"], **data}
    if spec.importance.depth.method == "contiguous":
        # Contiguous-block scoring needs the block sizes to try: one per depth the spec's targets ask for.
        importance_config["depth_targets"] = sorted(
            {t.num_hidden_layers for t in spec.targets.values() if t.num_hidden_layers is not None}
        )
    distill_config = {"distill": resolved["distill"], "seed": trial.seed, **data}
    # Each link pruned from the last one's distilled student (a round), and with `chain` also taught by
    # it; the first from the teacher. A link's stages are the ones a trial of that target alone has, so a
    # shared prefix (the same settings up to a link) runs once.
    links = target_lineage(spec, trial.target)
    rounds: dict[str, Stage] = {}
    source, link_teacher = teacher, teacher
    for i, link in enumerate(links):
        importance = Stage("importance", importance_config, (source.hash,))
        prune = Stage("prune", {"target": link["target"]}, (importance.hash,))
        if link["chain"]:
            link_teacher = source
        distill = Stage("distill", distill_config, (prune.hash, link_teacher.hash))
        if i < len(links) - 1:
            rounds |= {f"{ROUND}{i}:{s.kind}": s for s in (importance, prune, distill)}
        source = distill
    evaluate = Stage("eval", data, (distill.hash, teacher.hash))  # against the spec's teacher, always
    tokenize = tokenize_stages(resolved["data"], resolved["teacher"]["model"], base_dir)
    stages = {f"{TOKENIZE}{k}": stage for k, stage in enumerate(tokenize)}  # first: the graph's roots
    stages |= {"teacher": teacher, **rounds}
    stages |= {s.kind: s for s in (importance, prune, distill, evaluate)}
    if link_teacher is not teacher:
        stages[DISTILL_TEACHER] = link_teacher
    # The held-out metrics the trial's are read against: its pruned student before any retraining (against
    # the teacher, as the trial's eval) and the teacher alone, on the same eval batches. Added as stages of
    # their own ("model" in the config: no existing stage's hash moved), shared by every trial of a prune
    # stage or of a teacher.
    stages[PRUNED_EVAL] = Stage("eval", {**data, "model": "pruned"}, (prune.hash, teacher.hash))
    stages[TEACHER_EVAL] = Stage("eval", {**data, "model": "teacher"}, (teacher.hash,))
    for task in spec.eval.tasks:
        stages[BENCHMARK + task] = benchmark_stage(spec, task, distill, "student", base_dir)
        stages[TEACHER_BENCHMARK + task] = benchmark_stage(spec, task, teacher, "teacher", base_dir)
    aligned = align_stages(resolved, distill, trial.seed, base_dir)
    stages |= {f"{ALIGN}{k}": stage for k, stage in enumerate(aligned)}
    if aligned:
        for task in spec.eval.tasks:
            stages[ALIGNED_BENCHMARK + task] = benchmark_stage(spec, task, aligned[-1], "aligned", base_dir)
    return stages


def align_stages(resolved: Mapping[str, Any], distill: Stage, seed: int, base_dir: str | None) -> list[Stage]:
    """The trial's alignment stages, each a child of the one before (the first of its distill stage). A
    stage's identity is its own settings, the chat template, the content of its data and of every set it is
    evaluated on (its own and the earlier stages'), the seed and its parent: trials that share a distilled
    student and a prefix of stages share that prefix, and a stage added at the end moves no other hash."""
    align = resolved.get("align")
    if not align:
        return []
    from ablate.align.sets import fingerprint, resolve

    out: list[Stage] = []
    evals: list[dict[str, Any]] = []
    parent = distill
    for settings in align["stages"]:
        try:
            content = fingerprint(resolve(settings["data"], base_dir))
        except Exception:  # noqa: BLE001 - a missing file: validate names it; the stage fails when run
            content = None
        data = {"data": settings["data"], "content": content, "method": settings["method"]}
        data["held_out"], data["max_length"] = settings["held_out"], settings["max_length"]
        if data not in evals:
            evals.append(data)
        config = {"stage": settings, "chat_template": align["chat_template"], "evals": list(evals), "seed": seed}
        parent = Stage("align", config, (parent.hash,))
        out.append(parent)
    return out


def is_reference_eval(stage: Stage) -> bool:
    """A pruned-eval or teacher-eval stage (an eval of a model other than a trial's student)."""
    return stage.kind == "eval" and "model" in stage.config


def tokenize_stages(data: Mapping[str, Any], tokenizer_ref: str, base_dir: str | None) -> list[Stage]:
    """One `tokenize` stage per data source: its documents -> token shards in the ablate cache.

    A root of the graph, not a parent of the stages that read the data, so adding it left every
    existing stage hash where it was; the executor runs it before them instead (run.shared_stages).
    Its identity is the source as written, the tokenizer (the teacher's), seq_len and the source's
    stamp (ablate.data.sources.stamp: a change detector that reads no data); the shards it writes
    are addressed by the source's content, so every stage reading them sees the current data."""
    from ablate.data.sources import Source, sources_of, stamp

    written = data.get("sources") or [{"path": data.get("corpus") or "builtin:pydoc"}]
    resolved = sources_of(data, base_dir)
    return [
        Stage(
            "tokenize",
            {
                "source": item["path"],
                "text_field": source.text_field,
                "tokenizer": tokenizer_ref,
                "seq_len": data["seq_len"],
                "stamp": stamp(Source(source.path, 1.0, source.text_field)),
            },
        )
        for item, source in zip(written, resolved, strict=True)
    ]


def benchmark_stage(spec: Spec, task: str, model: Stage, role: str, spec_dir: str | None) -> Stage:
    """The lm-eval run of one `eval.tasks` entry on the model `model` makes (its student or teacher): one
    stage per (model, task), so adding a task runs only that task. Its hash covers the task's content
    (files of a local or shipped task; lm-eval's version for its own tasks) and the settings that move
    the numbers."""
    settings = spec.eval
    return Stage(
        "benchmark",
        {
            "model": role,
            "task": task,
            "task_version": task_fingerprint(task, spec_dir),
            "limit": settings.limit,
            "num_fewshot": settings.num_fewshot,
            "batch_size": settings.batch_size,
        },
        (model.hash,),
    )


def trial_kinds(stages: Mapping[str, Any]) -> list[str]:
    """The keys of a trial's own stages (run in its Tune trial, in this order): distill, eval, its student's
    benchmarks, then its alignment stages in order and the aligned model's benchmarks."""
    aligned = sorted((k for k in stages if k.startswith(ALIGN)), key=lambda k: int(k[len(ALIGN) :]))
    return [
        "distill",
        "eval",
        *sorted(k for k in stages if k.startswith(BENCHMARK)),
        *aligned,
        *sorted(k for k in stages if k.startswith(ALIGNED_BENCHMARK)),
    ]
