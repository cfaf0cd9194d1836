"""tokenize: the data path's `tokenize` stage (one source's documents -> token shards) as a stage kind"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ablate.track.migrations.stage_kinds import set_stage_kinds

revision = "0004"
down_revision = "0003"

OLD_KINDS = ("teacher", "importance", "prune", "distill", "eval", "benchmark")
NEW_KINDS = ("tokenize", *OLD_KINDS)


def upgrade() -> None:
    set_stage_kinds(NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stages WHERE kind = 'tokenize'"))
    set_stage_kinds(OLD_KINDS)
