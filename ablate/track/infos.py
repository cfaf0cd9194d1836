"""Plain frozen results of the records (no ORM object leaves a transaction), and their conversion from
rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ablate.jsonable import JsonRow
from ablate.track.tables import STATUSES, TERMINAL, Experiment, Stage, Trial

# ====================================================================== plain results


@dataclass(frozen=True)
class ExperimentInfo(JsonRow):
    id: int
    name: str
    spec_hash: str
    spec_text: str
    created_at: datetime
    updated_at: datetime
    cancel_requested: bool
    mlflow_experiment_id: str | None
    mlflow_run_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    """Number of trials per status (every status present, zeros included)."""


@dataclass(frozen=True)
class TrialInfo(JsonRow):
    id: int
    experiment: str
    key: str
    status: str
    overrides: dict[str, Any]
    config: dict[str, Any] | None
    error: str | None
    attempts: int
    mlflow_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class StageInfo(JsonRow):
    id: int
    hash: str
    kind: str
    status: str
    config: dict[str, Any]
    parents: list[str]
    artifact_uri: str | None
    error: str | None
    attempts: int
    host: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class MetricRow(JsonRow):
    name: str
    step: int | None
    """None for a final value."""
    value: float

    @property
    def final(self) -> bool:
        return self.step is None


@dataclass(frozen=True)
class EventInfo(JsonRow):
    id: int
    time: datetime
    level: str
    message: str
    experiment: str | None
    trial_key: str | None
    stage_hash: str | None


@dataclass(frozen=True)
class TrialSummary(JsonRow):
    key: str
    status: str
    overrides: dict[str, Any]
    error: str | None
    attempts: int
    final_metrics: dict[str, float]
    mlflow_run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None


@dataclass(frozen=True)
class ExperimentSummary(JsonRow):
    experiment: ExperimentInfo
    counts: dict[str, int]
    """Trials per status, every status present."""
    trials: list[TrialSummary]
    stages: dict[str, dict[str, int]]
    """Stages linked to the experiment's trials: kind -> status -> count (only non-zero)."""

    @property
    def done(self) -> bool:
        return all(t.status in TERMINAL for t in self.trials)


def _from_row(cls: type, row: Any, **given: Any) -> Any:
    """An Info of `cls` from an ORM row: each field is the row's column of that name unless `given`
    (the converted or computed ones), so a column added to both needs no line here."""
    return cls(**{f.name: given[f.name] if f.name in given else getattr(row, f.name) for f in fields(cls)})


def _experiment_info(e: Experiment, counts: Mapping[str, int] | None = None) -> ExperimentInfo:
    return _from_row(
        ExperimentInfo,
        e,
        cancel_requested=e.cancel_requested_at is not None,
        counts={s: int((counts or {}).get(s, 0)) for s in STATUSES},
    )


def _trial_info(t: Trial, experiment: str) -> TrialInfo:
    return _from_row(
        TrialInfo,
        t,
        experiment=experiment,
        overrides=dict(t.overrides or {}),
        config=None if t.config is None else dict(t.config),
    )


def _stage_info(s: Stage) -> StageInfo:
    return _from_row(StageInfo, s, config=dict(s.config or {}), parents=list(s.parents or []))


def _value(v: float | None) -> float:
    return math.nan if v is None else float(v)
