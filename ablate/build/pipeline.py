"""`ablate build`: from the chosen recipe to a deployable model, its engines, its throughput and its report.

    recipe (best or named trial)  ->  stages (reused when their artifact exists, else run in-process)
      ->  export (HF folder + model card, atomically)  ->  throughput (torch backend; TensorRT-LLM
      engines when importable, else the exact commands)  ->  reports/<experiment>/build.md
      ->  a run in the experiment's MLflow store (metrics, card, report, checkpoint path: mlflow_log.py)

A second build of the same recipe into the same folder reuses everything: every stage is in the
artifact store, the folder's manifest names the same recipe, and the throughput measured on the same
device is kept. `dry_run` resolves the same recipe and writes config.json, the card skeleton, the
stage plan and the TensorRT-LLM commands without reading or writing any weights.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.build import export as ex
from ablate.build import trtllm
from ablate.build.recipe import BuildError, Recipe, Source, resolve
from ablate.build.throughput import ThroughputTable
from ablate.plan.stages import Stage
from ablate.secrets import redact, redact_text
from ablate.spec.units import format_tokens

log = logging.getLogger(__name__)
Say = Callable[[str], None]
PLAN = "plan.json"
THROUGHPUT = "throughput.json"
TRTLLM_DIR = "trtllm"
COMMANDS = "commands.sh"


@dataclass
class BuildResult:
    experiment: str
    trial: str
    chosen_by: str
    recipe_id: str
    out: str
    model_dir: str
    dry_run: bool
    tokens: int
    trial_tokens: int
    stages: list[dict[str, Any]] = field(
        default_factory=list
    )  # kind, hash, action (run / reused / would run)
    export_reused: bool = False
    params: dict[str, int] = field(default_factory=dict)  # teacher, student, planned
    sizes: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the built model's eval
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    trial_metrics: dict[str, float] = field(default_factory=dict)
    benchmarks: dict[str, Any] = field(default_factory=dict)  # {"teacher": {task: ..}, "model": {task: ..}}
    throughput: list[dict[str, Any]] = field(default_factory=list)  # one table per backend
    trtllm: dict[str, Any] = field(default_factory=dict)
    report: str = ""
    mlflow_run: str = ""  # the build's run in the experiment's MLflow store ("" when not logged)
    wall_s: float = 0.0

    @property
    def stages_run(self) -> int:
        return sum(1 for s in self.stages if s["action"] == "run")

    @property
    def stages_reused(self) -> int:
        return sum(1 for s in self.stages if s["action"] == "reused")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["stages_run"], out["stages_reused"] = self.stages_run, self.stages_reused
        out["wall_s"] = round(self.wall_s, 3)
        return out


def _quiet(message: str) -> None:
    log.info("%s", message)


def build(
    source: Source,
    trial: str | None = None,
    tokens: str | int | None = None,
    out: str | Path | None = None,
    dry_run: bool = False,
    dtype: str = "auto",
    formats: Sequence[str] | None = None,
    throughput: bool | None = None,
    device: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    lengths: Sequence[tuple[int, int]] | None = None,
    reports_dir: str | Path = "reports",
    say: Say = _quiet,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> BuildResult:
    """Build `source`'s recipe into `out` (see the module docstring). `throughput` None measures the
    generation throughput only on a GPU: on a CPU the figures say nothing (a shared CPU makes them noise)
    and the teacher's and student's grid takes minutes; True measures it anywhere."""
    started = time.perf_counter()
    recipe = resolve(source, trial, tokens, dry_run=dry_run)
    if formats:
        recipe.formats = list(formats)
    out_dir = Path(out) if out else recipe.default_out()
    previous = ex.check_out(out_dir, recipe.id)
    say(
        f"recipe {recipe.id}: experiment {source.name}, trial {recipe.trial.key} ({recipe.chosen_by}); "
        f"final distillation {format_tokens(recipe.tokens)} tokens"
        + (f" (trial: {format_tokens(recipe.trial_tokens)})" if recipe.extra_distill else "")
    )
    result = BuildResult(
        experiment=source.name,
        trial=recipe.trial.key,
        chosen_by=recipe.chosen_by,
        recipe_id=recipe.id,
        out=str(out_dir.resolve()),
        model_dir=str((out_dir / ex.MODEL_DIR).resolve()),
        dry_run=dry_run,
        tokens=recipe.tokens,
        trial_tokens=recipe.trial_tokens,
        trial_metrics=dict(recipe.trial_metrics),
    )
    if dry_run:
        _dry_run(recipe, out_dir, result, say)
    else:
        _real_build(
            recipe, out_dir, previous, result, dtype, throughput, device, batch_sizes, lengths, say, on_step
        )
    result.wall_s = time.perf_counter() - started
    result.report = str(write_report(recipe, result, Path(reports_dir)))
    say(f"report: {result.report}")
    if not dry_run:
        from ablate.build.mlflow_log import log_build

        result.mlflow_run = log_build(recipe, result, say)
    return result


# --- stages ------------------------------------------------------------------------------------------


def _spec_word(recipe: Recipe) -> str:
    """How the user names the spec in a suggested command."""
    return str(recipe.source.spec_path) if recipe.source.spec_path else "SPEC"


def run_stages(recipe: Recipe, store, records, say: Say, on_step=None) -> list[dict[str, Any]]:
    """Every stage of the recipe, through the same runners, leases and records as `ablate submit`
    (ablate.run.in_process): reused when its artifact is complete and its checksums verify (a damaged
    one stops the build: ArtifactCorrupt), else run here."""
    from ablate.run.in_process import run_in_process

    return run_in_process(
        recipe.chain,
        recipe.parents,
        store,
        records,
        base_dir=recipe.source.base_dir,
        experiment=recipe.source.name,
        spec_word=_spec_word(recipe),
        say=say,
        on_step=on_step,
    )


def teacher_source(recipe: Recipe, artifacts: str) -> tuple[str, str | None]:
    """(where the teacher's weights are for engines: a folder or hub id, the built-in ref to materialise
    first or None). A corrected teacher is its artifact's checkpoint."""
    teacher = recipe.stages["teacher"]
    ref = teacher.config["model"]
    if teacher.config.get("correction"):
        base = artifacts if "://" in artifacts else str(Path(artifacts))
        return f"{base.rstrip('/')}/{teacher.hash}/model", None
    if ref.startswith("builtin:"):
        return "", ref
    from ablate.run.stage_runners import resolve_ref

    resolved = resolve_ref(ref, recipe.source.base_dir)
    path = Path(resolved).expanduser()
    return (str(path.resolve()) if path.exists() else resolved), None


def write_commands(
    recipe: Recipe, folder: Path, final_model_dir: Path, model_type: str, batch_sizes, lengths
) -> Path:
    teacher_path, builtin = teacher_source(recipe, recipe.source.artifacts)
    trt_out = final_model_dir.parent / TRTLLM_DIR
    if builtin:
        teacher_path = str(trt_out / "teacher-hf")
    script = trtllm.commands(
        {"student": str(final_model_dir), "teacher": teacher_path},
        str(trt_out),
        {"student": model_type, "teacher": model_type},
        batch_sizes=batch_sizes or trtllm.BATCH_SIZES,
        lengths=lengths or trtllm.LENGTHS,
        materialize={"teacher": builtin} if builtin else None,
        header=[
            f"TensorRT-LLM engines of experiment {recipe.source.name}, trial {recipe.trial.key} (recipe {recipe.id})",
            "and of its teacher, BF16 and FP8, and their generation throughput. Written by `ablate build`.",
        ],
    )
    path = folder / TRTLLM_DIR / COMMANDS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


# --- dry run -----------------------------------------------------------------------------------------


def _dry_run(recipe: Recipe, out_dir: Path, result: BuildResult, say: Say) -> None:
    from transformers import AutoConfig

    from ablate.models.arch import count_parameters, pruned_config, shape_of
    from ablate.models.registry import load_config

    source = recipe.source
    teacher_config = load_config(recipe.stages["teacher"].config["model"], source.teacher_config_path)
    student_config = pruned_config(teacher_config, recipe.trial.shape)
    planned = count_parameters(student_config)
    teacher_params = count_parameters(teacher_config)
    store_root = Path(source.artifacts) if "://" not in source.artifacts else None
    store = None
    if store_root is not None and store_root.is_dir():
        from ablate.run.artifacts import ArtifactStore

        store = ArtifactStore(store_root)
    for stage in recipe.chain:
        exists = store is not None and store.exists(stage.hash)
        result.stages.append(
            {"kind": stage.kind, "hash": stage.hash, "action": "reuse" if exists else "would run"}
        )
    final_model_dir = out_dir.resolve() / ex.MODEL_DIR
    dtype = "bfloat16"

    def write(tmp: Path) -> None:
        ex.write_config_only(student_config, tmp / ex.MODEL_DIR, dtype)
        card = ex.model_card(
            recipe,
            shape_of(teacher_config),
            shape_of(student_config),
            {"teacher": teacher_params, "student": planned},
            None,
            dry_run=True,
            teacher_source=teacher_source(recipe, source.artifacts)[0] or None,
        )
        (tmp / ex.MODEL_DIR / "README.md").write_text(card)
        (tmp / PLAN).write_text(json.dumps(plan_dict(recipe, result.stages), indent=1) + "\n")
        write_commands(recipe, tmp, final_model_dir, student_config.model_type, None, None)
        ex.write_manifest(tmp, manifest(recipe, result, dry_run=True))

    ex.publish(out_dir, recipe.id, write)
    reloaded = AutoConfig.from_pretrained(final_model_dir)
    counted = count_parameters(reloaded)
    if counted != planned:
        raise BuildError(
            f"config.json builds {counted:,} parameters but {planned:,} were planned; this is a bug"
        )
    result.params = {"teacher": teacher_params, "student": counted, "planned": planned}
    result.sizes = {"bf16_weights_bytes_estimate": 2 * counted}
    result.trtllm = {
        "available": trtllm.available(),
        "commands": str(out_dir.resolve() / TRTLLM_DIR / COMMANDS),
        "message": "dry run: no engines built; the exact commands are in "
        + str(out_dir.resolve() / TRTLLM_DIR / COMMANDS),
    }
    say(
        f"dry run: {out_dir}/model/config.json builds {counted:,} parameters on the meta device (planned {planned:,}); "
        f"{sum(s['action'] == 'would run' for s in result.stages)} stage(s) would run"
    )


def plan_dict(recipe: Recipe, actions: list[dict[str, Any]]) -> dict[str, Any]:
    by_hash = {a["hash"]: a["action"] for a in actions}
    return {
        **recipe.describe(),
        "stages": [
            {
                "kind": s.kind,
                "hash": s.hash,
                "parents": list(s.parents),
                "action": by_hash.get(s.hash),
                "config": s.config,
            }
            for s in recipe.chain
        ],
        "trial_stages": {k: s.hash for k, s in recipe.stages.items()},
    }


def manifest(recipe: Recipe, result: BuildResult, dry_run: bool) -> dict[str, Any]:
    return {
        "recipe_id": recipe.id,
        "experiment": recipe.source.name,
        "trial": recipe.trial.key,
        "tokens": recipe.tokens,
        "dry_run": dry_run,
        "stages": {s.kind: s.hash for s in recipe.chain},
        "trial_stages": {k: s.hash for k, s in recipe.stages.items()},
        "params": result.params,
        "metrics": result.metrics,
        "teacher_metrics": result.teacher_metrics,
        "trial_metrics": result.trial_metrics,
        "sizes": result.sizes,
    }


# --- the real build ------------------------------------------------------------------------------------


def _real_build(
    recipe: Recipe,
    out_dir: Path,
    previous: dict[str, Any] | None,
    result: BuildResult,
    dtype: str,
    throughput: bool,
    device: str | None,
    batch_sizes,
    lengths,
    say: Say,
    on_step,
) -> None:
    import torch

    from ablate.run.artifacts import ArtifactStore

    source = recipe.source
    store = ArtifactStore(source.artifacts)
    records = source.records()
    result.stages = run_stages(recipe, store, records, say, on_step)
    metrics = json.loads((store.local_path(recipe.final_eval.hash) / "metrics.json").read_text())
    result.metrics = {k: float(v) for k, v in metrics.items()}
    result.benchmarks = _benchmarks(recipe, store, records)
    up_to_date = previous is not None and not previous.get("dry_run") and (out_dir / ex.MODEL_DIR).is_dir()
    final_model_dir = out_dir.resolve() / ex.MODEL_DIR
    if up_to_date:
        result.export_reused = True
        result.params = dict(previous.get("params") or {})
        result.sizes = dict(previous.get("sizes") or {})
        result.teacher_metrics = dict(previous.get("teacher_metrics") or {})
        say(f"{out_dir} already holds this recipe's build: export reused")
    else:
        _export(recipe, store, out_dir, final_model_dir, result, dtype, say)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    auto = throughput is None
    if auto:
        throughput = torch.device(device).type != "cpu"
        if not throughput:
            say(
                "generation throughput not measured on the CPU (a shared CPU's figures are noise and the "
                "teacher's and student's grid takes minutes): pass --throughput to measure it anyway"
            )
    engines = any(f.startswith("trtllm-") for f in recipe.formats)  # measured with their own backend
    if throughput or (auto and engines):
        _throughput(
            recipe,
            store,
            out_dir,
            final_model_dir,
            result,
            device,
            batch_sizes,
            lengths,
            say,
            bool(throughput),
        )
        card = final_model_dir / "README.md"
        if result.throughput and card.is_file():
            from ablate.build.summary import card_with_throughput

            card.write_text(card_with_throughput(card.read_text(), result.throughput))
    if records is not None:
        records.log_event(
            f"build {recipe.id} of trial {recipe.trial.key} into {result.out}: {result.stages_run} stage(s) run, "
            f"{result.stages_reused} reused",
            experiment=source.name,
        )


def _benchmarks(recipe: Recipe, store, records) -> dict[str, Any]:
    """The teacher's and the final model's lm-eval results (eval.tasks), recorded like a trial's."""
    from ablate.run.stage_runners import record_benchmark

    out: dict[str, Any] = {"teacher": {}, "model": {}} if recipe.benchmarks else {}
    for stage in recipe.benchmarks:
        metrics = record_benchmark(store, records, stage.hash)
        out["teacher" if stage.config["model"] == "teacher" else "model"].update(metrics)
    return out


def _export(
    recipe: Recipe, store, out_dir: Path, final_model_dir: Path, result: BuildResult, dtype: str, say: Say
) -> None:
    from ablate.models.arch import count_parameters, pruned_config, shape_of
    from ablate.run.stage_runners import eval_metrics, load_teacher, splits_for

    teacher_stage = recipe.stages["teacher"]
    teacher, tokenizer = load_teacher(store, teacher_stage.hash)
    eval_config = recipe.final_eval.config
    splits = splits_for(eval_config, tokenizer, recipe.source.base_dir)
    say("evaluating the teacher on the eval split")
    teacher_metrics = eval_metrics(teacher, splits.eval, eval_config["calibration"]["batch_size"])
    result.teacher_metrics = {k: float(v) for k, v in teacher_metrics.items()}
    planned = count_parameters(pruned_config(teacher.config, recipe.trial.shape))
    teacher_params = sum(p.numel() for p in teacher.parameters())
    teacher_shape = shape_of(teacher.config)
    del teacher
    final_hash = recipe.final_model.hash  # the last alignment stage's model, else the final distill's
    source_dir = store.local_path(final_hash) / "model"
    origin = f"artifact {final_hash}: recompute it with `ablate submit {_spec_word(recipe)} --recompute {final_hash}`"
    if recipe.align:
        from ablate.run.align_stage import read_align_facts

        aligned = [{**s.config["stage"], **read_align_facts(store, s.hash)} for s in recipe.align]
    else:
        aligned = None

    def write(tmp: Path) -> None:
        facts = ex.export_model(source_dir, tmp / ex.MODEL_DIR, dtype, origin=origin)
        result.params = {"teacher": teacher_params, "student": facts["params"], "planned": planned}
        if facts["params"] != planned:
            raise BuildError(
                f"the built model has {facts['params']:,} parameters but {planned:,} were planned"
            )
        rows = ex.evaluation_rows(recipe, result.teacher_metrics, result.metrics, result.params)
        card = ex.model_card(
            recipe,
            teacher_shape,
            facts["shape"],
            result.params,
            rows,
            teacher_source=teacher_source(recipe, recipe.source.artifacts)[0] or None,
            benchmarks=[("teacher", result.benchmarks["teacher"]), ("this model", result.benchmarks["model"])]
            if result.benchmarks
            else None,
            aligned=aligned,
        )
        (tmp / ex.MODEL_DIR / "README.md").write_text(card)
        (tmp / PLAN).write_text(json.dumps(plan_dict(recipe, result.stages), indent=1) + "\n")
        import transformers

        model_type = transformers.AutoConfig.from_pretrained(tmp / ex.MODEL_DIR).model_type
        write_commands(recipe, tmp, final_model_dir, model_type, None, None)
        result.sizes = {
            "weights_bytes": facts["weights_bytes"],
            "model_folder_bytes": ex.folder_bytes(tmp / ex.MODEL_DIR),
            "dtype_bytes_per_param": round(facts["weights_bytes"] / max(1, facts["params"]), 3),
        }
        ex.write_manifest(tmp, manifest(recipe, result, dry_run=False))

    ex.publish(out_dir, recipe.id, write)
    say(f"exported {final_model_dir} ({result.params['student']:,} parameters)")


def _throughput(
    recipe,
    store,
    out_dir: Path,
    model_dir: Path,
    result: BuildResult,
    device,
    batch_sizes,
    lengths,
    say: Say,
    torch_backend: bool = True,
):
    """The throughput tables: transformers' (`torch_backend`; kept from an earlier build on the same
    device and grid) and TensorRT-LLM's where build.formats asks for engines."""
    from ablate.build import throughput as tp

    path = out_dir / THROUGHPUT
    saved = json.loads(path.read_text()) if path.is_file() else {}
    grid = {
        "device": tp.device_name(device),
        "batch_sizes": list(batch_sizes or []),
        "lengths": [list(x) for x in lengths or []],
    }
    tables: list[dict[str, Any]] = []
    if saved.get("grid") == grid and saved.get("tables"):
        tables = saved["tables"]
        say(f"throughput on {grid['device']} reused from {path}")
    elif torch_backend:
        from transformers import AutoModelForCausalLM

        from ablate.run.stage_runners import load_teacher

        def student():
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")

        def teacher():
            return load_teacher(store, recipe.stages["teacher"].hash)[0]

        say(f"measuring generation throughput with transformers on {grid['device']}")

        def row_done(row: tp.ThroughputRow) -> None:
            what = f"{row.model} {row.precision} batch {row.batch_size}, {row.input_len}:{row.output_len}"
            say(f"throughput {what}: " + (row.skipped or f"{row.tokens_per_s:,.1f} tok/s"))

        table = tp.measure(
            {"student": student, "teacher": teacher}, device, batch_sizes, lengths, on_row=row_done
        )
        tables.append(table.to_dict())
    trt = _trtllm(recipe, out_dir, model_dir, saved, say, batch_sizes, lengths)
    if trt.get("table"):
        tables = [t for t in tables if t["backend"] != "trtllm"] + [trt["table"]]
    result.throughput = tables
    result.trtllm = {k: v for k, v in trt.items() if k != "table"}
    _atomic_json(path, {"grid": grid, "tables": tables, "trtllm": trt})


def _trtllm(
    recipe: Recipe, out_dir: Path, model_dir: Path, saved: dict, say: Say, batch_sizes=None, lengths=None
) -> dict[str, Any]:
    commands_path = out_dir.resolve() / TRTLLM_DIR / COMMANDS
    wanted = [f.removeprefix("trtllm-") for f in recipe.formats if f.startswith("trtllm-")]
    if not trtllm.available():
        line = trtllm.unavailable_line(commands_path)
        say(line)
        return {"available": False, "message": line, "commands": str(commands_path)}
    if not wanted:
        line = "TensorRT-LLM is installed but build.formats asks for no engine (add trtllm-bf16 / trtllm-fp8)"
        say(line)
        return {"available": True, "message": line, "commands": str(commands_path)}
    previous = (saved.get("trtllm") or {}).get("table")
    if previous:
        return {
            "available": True,
            "message": "engines reused",
            "commands": str(commands_path),
            "table": previous,
        }
    teacher_path, builtin = teacher_source(recipe, recipe.source.artifacts)
    trt_out = out_dir.resolve() / TRTLLM_DIR
    if builtin:
        teacher_path = str(trtllm.materialize(builtin, trt_out / "teacher-hf"))
    say(f"building TensorRT-LLM engines ({', '.join(wanted)}) of the student and the teacher")
    table = trtllm.run_engines(
        {"student": str(model_dir), "teacher": teacher_path},
        trt_out,
        batch_sizes=batch_sizes or trtllm.BATCH_SIZES,
        lengths=lengths or trtllm.LENGTHS,
        precisions=wanted,
    )
    data = table.to_dict()
    return {
        "available": True,
        "message": f"engines in {trt_out / 'engines'}",
        "commands": str(commands_path),
        "table": data,
    }


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(redact(data), indent=1, default=str) + "\n")
    os.replace(tmp, path)


# --- the build report -----------------------------------------------------------------------------------


def write_report(recipe: Recipe, result: BuildResult, reports_dir: Path) -> Path:
    from ablate.build.summary import build_markdown

    folder = reports_dir / recipe.source.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("build-dry-run.md" if result.dry_run else "build.md")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(redact_text(build_markdown(recipe, result)))
    os.replace(tmp, path)
    return path


__all__ = ["BuildResult", "build", "run_stages", "Stage", "ThroughputTable"]
