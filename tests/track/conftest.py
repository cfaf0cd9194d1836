"""Fixtures for the records tests: one fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests run against ``ABLATE_TEST_PG_URL`` (default the server at 127.0.0.1:5432, database
``test``) inside a uniquely named schema created for the test and dropped after it, so parallel runs and
CI never see each other's tables. They are skipped, with the reason, when the server is unreachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest

PG_URL = os.environ.get("ABLATE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL base URL, or a skip saying why it cannot be used."""
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"psycopg is not installed ({e})")
    from ablate.track.db import redact_url

    try:
        with psycopg.connect(_psycopg_conninfo(PG_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        pytest.skip(
            f"PostgreSQL unreachable at {redact_url(PG_URL)} ({first}); start it or set ABLATE_TEST_PG_URL"
        )
    return PG_URL


@contextmanager
def pg_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a fresh schema (search_path), dropped afterwards."""
    import psycopg

    schema = f"ablate_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_conninfo(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}&application_name={schema}"
    finally:
        with psycopg.connect(_psycopg_conninfo(base_url), autocommit=True) as conn:
            # end connections a failed test left open, then drop everything in the schema
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND application_name = %s",
                (schema,),
            )
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def make_pg_schema(pg_server: str):
    """``with make_pg_schema() as url:`` a fresh schema on the test server, for wider-scoped fixtures."""
    return lambda: pg_schema(pg_server)


@pytest.fixture
def pg_schema_url(pg_server: str) -> Iterator[str]:
    with pg_schema(pg_server) as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A database URL that does not exist yet (SQLite file in a folder still to be made, or a new schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sub/dir/ablate.db"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def records(db_url):
    from ablate.track.db import connect

    r = connect(db_url)
    yield r
    r.close()
