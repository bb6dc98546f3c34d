"""store_identity: one row naming this store, written once.

Nodes announce it in their membership beats, so a node started on another store is
refused instead of joining the cluster: two stores behind one set of partitions
would each hold half of every apartment's history. The id is made here, by the
migration, so every store has exactly one from its first upgrade on (a store
migrated earlier gets its id when it reaches this revision) and no node ever has to
race another to write it.

Revision ID: 0010_store_identity
Revises: 0009_search_currency
Create Date: 2026-12-03
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010_store_identity"
down_revision: str | Sequence[str] | None = "0009_search_currency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``store_identity`` and write the store's one row."""
    table = op.create_table(
        "store_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "store_id": str(uuid.uuid4()),
                            "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    """Drop ``store_identity``: the store forgets its id (upgrading again makes a new one)."""
    op.drop_table("store_identity")
