"""search_candidates: what a spec's `search` enumerated, scored one-shot, retrained and chose"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "search_candidates",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "experiment_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("experiments.id", name=op.f("fk_search_candidates_experiment_id_experiments"),
                          ondelete="CASCADE"),
            nullable=False,
        ),  # fmt: skip
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("shape", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=False),
        sa.Column("prune_hash", sa.String(length=128), nullable=False),
        sa.Column("eval_hash", sa.String(length=128), nullable=False),
        sa.Column("metric", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(precision=53), nullable=True),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("trial_keys", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("winner", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_candidates")),
        sa.UniqueConstraint("experiment_id", "name", name=op.f("uq_search_candidates_experiment_id_name")),
    )


def downgrade() -> None:
    op.drop_table("search_candidates")
