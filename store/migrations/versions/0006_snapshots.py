"""snapshots: an entity's state at a version of its stream, for rehydration.

An apartment's actor folded its whole stream on every activation, so the time to
bring it back grew with its history. It now writes its state every few hundred
events (in the commit that appends them) and rehydrates from the latest snapshot plus
the events after it. One row per stream, replaced each time; ``schema_tag`` names the
format of ``body``, so a row written by other code is not read.

Revision ID: 0006_snapshots
Revises: 0005_outbox_prune
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_snapshots"
down_revision: str | Sequence[str] | None = "0005_outbox_prune"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``snapshots``."""
    op.create_table(
        "snapshots",
        sa.Column("stream_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("schema_tag", sa.String(length=50), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream_id"),
    )


def downgrade() -> None:
    """Drop ``snapshots``: rehydration replays whole streams again."""
    op.drop_table("snapshots")
