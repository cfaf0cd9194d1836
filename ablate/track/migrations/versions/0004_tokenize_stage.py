"""tokenize: the data path's `tokenize` stage (one source's documents -> token shards) as a stage kind

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = ("teacher", "importance", "prune", "distill", "eval", "benchmark")
NEW_KINDS = ("tokenize", *OLD_KINDS)


def _set_kinds(kinds: tuple[str, ...]) -> None:
    with op.batch_alter_table("stages") as batch:  # SQLite: the table is copied with the new check
        batch.drop_constraint(op.f("ck_stages_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_stages_kind"), f"kind IN ({', '.join(map(repr, kinds))})")


def upgrade() -> None:
    _set_kinds(NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stages WHERE kind = 'tokenize'"))
    _set_kinds(OLD_KINDS)
