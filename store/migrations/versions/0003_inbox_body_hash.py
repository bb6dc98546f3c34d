"""inbox.body_hash: what each handled message asked, to refuse a re-used message_id.

Nullable: rows written before this revision have no hash, and a re-send that finds
one of them is answered from the inbox without the check.

Revision ID: 0003_inbox_body_hash
Revises: 0002_city_key
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_inbox_body_hash"
down_revision: str | Sequence[str] | None = "0002_city_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable ``body_hash`` column."""
    op.add_column("inbox", sa.Column("body_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Drop ``body_hash``."""
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("body_hash")
