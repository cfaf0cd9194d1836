"""Benchmark results as a table in the papers' layout: one row per model, one column per task metric."""

from __future__ import annotations

from collections.abc import Mapping

Benchmarks = Mapping[str, Mapping[str, float]]  # task -> {metric: value, metric + "_stderr": value}


def metric_names(results: Mapping[str, float]) -> list[str]:
    """The task's metrics, without their standard errors, in a stable order."""
    return sorted(k for k in results if not k.endswith("_stderr"))


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
