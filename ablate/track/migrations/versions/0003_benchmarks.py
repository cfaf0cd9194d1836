"""benchmarks: lm-eval results of benchmark stages (task, metric, value, standard error), and
`benchmark` as a stage kind

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = ("teacher", "importance", "prune", "distill", "eval")
NEW_KINDS = (*OLD_KINDS, "benchmark")


def _kinds(kinds: tuple[str, ...]) -> str:
    return f"kind IN ({', '.join(repr(k) for k in kinds)})"


def _set_kinds(kinds: tuple[str, ...]) -> None:
    with op.batch_alter_table("stages") as batch:  # SQLite: the table is copied with the new check
        batch.drop_constraint(op.f("ck_stages_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_stages_kind"), _kinds(kinds))


def upgrade() -> None:
    op.create_table(
        "benchmark_results",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("stage_hash", sa.String(length=128), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.Column("stderr", sa.Float(precision=53), nullable=True),
        sa.Column("samples", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("stage_hash", "task", "metric"),
    )
    op.create_index(op.f("ix_benchmark_results_stage_hash"), "benchmark_results", ["stage_hash"])
    _set_kinds(NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stages WHERE kind = 'benchmark'"))
    _set_kinds(OLD_KINDS)
    op.drop_index(op.f("ix_benchmark_results_stage_hash"), table_name="benchmark_results")
    op.drop_table("benchmark_results")
