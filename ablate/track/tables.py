"""The records' tables (SQLAlchemy ORM) and the values their columns may take. The schema changes only
through the Alembic migrations in ``ablate/track/migrations``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ablate.errors import RunError

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STAGE_KINDS = ("tokenize", "teacher", "importance", "prune", "distill", "eval", "benchmark", "align")
EVENT_LEVELS = ("debug", "info", "warning", "error")
FINAL_STEP = -1
"""``metrics.step`` of a trial's final value of a metric (per-step values have ``step >= 0``)."""

_MAX_ERROR = 65536
_BATCH = 500


class UnknownExperiment(RunError):
    """No experiment of that name in the records."""


# ====================================================================== models


def _now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_JSON = JSON().with_variant(pg_dialect.JSONB(), "postgresql")
_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: _JSON, list[str]: _JSON}


def _status_check(col: str = "status") -> CheckConstraint:
    values = ", ".join(f"'{s}'" for s in STATUSES)
    return CheckConstraint(f"{col} IN ({values})", name="status")


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now)
    cancel_requested_at: Mapped[datetime | None]
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))

    trials: Mapped[list[Trial]] = relationship(back_populates="experiment", passive_deletes=True)


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("experiment_id", "key"), _status_check(), Index(None, "status"))

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    config: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))  # the live submission holding it
    lease_until: Mapped[datetime | None]

    experiment: Mapped[Experiment] = relationship(back_populates="trials")


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (
        _status_check(),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in STAGE_KINDS)})", name="kind"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    hash: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parents: Mapped[list[str]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    artifact_uri: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=_now)
    updated_at: Mapped[datetime] = mapped_column(default=_now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))  # see ablate.track.leases
    lease_until: Mapped[datetime | None]


class TrialStage(Base):
    __tablename__ = "trial_stages"
    __table_args__ = (Index(None, "stage_id"),)

    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True)
    stage_id: Mapped[int] = mapped_column(ForeignKey("stages.id", ondelete="CASCADE"), primary_key=True)


class Metric(Base):
    """One value of a metric of a trial: per step (``step >= 0``) or final (``step == FINAL_STEP``).

    ``value`` is NULL where a NaN was logged (SQLite cannot store NaN); reads turn it back into NaN.
    """

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("trial_id", "name", "step"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Float(precision=53))


class BenchmarkResult(Base):
    """One metric of one lm-eval task measured by a benchmark stage (of a trial's student, of the teacher
    or of a build), with its standard error; keyed by the stage, so a stage's results are written once
    and every trial sharing it reads them."""

    __tablename__ = "benchmark_results"
    __table_args__ = (UniqueConstraint("stage_hash", "task", "metric"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    stage_hash: Mapped[str] = mapped_column(String(128), index=True)
    task: Mapped[str] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float(precision=53))
    stderr: Mapped[float | None] = mapped_column(Float(precision=53))
    samples: Mapped[int | None] = mapped_column(BigInteger)


class SearchCandidate(Base):
    """One shape a spec's `search` enumerated: its one-shot score (the pruned-eval stage's metric), its
    rank, whether it was among the top_k retrained (and as which trials), and whether it won."""

    __tablename__ = "search_candidates"
    __table_args__ = (UniqueConstraint("experiment_id", "name"),)

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    shape: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[int] = mapped_column(BigInteger)
    prune_hash: Mapped[str] = mapped_column(String(128))
    eval_hash: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float(precision=53))  # None: its stages failed
    rank: Mapped[int | None]  # 1 = best one-shot score
    trial_keys: Mapped[list[str]] = mapped_column(default=list)  # its retraining trials (top_k only)
    winner: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=_now)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index(None, "experiment_id", "id"),
        Index(None, "trial_id"),
        CheckConstraint(f"level IN ({', '.join(repr(v) for v in EVENT_LEVELS)})", name="level"),
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    time: Mapped[datetime] = mapped_column(default=_now)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    stage_hash: Mapped[str | None] = mapped_column(String(128))
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
