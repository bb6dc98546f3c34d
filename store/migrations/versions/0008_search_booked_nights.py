"""search_booked: an index covering the search's probe of an apartment's taken nights.

For each hit of a city + dates search, ``NOT EXISTS`` looks for a stay of that
apartment overlapping the dates. By the primary key it found the apartment's stays,
then read each one's row for its dates; with ``(apartment_id, start, end)`` the
probe is answered from the index.

Revision ID: 0008_search_booked_nights
Revises: 0007_search_covering
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_search_booked_nights"
down_revision: str | Sequence[str] | None = "0007_search_covering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``ix_search_booked_nights``."""
    op.create_index("ix_search_booked_nights", "search_booked",
                    ["apartment_id", "start", "end"])


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_search_booked_nights", table_name="search_booked")
