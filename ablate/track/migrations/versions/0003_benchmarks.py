"""benchmarks: lm-eval results of benchmark stages (task, metric, value, standard error), and
`benchmark` as a stage kind
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ablate.track.migrations.stage_kinds import set_stage_kinds

revision = "0003"
down_revision = "0002"

OLD_KINDS = ("teacher", "importance", "prune", "distill", "eval")
NEW_KINDS = (*OLD_KINDS, "benchmark")


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
    set_stage_kinds(NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stages WHERE kind = 'benchmark'"))
    set_stage_kinds(OLD_KINDS)
    op.drop_index(op.f("ix_benchmark_results_stage_hash"), table_name="benchmark_results")
    op.drop_table("benchmark_results")
