"""Alembic environment for the results database.

Used two ways:
- by :func:`ablate.track.db.migrate` (every ``connect``), which passes an open connection already inside a
  locked transaction in ``config.attributes["connection"]``;
- by the ``alembic`` command for developers: ``alembic -c db/alembic.ini revision --autogenerate -m ...``
  with the database URL from ``-x url=...`` or the ``ABLATE_DB_URL`` environment variable.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from ablate.track.engine import make_engine, normalize_url
from ablate.track.tables import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_, obj, autogen_context):
    # keep migrations free of ablate imports: UTCDateTime is a plain timezone-aware DateTime in the schema
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("ABLATE_DB_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=sqlite:///path.db ... or ABLATE_DB_URL=...")
    return url


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    if context.is_offline_mode():
        context.configure(
            url=normalize_url(_url()),
            target_metadata=target_metadata,
            literal_binds=True,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    if config.config_file_name:  # the alembic command: log what it does
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(_url())
    try:
        with engine.begin() as connection:
            _configure(connection)
    finally:
        engine.dispose()


run()
