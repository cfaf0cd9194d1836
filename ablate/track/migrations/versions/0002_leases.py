"""leases: which live submission holds a running stage or trial (lease_owner, lease_until)

Two submissions at once must not run one stage (or one trial) twice: a submission claims a row by a
conditional UPDATE that sets these two columns, renews `lease_until` while it works, and clears them when
it is done. A row whose lease ran out (or whose holder's process is gone) may be taken over.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

TABLES = ("stages", "trials")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("lease_owner", sa.String(length=255), nullable=True))
            batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease_until")
            batch.drop_column("lease_owner")
