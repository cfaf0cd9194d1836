"""The one way a migration changes which stage kinds the `stages` table accepts.

Its CHECK constraint names every kind, and SQLite cannot alter a CHECK in place, so each new kind is a
migration that copies the table with the new check (batch mode). Applied migrations import this: change it
only in ways that keep their meaning (a new helper, not a new behaviour of this one).
"""

from __future__ import annotations

from alembic import op


def set_stage_kinds(kinds: tuple[str, ...]) -> None:
    """Replace `ck_stages_kind` with one that accepts exactly `kinds`."""
    with op.batch_alter_table("stages") as batch:  # SQLite: the table is copied with the new check
        batch.drop_constraint(op.f("ck_stages_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_stages_kind"), f"kind IN ({', '.join(map(repr, kinds))})")
