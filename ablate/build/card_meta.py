"""The model card's metadata (front matter) and benchmark table, made with huggingface_hub's ModelCard
tools so the hub reads them as it reads any other model's: the base model it was pruned from (with the
relation), the teacher's license where it is known, the hub datasets it was trained on, and the results
(`model-index`: lm-eval benchmarks and the held-out LM loss and perplexity)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ablate.benchmarks.table import Benchmarks, benchmark_table, metric_names

log = logging.getLogger(__name__)
TAGS = ["ablate", "minitron", "pruning", "distillation"]
BUILTIN_BASES: dict[str, tuple[str, str]] = {
    "builtin:smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
}
"""Built-in teachers that are hub models: (hub id, license). builtin:tiny-mistral is random weights."""
HELDOUT_METRICS = (("lm_loss", "loss"), ("perplexity", "perplexity"))
"""(ablate's eval metric, the model-index metric type) of the held-out split."""


def _is_hub_id(ref: str) -> bool:
    """ORG/NAME that is not a local folder: the hub model the card names as its base."""
    return not ref.startswith("builtin:") and not Path(ref).expanduser().exists() and ref.count("/") == 1


def base_model(teacher_ref: str) -> str | None:
    """The hub id of the model this one was pruned from (None when the teacher is not a hub model)."""
    if teacher_ref in BUILTIN_BASES:
        return BUILTIN_BASES[teacher_ref][0]
    return teacher_ref if _is_hub_id(teacher_ref) else None


def _card_license(path: Path) -> str | None:
    try:
        license_ = ModelCard.load(path).data.license
    except Exception as exc:  # noqa: BLE001 - a teacher's card we cannot read only means "unknown"
        log.debug("no readable model card at %s: %s", path, exc)
        return None
    return license_ if isinstance(license_, str) else None


def teacher_license(teacher_ref: str, weights: str | None = None) -> str | None:
    """The teacher's license, where it is known without the network: a built-in's, or the `license` of
    the model card in its folder (`weights`, or the reference itself) or in the local hub cache."""
    if teacher_ref in BUILTIN_BASES:
        return BUILTIN_BASES[teacher_ref][1]
    for where in (weights, teacher_ref):
        if where and (Path(where).expanduser() / "README.md").is_file():
            return _card_license(Path(where).expanduser() / "README.md")
    if _is_hub_id(teacher_ref):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(teacher_ref, "README.md")
        if isinstance(cached, str):
            return _card_license(Path(cached))
    return None


def hub_datasets(data: Mapping[str, Any]) -> list[str]:
    """The hub datasets among the resolved spec's data sources (`hf:ORG/NAME[:config][@split]`)."""
    refs = [data["corpus"]] if data.get("corpus") else [s["path"] for s in data.get("sources") or []]
    out = []
    for ref in refs:
        if isinstance(ref, str) and ref.startswith("hf:"):
            name = ref.removeprefix("hf:").split("@", 1)[0].split(":", 1)[0]
            if _is_hub_id(name) and name not in out:
                out.append(name)
    return out


def eval_results(
    benchmarks: Benchmarks | None,
    heldout: Mapping[str, float] | None = None,
    corpus: str = "",
) -> list[EvalResult]:
    """One EvalResult per (task, metric) of lm-eval, and the held-out LM loss and perplexity on `corpus`:
    what the hub shows as the model's scores."""
    out = []
    for task in sorted(benchmarks or {}):
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
    for name, metric in HELDOUT_METRICS:
        if heldout and isinstance(heldout.get(name), (int, float)):
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=corpus,
                    dataset_name=f"{corpus} (held-out split)",
                    metric_type=metric,
                    metric_value=round(float(heldout[name]), 6),
                )
            )
    return out


def card_data(
    model_name: str,
    teacher_ref: str,
    benchmarks: Benchmarks | None,
    *,
    license: str | None = None,
    datasets: list[str] | None = None,
    heldout: Mapping[str, float] | None = None,
    corpus: str = "",
) -> ModelCardData:
    """The card's metadata. Results need a model name (model-index); none are written without results."""
    base = base_model(teacher_ref)
    results = eval_results(benchmarks, heldout, corpus)
    return ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=TAGS,
        license=license,
        base_model=base,
        base_model_relation="finetune" if base else None,  # the hub's nearest relation for pruned+retrained
        datasets=datasets or None,
        eval_results=results or None,
    )


def front_matter(model_name: str, teacher_ref: str, benchmarks: Benchmarks | None, **more: Any) -> str:
    """The YAML block between the card's `---` lines."""
    return card_data(model_name, teacher_ref, benchmarks, **more).to_yaml()


__all__ = [
    "Benchmarks",
    "base_model",
    "benchmark_table",
    "card_data",
    "eval_results",
    "front_matter",
    "hub_datasets",
    "teacher_license",
]
