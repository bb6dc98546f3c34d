"""outbox: the relay deletes what it published; ids never reused on SQLite.

Published rows were marked (``published_at``) and kept forever, so the outbox grew
with history. The relay now deletes them; this drops the ones already published.
On SQLite the table is rebuilt ``AUTOINCREMENT``: without it a new row may take the
id of a deleted one, behind the relay's cursor.

Revision ID: 0005_outbox_prune
Revises: 0004_dead_letters
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_outbox_prune"
down_revision: str | Sequence[str] | None = "0004_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Delete the published rows; rebuild the table AUTOINCREMENT on SQLite."""
    op.execute(sa.text("DELETE FROM outbox WHERE published_at IS NOT NULL"))
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("outbox", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    """Nothing to undo: the deleted rows were published, and ids may stay unique."""
