"""outbox: drop ``published_at`` and its partial index.

The relay deletes a row once the broker confirmed it, so every row left in the
outbox is unpublished: the column was always NULL and the index on ``id`` where it
is NULL covered the whole table, which the primary key already orders. On SQLite the
table is rebuilt, ``AUTOINCREMENT`` kept (ids are never reused behind the relay's
cursor).

Revision ID: 0011_outbox_published_at
Revises: 0010_store_identity
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_outbox_published_at"
down_revision: str | Sequence[str] | None = "0010_store_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PUBLISHED_AT_NULL = sa.text("published_at IS NULL")


def upgrade() -> None:
    """Drop the index, then the column (a table rebuild on SQLite)."""
    op.drop_index("ix_outbox_unpublished", table_name="outbox")
    with op.batch_alter_table("outbox", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("published_at")


def downgrade() -> None:
    """Add the column back (NULL: every row left is unpublished) and its index."""
    op.add_column("outbox", sa.Column("published_at", sa.DateTime(timezone=True),
                                      nullable=True))
    op.create_index("ix_outbox_unpublished", "outbox", ["id"],
                    sqlite_where=_PUBLISHED_AT_NULL, postgresql_where=_PUBLISHED_AT_NULL)
