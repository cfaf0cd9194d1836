"""The model card's metadata (front matter) and benchmark table, made with huggingface_hub's ModelCard
tools so the hub reads the `model-index` (benchmark results) as it reads any other model's."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from ablate.benchmarks.table import Benchmarks, benchmark_table, metric_names

TAGS = ["ablate", "minitron", "pruning", "distillation"]


def _is_hub_id(ref: str) -> bool:
    """ORG/NAME that is not a local folder: the hub model the card names as its base."""
    return not ref.startswith("builtin:") and not Path(ref).expanduser().exists() and ref.count("/") == 1


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


__all__ = ["Benchmarks", "benchmark_table", "eval_results", "front_matter"]
