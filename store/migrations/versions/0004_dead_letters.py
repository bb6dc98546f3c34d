"""dead_letters: each dead letter recorded in the store as it lands.

Browsing the dead-letter queue itself (``basic.get`` and requeue) raised every
message's delivery count and reordered them; reading these rows changes nothing.

Revision ID: 0004_dead_letters
Revises: 0003_inbox_body_hash
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_dead_letters"
down_revision: str | Sequence[str] | None = "0003_inbox_body_hash"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(at: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(at, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create ``dead_letters`` with its indexes."""
    op.create_table(
        "dead_letters",
        sa.Column("seq", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("letter_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        _when("recorded_at"),
        sa.Column("queue", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("detail", sa.String(length=1000), nullable=True),
        sa.Column("type", sa.String(length=100), nullable=True),
        sa.Column("message_id", sa.String(length=200), nullable=True),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("reply_to", sa.String(length=200), nullable=True),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        _when("claimed_at", nullable=True),
        _when("replayed_at", nullable=True),
        sa.Column("replays", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("letter_key"),
    )
    op.create_index("ix_dead_letters_status", "dead_letters", ["status"])
    op.create_index("ix_dead_letters_message_id", "dead_letters", ["message_id"])


def downgrade() -> None:
    """Drop ``dead_letters``."""
    op.drop_table("dead_letters")
