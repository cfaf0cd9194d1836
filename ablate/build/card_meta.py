"""The model card's metadata (front matter) and benchmark table, made with huggingface_hub's ModelCard
tools so the hub reads the `model-index` (benchmark results) as it reads any other model's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

Benchmarks = Mapping[str, Mapping[str, float]]  # task -> {metric: value, metric + "_stderr": value}
TAGS = ["ablate", "minitron", "pruning", "distillation"]


def _is_hub_id(ref: str) -> bool:
    """ORG/NAME that is not a local folder: the hub model the card names as its base."""
    return not ref.startswith("builtin:") and not Path(ref).expanduser().exists() and ref.count("/") == 1


def metric_names(results: Mapping[str, float]) -> list[str]:
    """The task's metrics, without their standard errors, in a stable order."""
    return sorted(k for k in results if not k.endswith("_stderr"))


def eval_results(benchmarks: Benchmarks) -> list[EvalResult]:
    """One EvalResult per (task, metric): what the hub shows as the model's benchmark scores."""
    out = []
    for task in sorted(benchmarks):
        for metric in metric_names(benchmarks[task]):
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task,
                    dataset_name=task,
                    metric_type=metric,
                    metric_value=round(float(benchmarks[task][metric]), 6),
                    source_name="lm-evaluation-harness",
                    source_url="https://github.com/EleutherAI/lm-evaluation-harness",
                )
            )
    return out


def front_matter(model_name: str, teacher_ref: str, benchmarks: Benchmarks | None) -> str:
    """The YAML block between the card's `---` lines."""
    data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        base_model=teacher_ref if _is_hub_id(teacher_ref) else None,
        base_model_relation="finetune" if _is_hub_id(teacher_ref) else None,
        eval_results=eval_results(benchmarks) or None if benchmarks else None,
    )
    return data.to_yaml()


def benchmark_table(rows: list[tuple[str, Benchmarks]]) -> list[str]:
    """Markdown table in the papers' layout: one row per model, one column per task metric (± stderr)."""
    columns = sorted({(task, m) for _, b in rows for task in b for m in metric_names(b[task])})
    if not columns:
        return []
    head = "| model | " + " | ".join(f"{task} {metric}" for task, metric in columns) + " |"
    lines = [head, "|---|" + "---:|" * len(columns)]
    for label, bench in rows:
        cells = []
        for task, metric in columns:
            value = bench.get(task, {}).get(metric)
            err = bench.get(task, {}).get(f"{metric}_stderr")
            cells.append(
                "-" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if err is not None else "")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines
