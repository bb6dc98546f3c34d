"""search_apartments: an index covering a city search's filter and order.

A city + dates search counted and sorted every hit of the city, reading each table
row on the way. With ``(city_key, price_per_night, apartment_id, capacity)`` the page
of ids and the total come from the index alone, in price order; only the page's own
rows are then read by key.

Revision ID: 0007_search_covering
Revises: 0006_snapshots
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007_search_covering"
down_revision: str | Sequence[str] | None = "0006_snapshots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``ix_search_apartments_city_price``; drop ``ix_search_apartments_city_key``."""
    op.create_index("ix_search_apartments_city_price", "search_apartments",
                    ["city_key", "price_per_night", "apartment_id", "capacity"])
    op.drop_index("ix_search_apartments_city_key", table_name="search_apartments")


def downgrade() -> None:
    """The city key's own index again, without the covering one."""
    op.create_index("ix_search_apartments_city_key", "search_apartments", ["city_key"])
    op.drop_index("ix_search_apartments_city_price", table_name="search_apartments")
