"""align: the `align` stage kind (an instruction-tuning or preference stage after distillation)"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ablate.track.migrations.stage_kinds import set_stage_kinds

revision = "0006"
down_revision = "0005"

OLD_KINDS = ("tokenize", "teacher", "importance", "prune", "distill", "eval", "benchmark")
NEW_KINDS = (*OLD_KINDS, "align")


def upgrade() -> None:
    set_stage_kinds(NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM stages WHERE kind = 'align'"))
    set_stage_kinds(OLD_KINDS)
