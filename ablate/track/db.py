"""The results database: the operations the executor and the CLI need (tables in ``tables.py``, plain
results in ``infos.py``, URLs, engines and migrations in ``engine.py``, metrics and events in ``logs.py``).

The database is the source of truth for what exists (docs/architecture.md, "Records and MLflow"). Its schema changes only
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
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from ablate.errors import RunError
from ablate.secrets import redact_text, redact_url
from ablate.track.benchmarks import BenchmarkRecords
from ablate.track.engine import make_engine, migrate, migrations_dir, normalize_url
from ablate.track.infos import (
    EventInfo,
    ExperimentInfo,
    ExperimentSummary,
    MetricRow,
    StageInfo,
    TrialInfo,
    TrialSummary,
    _experiment_info,
    _stage_info,
    _trial_info,
    _value,
)
from ablate.track.logs import MetricsAndEvents
from ablate.track.search_records import SearchRecords
from ablate.track.tables import (
    _MAX_ERROR,
    EVENT_LEVELS,
    FINAL_STEP,
    STAGE_KINDS,
    STATUSES,
    TERMINAL,
    Base,
    Event,
    Experiment,
    Metric,
    Stage,
    Trial,
    TrialStage,
    UnknownExperiment,
    _now,
)

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

# ====================================================================== records


def connect(
    url: str, *, migrate_schema: bool = True, busy_timeout_s: float = 60.0, echo: bool = False
) -> Records:
    """Open the results database at ``url``, creating it and applying migrations on first use."""
    return Records(url, migrate_schema=migrate_schema, busy_timeout_s=busy_timeout_s, echo=echo)


class Records(MetricsAndEvents, BenchmarkRecords, SearchRecords):
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
