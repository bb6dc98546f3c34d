"""search_apartments.currency: a hit's price names its currency (ApartmentAdded v2).

Rows written before it were listed by version 1 messages, priced in euro cents, so
the column's default for them is ``EUR``.

Revision ID: 0009_search_currency
Revises: 0008_search_booked_nights
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_search_currency"
down_revision: str | Sequence[str] | None = "0008_search_booked_nights"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``currency``, ``EUR`` for the rows already there."""
    op.add_column("search_apartments",
                  sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"))


def downgrade() -> None:
    """Drop ``currency``."""
    with op.batch_alter_table("search_apartments") as batch:
        batch.drop_column("currency")
