"""The records' logs: per-step and final metrics of trials, and events (what happened, at what level).
Mixed into :class:`ablate.track.db.Records`, whose short transactions (``_write``/``_read``) they use."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import (
    select,
)

from ablate.errors import RunError
from ablate.secrets import redact_text
from ablate.track.infos import (
    EventInfo,
    MetricRow,
    _value,
)
from ablate.track.tables import (
    _BATCH,
    _MAX_ERROR,
    EVENT_LEVELS,
    FINAL_STEP,
    Event,
    Experiment,
    Metric,
    Trial,
    _now,
)


class MetricsAndEvents:
    """Metric and event operations of :class:`~ablate.track.db.Records`."""

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, trial_id: int, rows: Iterable[Any], *, batch_size: int = _BATCH) -> int:
        """Record per-step values: rows of ``(name, step, value)`` or mappings with those keys.

        Written in multi-row batches; a value logged again for the same (name, step), e.g. after a resume
        from a checkpoint, replaces the old one. Returns the number of rows written.
        """
        batch: list[dict[str, Any]] = []
        n = 0
        for row in rows:
            if isinstance(row, Mapping):
                name, step, value = row["name"], row["step"], row["value"]
            else:
                name, step, value = row
            step = int(step)
            if step < 0:
                raise ValueError(f"metric {name!r}: step must be >= 0 (got {step}); use log_final_metrics")
            batch.append(self._metric_row(trial_id, name, step, value))
            if len(batch) >= batch_size:
                n += self._write_metrics(batch)
                batch = []
        if batch:
            n += self._write_metrics(batch)
        return n

    def log_final_metrics(self, trial_id: int, metrics: Mapping[str, float]) -> int:
        """Record the trial's final values (eval loss, perplexity, ...); logging one again replaces it."""
        return self._write_metrics([self._metric_row(trial_id, k, FINAL_STEP, v) for k, v in metrics.items()])

    @staticmethod
    def _metric_row(trial_id: int, name: str, step: int, value: Any) -> dict[str, Any]:
        v = float(value)
        return {"trial_id": trial_id, "name": str(name), "step": step, "value": None if math.isnan(v) else v}

    def _write_metrics(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        # last value wins inside one batch too (ON CONFLICT cannot touch a row twice in one statement)
        dedup = list({(r["name"], r["step"]): r for r in rows}.values())
        with self._write() as s:
            if s.get(Trial, dedup[0]["trial_id"]) is None:
                raise RunError(f"no trial with id {dedup[0]['trial_id']} in the records")
            stmt = self._insert(Metric).values(dedup)
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["trial_id", "name", "step"], set_={"value": stmt.excluded.value}
                )
            )
        return len(rows)

    def trial_metrics(
        self, trial_id: int, *, name: str | None = None, final: bool | None = None
    ) -> list[MetricRow]:
        """The trial's metric values ordered by name then step; ``final`` True/False keeps only final or
        only per-step values. Final values have ``step`` None."""
        with self._read() as s:
            q = select(Metric.name, Metric.step, Metric.value).where(Metric.trial_id == trial_id)
            if name is not None:
                q = q.where(Metric.name == name)
            if final is True:
                q = q.where(Metric.step == FINAL_STEP)
            elif final is False:
                q = q.where(Metric.step >= 0)
            rows = s.execute(q.order_by(Metric.name, Metric.step)).all()
        return [MetricRow(n, None if st == FINAL_STEP else st, _value(v)) for n, st, v in rows]

    def final_metrics(self, trial_id: int) -> dict[str, float]:
        return {r.name: r.value for r in self.trial_metrics(trial_id, final=True)}

    def metric_series(self, trial_id: int, name: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one per-step metric, by step."""
        return [(r.step, r.value) for r in self.trial_metrics(trial_id, name=name, final=False)]  # type: ignore[misc]

    # ------------------------------------------------------------------ summary
    # ------------------------------------------------------------------ events
    def log_event(
        self,
        message: str,
        *,
        level: str = "info",
        experiment: str | None = None,
        trial_id: int | None = None,
        stage_hash: str | None = None,
    ) -> None:
        """Append a line to the experiment's event log (what ``ablate status`` shows as history)."""
        if level not in EVENT_LEVELS:
            raise ValueError(f"event level {level!r} is not one of {', '.join(EVENT_LEVELS)}")
        with self._write() as s:
            eid = None
            if experiment is not None:
                eid = self._experiment(s, experiment).id
            if trial_id is not None:
                t = self._trial(s, trial_id)
                eid = eid if eid is not None else t.experiment_id
            s.add(
                Event(
                    time=_now(),
                    experiment_id=eid,
                    trial_id=trial_id,
                    stage_hash=stage_hash,
                    level=level,
                    message=redact_text(str(message))[:_MAX_ERROR],
                )
            )

    def events(
        self,
        experiment: str | None = None,
        *,
        trial_id: int | None = None,
        min_level: str = "debug",
        after_id: int | None = None,
        limit: int = 200,
    ) -> list[EventInfo]:
        """The newest ``limit`` events (oldest first) of an experiment (or all), at ``min_level`` or above;
        with ``after_id``, the oldest ``limit`` events newer than it (for following a live run)."""
        if min_level not in EVENT_LEVELS:
            raise ValueError(f"event level {min_level!r} is not one of {', '.join(EVENT_LEVELS)}")
        levels = EVENT_LEVELS[EVENT_LEVELS.index(min_level) :]
        with self._read() as s:
            q = (
                select(Event, Experiment.name, Trial.key)
                .outerjoin(Experiment, Experiment.id == Event.experiment_id)
                .outerjoin(Trial, Trial.id == Event.trial_id)
                .where(Event.level.in_(levels))
            )
            if experiment is not None:
                q = q.where(Event.experiment_id == self._experiment(s, experiment).id)
            if trial_id is not None:
                q = q.where(Event.trial_id == trial_id)
            if after_id is not None:
                q = q.where(Event.id > after_id)
            if after_id is not None:  # following: the next `limit` events, none skipped
                rows = s.execute(q.order_by(Event.id).limit(limit)).all()
            else:
                rows = s.execute(q.order_by(Event.id.desc()).limit(limit)).all()[::-1]
        return [
            EventInfo(ev.id, ev.time, ev.level, ev.message, ename, tkey, ev.stage_hash)
            for ev, ename, tkey in rows
        ]


__all__ = ["MetricsAndEvents"]
