"""The records' benchmark results: what each benchmark stage measured, per lm-eval task and metric.
Mixed into :class:`ablate.track.db.Records`, whose short transactions (``_write``/``_read``) they use."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from sqlalchemy import select

from ablate.track.tables import BenchmarkResult

STDERR = "_stderr"
Results = dict[str, dict[str, float]]  # task -> {metric: value, metric + "_stderr": value}


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(float(value)) else float(value)


class BenchmarkRecords:
    """Benchmark-result operations of :class:`~ablate.track.db.Records`."""

    def record_benchmarks(
        self,
        stage_hash: str,
        results: Mapping[str, Mapping[str, float]],
        samples: Mapping[str, int] | None = None,
    ) -> int:
        """Store a benchmark stage's results ({task: {metric: v, metric_stderr: e}}); writing a stage's
        results again replaces them. Returns the number of (task, metric) rows."""
        rows = []
        for task, values in results.items():
            for metric, value in values.items():
                if metric.endswith(STDERR):
                    continue
                rows.append(
                    {
                        "stage_hash": stage_hash,
                        "task": task,
                        "metric": metric,
                        "value": _number(value),
                        "stderr": _number(values.get(metric + STDERR)),
                        "samples": (samples or {}).get(task),
                    }
                )
        if not rows:
            return 0
        with self._write() as s:
            stmt = self._insert(BenchmarkResult).values(rows)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["stage_hash", "task", "metric"],
                    set_={
                        "value": stmt.excluded.value,
                        "stderr": stmt.excluded.stderr,
                        "samples": stmt.excluded.samples,
                    },
                )
            )
        return len(rows)

    def benchmark_results(self, stage_hashes: Iterable[str]) -> dict[str, Results]:
        """{stage hash: {task: {metric: value, metric_stderr: stderr}}} for the stages that have results."""
        hashes = list(dict.fromkeys(stage_hashes))
        out: dict[str, Results] = {}
        if not hashes:
            return out
        with self._read() as s:
            for row in s.scalars(select(BenchmarkResult).where(BenchmarkResult.stage_hash.in_(hashes))):
                task = out.setdefault(row.stage_hash, {}).setdefault(row.task, {})
                task[row.metric] = math.nan if row.value is None else row.value
                if row.stderr is not None:
                    task[row.metric + STDERR] = row.stderr
        return out
