"""initial schema: experiments, trials, stages, trial_stages, metrics, events"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None

STATUSES = "'pending', 'running', 'completed', 'failed', 'cancelled'"


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", _id(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("spec_text", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(length=128), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("cancel_requested_at"),
        sa.Column("mlflow_experiment_id", sa.String(length=64), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", name=op.f("uq_experiments_name")),
    )
    op.create_table(
        "stages",
        sa.Column("id", _id(), nullable=False),
        sa.Column("hash", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("parents", _json(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("artifact_uri", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.CheckConstraint(
            "kind IN ('teacher', 'importance', 'prune', 'distill', 'eval')", name=op.f("ck_stages_kind")
        ),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_stages_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stages")),
        sa.UniqueConstraint("hash", name=op.f("uq_stages_hash")),
    )
    op.create_table(
        "trials",
        sa.Column("id", _id(), nullable=False),
        sa.Column("experiment_id", _id(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("overrides", _json(), nullable=False),
        sa.Column("config", _json(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_trials_status")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_trials_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("experiment_id", "key", name=op.f("uq_trials_experiment_id_key")),
    )
    op.create_index(op.f("ix_trials_status"), "trials", ["status"])
    op.create_table(
        "events",
        sa.Column("id", _id(), nullable=False),
        _ts("time", nullable=False),
        sa.Column("experiment_id", _id(), nullable=True),
        sa.Column("trial_id", _id(), nullable=True),
        sa.Column("stage_hash", sa.String(length=128), nullable=True),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.CheckConstraint("level IN ('debug', 'info', 'warning', 'error')", name=op.f("ck_events_level")),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_events_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f("fk_events_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_experiment_id_id"), "events", ["experiment_id", "id"])
    op.create_index(op.f("ix_events_trial_id"), "events", ["trial_id"])
    op.create_table(
        "metrics",
        sa.Column("id", _id(), nullable=False),
        sa.Column("trial_id", _id(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f("fk_metrics_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metrics")),
        sa.UniqueConstraint("trial_id", "name", "step", name=op.f("uq_metrics_trial_id_name_step")),
    )
    op.create_table(
        "trial_stages",
        sa.Column("trial_id", _id(), nullable=False),
        sa.Column("stage_id", _id(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stage_id"], ["stages.id"], name=op.f("fk_trial_stages_stage_id_stages"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"], ["trials.id"], name=op.f("fk_trial_stages_trial_id_trials"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("trial_id", "stage_id", name=op.f("pk_trial_stages")),
    )
    op.create_index(op.f("ix_trial_stages_stage_id"), "trial_stages", ["stage_id"])


def downgrade() -> None:
    op.drop_table("trial_stages")
    op.drop_table("metrics")
    op.drop_table("events")
    op.drop_table("trials")
    op.drop_table("stages")
    op.drop_table("experiments")
