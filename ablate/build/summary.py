"""reports/<experiment>/build.md: what was built, its size and parameter counts, its quality against the
teacher, and the generation-throughput table (BF16 vs FP8, student vs teacher)."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from ablate.benchmarks.table import benchmark_table
from ablate.build import export as ex
from ablate.build.throughput import ThroughputTable, format_table
from ablate.spec.units import format_tokens

if TYPE_CHECKING:
    from ablate.build.pipeline import BuildResult
    from ablate.build.recipe import Recipe


def _mb(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.2f} MB"


def build_markdown(recipe: Recipe, result: BuildResult) -> str:
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = "Build plan (dry run)" if result.dry_run else "Build"
    lines = [
        f"# {title}: {recipe.source.name}",
        "",
        f"{when}. Recipe `{recipe.id}`: trial `{recipe.trial.key}` ({recipe.chosen_by}), "
        f"target `{recipe.trial.target}` {recipe.trial.shape}, distillation loss `{recipe.trial.spec.distill.loss}`, "
        f"{format_tokens(recipe.tokens)} tokens"
        + (f" (the trial ran {format_tokens(recipe.trial_tokens)})" if recipe.extra_distill else "")
        + ".",
        "",
        f"- Output: `{result.out}` (model: `{result.model_dir}`)",
        f"- Stages: {result.stages_run} run, {result.stages_reused} reused"
        + (f", {sum(s['action'] == 'would run' for s in result.stages)} would run" if result.dry_run else "")
        + ("; export reused (same recipe already built there)" if result.export_reused else ""),
        "",
        "| stage | hash | action |",
        "|---|---|---|",
        *[f"| {s['kind']} | `{s['hash']}` | {s['action']} |" for s in result.stages],
        "",
        "## Size",
        "",
        "| | parameters | weights on disk |",
        "|---|---:|---:|",
    ]
    p = result.params
    if result.dry_run:
        lines += [
            f"| teacher | {p.get('teacher', 0):,} | - |",
            f"| this model (planned) | {p.get('planned', 0):,} | {_mb(result.sizes.get('bf16_weights_bytes_estimate'))} in BF16 (estimate) |",
            "",
            f"config.json built on the meta device: {p.get('student', 0):,} parameters "
            f"({'matches' if p.get('student') == p.get('planned') else 'DIFFERS FROM'} the plan).",
        ]
    else:
        ratio = p.get("student", 0) / p["teacher"] if p.get("teacher") else 0
        lines += [
            f"| teacher | {p.get('teacher', 0):,} | - |",
            f"| this model | {p.get('student', 0):,} ({ratio:.1%} of the teacher) | {_mb(result.sizes.get('weights_bytes'))} |",
            "",
            f"Planned parameters: {p.get('planned', 0):,} "
            f"({'matches' if p.get('student') == p.get('planned') else 'DIFFERS'}). Model folder "
            f"{_mb(result.sizes.get('model_folder_bytes'))}.",
        ]
    lines += ["", "## Quality against the teacher", ""]
    if result.dry_run:
        lines += ["Not measured (dry run)."]
    else:
        rows = ex.evaluation_rows(recipe, result.teacher_metrics, result.metrics, result.params)
        lines += ex.evaluation_table(rows)
        t, s = result.teacher_metrics.get("lm_loss"), result.metrics.get("lm_loss")
        if t is not None and s is not None:
            lines += ["", f"LM loss gap to the teacher: {s - t:+.4f}."]
    if result.benchmarks:
        lines += ["", "## Benchmarks", "", "lm-evaluation-harness (value ± standard error).", ""]
        lines += benchmark_table(
            [("teacher", result.benchmarks["teacher"]), ("this model", result.benchmarks["model"])]
        )
    lines += ["", "## Generation throughput", ""]
    if not result.throughput:
        lines += ["Not measured" + (" (dry run)." if result.dry_run else " (--no-throughput).")]
    for table in result.throughput:
        lines += format_table(ThroughputTable.from_dict(table)) + [""]
    lines += ["", "## TensorRT-LLM", "", result.trtllm.get("message", "-")]
    if result.trtllm.get("commands"):
        lines += ["", f"Commands: `{result.trtllm['commands']}`"]
    lines.append("")
    return "\n".join(lines)


CARD_SECTION = "## Generation throughput"


def card_with_throughput(card: str, tables: list[dict]) -> str:
    """The model card with the throughput tables as its last section (a rebuild replaces its own section):
    the card is written at export, before the throughput is measured."""
    head = card.split("\n" + CARD_SECTION + "\n", 1)[0].rstrip("\n")
    lines = [head, "", CARD_SECTION, "", "Measured by `ablate build` (student = this model).", ""]
    for table in tables:
        lines += format_table(ThroughputTable.from_dict(table)) + [""]
    return "\n".join(lines)
