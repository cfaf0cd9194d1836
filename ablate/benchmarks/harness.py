"""Run lm-eval tasks on a model already in memory and keep each task's metrics with their standard errors.

lm-eval's HFLM wraps the PreTrainedModel object itself (no reload from disk) and simple_evaluate runs
the tasks exactly as `lm_eval --model hf` would on the same weights, so the numbers match its CLI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ablate.benchmarks.tasks_index import TaskSet, manager_for
from ablate.errors import ModelError

log = logging.getLogger(__name__)
Metrics = dict[str, dict[str, float]]  # task -> {metric: value, metric + "_stderr": value}


def parse_results(results: dict[str, Any]) -> Metrics:
    """lm-eval's results block ({'acc,none': .., 'acc_stderr,none': ..}) as {task: {'acc': .., 'acc_stderr': ..}}."""
    out: Metrics = {}
    for task, values in results.get("results", {}).items():
        row: dict[str, float] = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = metric if filt == "none" else f"{metric}[{filt}]"
            row[name] = float(value)
        if row:
            out[task] = row
    return out


def run_benchmarks(
    model,
    tokenizer,
    tasks: TaskSet,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    keep_samples: bool = False,
) -> dict[str, Any]:
    """{'metrics': Metrics, 'seconds': s, 'versions': {...}, 'n_samples': {...}} for `tasks` on `model`;
    with `keep_samples`, also 'samples': lm-eval's per-document records (each choice's log-likelihood)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=lm,
            tasks=list(tasks.names),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager_for(tasks.names, tasks.include_paths),
            log_samples=keep_samples,
        )
    except (ConnectionError, OSError) as exc:
        raise ModelError(f"lm-eval could not load the data of {', '.join(tasks.names)}: {exc}") from exc
    finally:
        model.train(was_training)
    if results is None:
        raise ModelError("lm-eval returned no results")
    out = {
        "metrics": parse_results(results),
        "seconds": time.perf_counter() - start,
        "versions": {k: v for k, v in results.get("versions", {}).items()},
        "n_samples": {k: v.get("effective") for k, v in results.get("n-samples", {}).items()},
    }
    if keep_samples:
        out["samples"] = results.get("samples", {})
    return out
