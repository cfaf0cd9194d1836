"""The results database: SQLAlchemy models and the operations the executor and the CLI need.

The database is the source of truth for what exists (DESIGN.md section 4, Records). Its schema changes only
through the Alembic migrations shipped in ``ablate/track/migrations`` (``db/`` points there), applied
automatically by :func:`connect` under a lock, so two processes starting at once migrate exactly once.

URLs: ``sqlite:///path/to/file.db`` (parent folder created; WAL, busy timeout, write transactions start
with ``BEGIN IMMEDIATE`` so concurrent writers wait instead of failing with "database is locked"),
``sqlite://`` (in memory, one process), ``postgresql://...`` / ``postgres://...`` (mapped to the psycopg 3
driver). Never log a URL as given: use :func:`redact_url`.

Every public method runs in its own short transaction and returns plain frozen dataclasses (no ORM objects
escape), so a :class:`Records` can be shared by the threads of one driver process.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.pool import StaticPool

from ablate.errors import RunError
from ablate.secrets import redact_text, redact_url

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_LEVELS",
    "FINAL_STEP",
    "STAGE_KINDS",
    "STATUSES",
    "TERMINAL",
    "Base",
    "EventInfo",
    "Experiment",
    "ExperimentInfo",
    "ExperimentSummary",
    "Event",
    "Metric",
    "MetricRow",
    "Records",
    "Stage",
    "StageInfo",
    "Trial",
    "TrialInfo",
    "TrialStage",
    "TrialSummary",
    "UnknownExperiment",
    "connect",
    "make_engine",
    "migrate",
    "migrations_dir",
    "normalize_url",
    "redact_url",
]

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STAGE_KINDS = ("teacher", "importance", "prune", "distill", "eval")
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


# ====================================================================== plain results


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


class _Info:
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (datetimes as ISO strings, NaN as null, inf as "inf")."""
        return _jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class ExperimentInfo(_Info):
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
class TrialInfo(_Info):
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
class StageInfo(_Info):
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
class MetricRow(_Info):
    name: str
    step: int | None
    """None for a final value."""
    value: float

    @property
    def final(self) -> bool:
        return self.step is None


@dataclass(frozen=True)
class EventInfo(_Info):
    id: int
    time: datetime
    level: str
    message: str
    experiment: str | None
    trial_key: str | None
    stage_hash: str | None


@dataclass(frozen=True)
class TrialSummary(_Info):
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
class ExperimentSummary(_Info):
    experiment: ExperimentInfo
    counts: dict[str, int]
    """Trials per status, every status present."""
    trials: list[TrialSummary]
    stages: dict[str, dict[str, int]]
    """Stages linked to the experiment's trials: kind -> status -> count (only non-zero)."""

    @property
    def done(self) -> bool:
        return all(t.status in TERMINAL for t in self.trials)


def _experiment_info(e: Experiment, counts: Mapping[str, int] | None = None) -> ExperimentInfo:
    return ExperimentInfo(
        id=e.id,
        name=e.name,
        spec_hash=e.spec_hash,
        spec_text=e.spec_text,
        created_at=e.created_at,
        updated_at=e.updated_at,
        cancel_requested=e.cancel_requested_at is not None,
        mlflow_experiment_id=e.mlflow_experiment_id,
        mlflow_run_id=e.mlflow_run_id,
        counts={s: int((counts or {}).get(s, 0)) for s in STATUSES},
    )


def _trial_info(t: Trial, experiment: str) -> TrialInfo:
    return TrialInfo(
        id=t.id,
        experiment=experiment,
        key=t.key,
        status=t.status,
        overrides=dict(t.overrides or {}),
        config=None if t.config is None else dict(t.config),
        error=t.error,
        attempts=t.attempts,
        mlflow_run_id=t.mlflow_run_id,
        created_at=t.created_at,
        started_at=t.started_at,
        finished_at=t.finished_at,
    )


def _stage_info(s: Stage) -> StageInfo:
    return StageInfo(
        id=s.id,
        hash=s.hash,
        kind=s.kind,
        status=s.status,
        config=dict(s.config or {}),
        parents=list(s.parents or []),
        artifact_uri=s.artifact_uri,
        error=s.error,
        attempts=s.attempts,
        host=s.host,
        created_at=s.created_at,
        started_at=s.started_at,
        finished_at=s.finished_at,
    )


def _value(v: float | None) -> float:
    return math.nan if v is None else float(v)


# ====================================================================== URLs and engines


def normalize_url(url: str) -> URL:
    """Parse a tracking.db URL: ``postgresql://``/``postgres://`` get the psycopg 3 driver; a bare path or
    ``sqlite:///path`` becomes an absolute SQLite file URL (its parent folder is created)."""
    raw = os.fspath(url).strip()
    if "://" not in raw:
        raw = f"sqlite:///{raw}"
    elif raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    try:
        u = make_url(raw)
    except ArgumentError as e:
        raise RunError(f"tracking.db: cannot parse database URL {redact_url(raw)!r} ({e})") from None
    backend, _, driver = u.drivername.partition("+")
    if backend == "postgresql":
        if not driver:
            u = u.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            path = Path(u.database).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            u = u.set(database=str(path))
    else:
        raise RunError(
            f"tracking.db: unsupported database {redact_url(u)!r}; use sqlite:///path/to/ablate.db "
            "or postgresql://user@host:5432/dbname"
        )
    return u


def _is_memory(u: URL) -> bool:
    return u.drivername.startswith("sqlite") and u.database in (None, "", ":memory:")


def make_engine(url: str | URL, *, busy_timeout_s: float = 60.0, echo: bool = False) -> Engine:
    """An engine for a tracking.db URL, with ablate's SQLite settings (WAL, busy timeout, foreign keys,
    ``BEGIN IMMEDIATE`` for write transactions; read transactions use ``BEGIN``).

    Read-only work should go through ``engine.execution_options(ablate_read=True)``.
    """
    u = normalize_url(url) if isinstance(url, str) else url
    if not u.drivername.startswith("sqlite"):
        return create_engine(u, pool_pre_ping=True, echo=echo)

    memory = _is_memory(u)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(u, echo=echo, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own handling is broken)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if not memory:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read = conn.get_execution_options().get("ablate_read", False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


# ====================================================================== migrations


def migrations_dir() -> Path:
    """The Alembic script directory shipped inside the package."""
    return Path(__file__).resolve().parent / "migrations"


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _lock_for_migration(conn: Any) -> None:
    """Serialise migrations across processes. SQLite: the transaction began with BEGIN IMMEDIATE, which
    already holds the database's write lock. PostgreSQL: a transaction-scoped advisory lock keyed by
    database and schema, released at commit or rollback."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended("
                "'ablate-migrate:' || current_database() || ':' || coalesce(current_schema(), ''), 0))"
            )
        )


def migrate(engine: Engine) -> bool:
    """Bring the schema to the newest revision; True if this call applied migrations.

    Safe when several processes call it at once: the first takes the lock and migrates, the others wait,
    see the new revision and do nothing. Refuses a database newer than this version of ablate.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = _alembic_config()
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()

    def current(conn: Any) -> str | None:
        rev = MigrationContext.configure(conn).get_current_revision()
        if rev is not None and rev != head:
            try:
                script.get_revision(rev)
            except Exception:
                raise RunError(
                    f"the results database is at schema revision {rev}, which this version of ablate does "
                    "not know (it was written by a newer ablate): upgrade ablate, or point tracking.db "
                    "at another database"
                ) from None
        return rev

    with engine.execution_options(ablate_read=True).connect() as conn:  # fast path: already current
        if current(conn) == head:
            return False
    from alembic import command

    with engine.begin() as conn:
        _lock_for_migration(conn)
        rev = current(conn)
        if rev == head:
            return False
        log.info("migrating the results database from %s to %s", rev or "empty", head)
        command.upgrade(_alembic_config(conn), "head")
    return True


# ====================================================================== records


def connect(
    url: str, *, migrate_schema: bool = True, busy_timeout_s: float = 60.0, echo: bool = False
) -> Records:
    """Open the results database at ``url``, creating it and applying migrations on first use."""
    return Records(url, migrate_schema=migrate_schema, busy_timeout_s=busy_timeout_s, echo=echo)


class Records:
    """The executor's and the CLI's view of the results database (see the module docstring)."""

    def __init__(
        self, url: str, *, migrate_schema: bool = True, busy_timeout_s: float = 60.0, echo: bool = False
    ) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url, busy_timeout_s=busy_timeout_s, echo=echo)
        self._read_engine = self.engine.execution_options(ablate_read=True)
        self.migrated = False
        """True if opening this database applied migrations."""
        try:
            if migrate_schema:
                self.migrated = migrate(self.engine)
            else:
                with self._read_engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
        except OperationalError as e:
            self.engine.dispose()
            reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise RunError(
                f"cannot open the results database {self.redacted_url}: {reason}; "
                "check tracking.db in the spec (and that the server is running)"
            ) from None
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Records({self.redacted_url!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self._read_engine, expire_on_commit=False) as s, s.begin():
            yield s

    def _insert(self, model: type[Base]) -> Any:
        mod = pg_dialect if self.dialect == "postgresql" else sqlite_dialect
        return mod.insert(model)

    @staticmethod
    def _experiment(s: Session, name: str) -> Experiment:
        e = s.scalar(select(Experiment).where(Experiment.name == name))
        if e is None:
            known = s.scalars(select(Experiment.name).order_by(Experiment.name).limit(20)).all()
            hint = f"known: {', '.join(known)}" if known else "the database has no experiments yet"
            raise UnknownExperiment(
                f"no experiment named {name!r} in the records ({hint}); run `ablate status`"
            )
        return e

    @staticmethod
    def _trial(s: Session, trial_id: int, *, lock: bool = False) -> Trial:
        """The trial row; ``lock`` takes a row lock for a read-modify-write (PostgreSQL; SQLite's
        BEGIN IMMEDIATE already serialises writers)."""
        t = s.get(Trial, trial_id, with_for_update=lock or None)
        if t is None:
            raise RunError(f"no trial with id {trial_id} in the records")
        return t

    @staticmethod
    def _stage(s: Session, h: str, *, lock: bool = False) -> Stage:
        q = select(Stage).where(Stage.hash == h)
        st = s.scalar(q.with_for_update() if lock else q)
        if st is None:
            raise RunError(f"no stage {h} in the records: register it with upsert_stage first")
        return st

    @staticmethod
    def _counts(s: Session, experiment_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
        q = select(Trial.experiment_id, Trial.status, func.count()).group_by(
            Trial.experiment_id, Trial.status
        )
        if experiment_ids is not None:
            q = q.where(Trial.experiment_id.in_(experiment_ids))
        out: dict[int, dict[str, int]] = {}
        for eid, status, n in s.execute(q):
            out.setdefault(eid, {})[status] = n
        return out

    # ------------------------------------------------------------------ experiments
    def upsert_experiment(self, name: str, spec_text: str, spec_hash: str) -> ExperimentInfo:
        """Create the experiment, or update its spec if it exists (a re-submission); clears a pending
        cancel request. Trials and stages already recorded are kept."""
        now = _now()
        with self._write() as s:
            stmt = self._insert(Experiment).values(
                name=name, spec_text=spec_text, spec_hash=spec_hash, created_at=now, updated_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={
                    "spec_text": stmt.excluded.spec_text,
                    "spec_hash": stmt.excluded.spec_hash,
                    "updated_at": now,
                    "cancel_requested_at": None,
                },
            )
            s.execute(stmt)
            e = self._experiment(s, name)
            s.refresh(e)
            return _experiment_info(e, self._counts(s, [e.id]).get(e.id))

    def get_experiment(self, name: str) -> ExperimentInfo | None:
        with self._read() as s:
            e = s.scalar(select(Experiment).where(Experiment.name == name))
            return None if e is None else _experiment_info(e, self._counts(s, [e.id]).get(e.id))

    def list_experiments(self) -> list[ExperimentInfo]:
        """Every experiment, newest first, with its trial counts per status."""
        with self._read() as s:
            exps = s.scalars(
                select(Experiment).order_by(Experiment.created_at.desc(), Experiment.id.desc())
            ).all()
            counts = self._counts(s)
            return [_experiment_info(e, counts.get(e.id)) for e in exps]

    def set_experiment_mlflow(self, name: str, mlflow_experiment_id: str, parent_run_id: str) -> None:
        """Remember the MLflow experiment and parent run mirroring this experiment."""
        with self._write() as s:
            e = self._experiment(s, name)
            e.mlflow_experiment_id, e.mlflow_run_id, e.updated_at = (
                mlflow_experiment_id,
                parent_run_id,
                _now(),
            )

    def request_cancel(self, name: str) -> ExperimentInfo:
        """Flag the experiment for cancellation (``ablate cancel``); the executor polls :meth:`cancel_requested`."""
        with self._write() as s:
            e = self._experiment(s, name)
            e.cancel_requested_at = e.updated_at = _now()
            return _experiment_info(e, self._counts(s, [e.id]).get(e.id))

    def cancel_requested(self, name: str) -> bool:
        with self._read() as s:
            return self._experiment(s, name).cancel_requested_at is not None

    # ------------------------------------------------------------------ stages
    def upsert_stage(
        self, h: str, kind: str, config: Mapping[str, Any], parents: Sequence[str] = ()
    ) -> StageInfo:
        """Register a stage by content hash (pending if new); an existing stage is returned unchanged."""
        if kind not in STAGE_KINDS:
            raise ValueError(f"stage kind {kind!r} is not one of {', '.join(STAGE_KINDS)}")
        now = _now()
        with self._write() as s:
            s.execute(
                self._insert(Stage)
                .values(
                    hash=h,
                    kind=kind,
                    config=dict(config),
                    parents=list(parents),
                    status="pending",
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["hash"])
            )
            return _stage_info(self._stage(s, h))

    def get_stage(self, h: str) -> StageInfo | None:
        with self._read() as s:
            st = s.scalar(select(Stage).where(Stage.hash == h))
            return None if st is None else _stage_info(st)

    def stage_status(self, h: str) -> str | None:
        """The stage's status, or None if it was never registered."""
        with self._read() as s:
            return s.scalar(select(Stage.status).where(Stage.hash == h))

    def stages(self, experiment: str | None = None) -> list[StageInfo]:
        """All stages, or those linked to an experiment's trials, in creation order."""
        with self._read() as s:
            q = select(Stage).order_by(Stage.id)
            if experiment is not None:
                eid = self._experiment(s, experiment).id
                q = q.where(
                    Stage.id.in_(
                        select(TrialStage.stage_id)
                        .join(Trial, Trial.id == TrialStage.trial_id)
                        .where(Trial.experiment_id == eid)
                    )
                )
            return [_stage_info(st) for st in s.scalars(q)]

    def _update_stage(self, h: str, **values: Any) -> StageInfo:
        with self._write() as s:
            st = self._stage(s, h, lock=True)
            for k, v in values.items():
                setattr(st, k, v)
            if st.status != "running":  # a stage no longer running is held by nobody
                st.lease_owner = st.lease_until = None
            st.updated_at = _now()
            s.flush()
            return _stage_info(st)

    def mark_stage_running(self, h: str, *, host: str | None = None) -> StageInfo:
        """The stage started (one more attempt); clears a previous error."""
        with self._write() as s:
            st = self._stage(s, h, lock=True)
            now = _now()
            st.status, st.started_at, st.finished_at, st.error = "running", now, None, None
            st.attempts += 1
            st.host = host or socket.gethostname()
            st.updated_at = now
            return _stage_info(st)

    def mark_stage_completed(self, h: str, artifact_uri: str | None = None) -> StageInfo:
        """The stage finished and its artifact (if any) is published at ``artifact_uri``."""
        return self._update_stage(
            h,
            status="completed",
            finished_at=_now(),
            error=None,
            **({"artifact_uri": artifact_uri} if artifact_uri else {}),
        )

    def mark_stage_failed(self, h: str, error: str) -> StageInfo:
        return self._update_stage(
            h, status="failed", finished_at=_now(), error=redact_text(str(error))[:_MAX_ERROR]
        )

    def reset_stage(self, h: str) -> StageInfo:
        """Back to pending (e.g. its artifact vanished from the store); attempts are kept."""
        return self._update_stage(h, status="pending", started_at=None, finished_at=None)

    # ------------------------------------------------------------------ trials
    def upsert_trial(
        self,
        experiment: str,
        key: str,
        overrides: Mapping[str, Any],
        *,
        config: Mapping[str, Any] | None = None,
        stages: Sequence[str] = (),
    ) -> TrialInfo:
        """Register a trial of an experiment by key (pending if new; an existing trial keeps its status)
        and link it to its stages (hashes registered with :meth:`upsert_stage`)."""
        now = _now()
        with self._write() as s:
            e = self._experiment(s, experiment)
            values: dict[str, Any] = {
                "experiment_id": e.id,
                "key": key,
                "overrides": dict(overrides),
                "status": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            if config is not None:
                values["config"] = dict(config)
            stmt = self._insert(Trial).values(**values)
            set_: dict[str, Any] = {"overrides": stmt.excluded.overrides}
            if config is not None:
                set_["config"] = stmt.excluded.config
            s.execute(stmt.on_conflict_do_update(index_elements=["experiment_id", "key"], set_=set_))
            t = s.scalar(select(Trial).where(Trial.experiment_id == e.id, Trial.key == key))
            assert t is not None
            s.refresh(t)
            if stages:
                ids = dict(s.execute(select(Stage.hash, Stage.id).where(Stage.hash.in_(list(stages)))).all())
                missing = [h for h in stages if h not in ids]
                if missing:
                    raise RunError(
                        f"trial {key}: stages {', '.join(missing)} are not registered (upsert_stage first)"
                    )
                s.execute(
                    self._insert(TrialStage)
                    .values([{"trial_id": t.id, "stage_id": ids[h]} for h in dict.fromkeys(stages)])
                    .on_conflict_do_nothing(index_elements=["trial_id", "stage_id"])
                )
            return _trial_info(t, e.name)

    def get_trial(self, experiment: str, key: str) -> TrialInfo | None:
        with self._read() as s:
            e = self._experiment(s, experiment)
            t = s.scalar(select(Trial).where(Trial.experiment_id == e.id, Trial.key == key))
            return None if t is None else _trial_info(t, e.name)

    def trials(self, experiment: str, *, status: str | None = None) -> list[TrialInfo]:
        """The experiment's trials in creation order, optionally only those with ``status``."""
        with self._read() as s:
            e = self._experiment(s, experiment)
            q = select(Trial).where(Trial.experiment_id == e.id).order_by(Trial.id)
            if status is not None:
                q = q.where(Trial.status == status)
            return [_trial_info(t, e.name) for t in s.scalars(q)]

    def trial_stages(self, trial_id: int) -> list[StageInfo]:
        with self._read() as s:
            q = (
                select(Stage)
                .join(TrialStage, TrialStage.stage_id == Stage.id)
                .where(TrialStage.trial_id == trial_id)
            )
            return [_stage_info(st) for st in s.scalars(q.order_by(Stage.id))]

    def set_trial_status(
        self, trial_id: int, status: str, *, error: str | None = None, mlflow_run_id: str | None = None
    ) -> TrialInfo:
        """Move a trial to ``status``. ``running`` counts an attempt, sets started_at and clears the error;
        a terminal status sets finished_at and records ``error`` (cleared on ``completed``)."""
        if status not in STATUSES:
            raise ValueError(f"trial status {status!r} is not one of {', '.join(STATUSES)}")
        with self._write() as s:
            t = self._trial(s, trial_id, lock=True)
            now = _now()
            t.status = status
            t.updated_at = now
            if status == "running":
                t.attempts += 1
                t.started_at, t.finished_at, t.error = now, None, None
            elif status in TERMINAL:
                t.finished_at = now
                t.error = (
                    None
                    if status == "completed"
                    else (None if error is None else redact_text(str(error))[:_MAX_ERROR])
                )
            else:  # pending
                t.finished_at = None
                if error is not None:
                    t.error = redact_text(str(error))[:_MAX_ERROR]
            if mlflow_run_id is not None:
                t.mlflow_run_id = mlflow_run_id
            name = s.scalar(select(Experiment.name).where(Experiment.id == t.experiment_id))
            return _trial_info(t, name or "")

    def set_trial_mlflow_run(self, trial_id: int, run_id: str) -> None:
        with self._write() as s:
            t = self._trial(s, trial_id)
            t.mlflow_run_id, t.updated_at = run_id, _now()

    def recover_interrupted(self, experiment: str) -> dict[str, int]:
        """After a driver died: the experiment's trials and stages still marked running go back to
        pending (error "interrupted"). Call once at the start of a submission, before anything runs."""
        msg = "interrupted: the process running it stopped before it finished"
        now = _now()
        with self._write() as s:
            eid = self._experiment(s, experiment).id
            trial_ids = select(Trial.id).where(Trial.experiment_id == eid)
            n_trials = s.execute(
                update(Trial)
                .where(Trial.experiment_id == eid, Trial.status == "running")
                .values(status="pending", error=msg, updated_at=now)
            ).rowcount
            n_stages = s.execute(
                update(Stage)
                .where(
                    Stage.status == "running",
                    Stage.id.in_(select(TrialStage.stage_id).where(TrialStage.trial_id.in_(trial_ids))),
                )
                .values(status="pending", error=msg, updated_at=now)
            ).rowcount
        return {"trials": int(n_trials or 0), "stages": int(n_stages or 0)}

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
    def experiment_summary(self, name: str) -> ExperimentSummary:
        """What ``ablate status NAME`` shows: trial counts per status, each trial's status, final metrics and
        error, and the experiment's stages per kind and status."""
        with self._read() as s:
            e = self._experiment(s, name)
            trials = s.scalars(select(Trial).where(Trial.experiment_id == e.id).order_by(Trial.id)).all()
            finals: dict[int, dict[str, float]] = {}
            for tid, mname, value in s.execute(
                select(Metric.trial_id, Metric.name, Metric.value)
                .join(Trial, Trial.id == Metric.trial_id)
                .where(Trial.experiment_id == e.id, Metric.step == FINAL_STEP)
                .order_by(Metric.trial_id, Metric.name)
            ):
                finals.setdefault(tid, {})[mname] = _value(value)
            stage_counts: dict[str, dict[str, int]] = {}
            stage_ids = (
                select(TrialStage.stage_id)
                .join(Trial, Trial.id == TrialStage.trial_id)
                .where(Trial.experiment_id == e.id)
            )
            for kind, status, n in s.execute(
                select(Stage.kind, Stage.status, func.count())
                .where(Stage.id.in_(stage_ids))
                .group_by(Stage.kind, Stage.status)
            ):
                stage_counts.setdefault(kind, {})[status] = n
            counts = {st: 0 for st in STATUSES}
            summaries = []
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
                info = _trial_info(t, e.name)
                summaries.append(
                    TrialSummary(
                        key=t.key,
                        status=t.status,
                        overrides=info.overrides,
                        error=t.error,
                        attempts=t.attempts,
                        final_metrics=finals.get(t.id, {}),
                        mlflow_run_id=t.mlflow_run_id,
                        started_at=t.started_at,
                        finished_at=t.finished_at,
                        duration_s=info.duration_s,
                    )
                )
            ordered = {k: stage_counts[k] for k in STAGE_KINDS if k in stage_counts}
            return ExperimentSummary(_experiment_info(e, counts), counts, summaries, ordered)

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
