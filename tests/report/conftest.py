"""Records for the report tests: the constructed experiment of known.py on SQLite and on PostgreSQL.

PostgreSQL reuses the records tests' fixture pattern (tests/track/conftest.py): a uniquely named schema
per test on ``ABLATE_TEST_PG_URL`` (default 127.0.0.1:5432/test), dropped afterwards; skipped with the
reason when the server is unreachable.
"""

from __future__ import annotations

import pytest

from tests.report.known import build_known
from tests.track.conftest import pg_schema, pg_server  # noqa: F401  (fixture re-used here)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def known_sqlite(tmp_path_factory):
    """One SQLite database with the known experiment, shared by the read-only tests."""
    from ablate.track.db import connect

    url = f"sqlite:///{tmp_path_factory.mktemp('known')}/ablate.db"
    records = connect(url)
    known = build_known(records)
    yield url, records, known
    records.close()


@pytest.fixture(params=BACKENDS)
def any_records(request, tmp_path):
    """Fresh records on each backend (SQLite file, or a new PostgreSQL schema)."""
    from ablate.track.db import connect

    if request.param == "sqlite":
        records = connect(f"sqlite:///{tmp_path}/ablate.db")
        yield records
        records.close()
        return
    with pg_schema(request.getfixturevalue("pg_server")) as url:
        records = connect(url)
        try:
            yield records
        finally:
            records.close()
