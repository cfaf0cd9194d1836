"""Database URLs, engines (SQLite pragmas, PostgreSQL via psycopg 3) and migrations applied under a lock,
so two processes starting at once migrate exactly once."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from ablate.errors import RunError
from ablate.secrets import redact_url

log = logging.getLogger(__name__)

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

    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # before BEGIN (a no-op inside one): a table a migration rebuilds (SQLite cannot alter a
            # CHECK in place) is dropped and renamed, and with foreign keys on that drop would cascade
            # into every row that references it (trial_stages)
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.begin():
                _lock_for_migration(conn)
                rev = current(conn)
                if rev == head:
                    return False
                log.info("migrating the results database from %s to %s", rev or "empty", head)
                command.upgrade(_alembic_config(conn), "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RunError(
                            f"migration left {len(broken)} dangling reference(s); nothing was changed"
                        )
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys = ON")
    return True
