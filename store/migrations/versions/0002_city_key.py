"""search_apartments.city_key: the casefolded city, indexed, for Unicode-aware search.

Backfilled in Python (``str.casefold``): neither SQLite's nor PostgreSQL's ``lower()``
folds 'STRASSE' and 'straße' alike. The column is added nullable, filled, then made
NOT NULL (SQLite rebuilds the table for that, in batch mode).

Revision ID: 0002_city_key
Revises: 0001_initial
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_city_key"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    """Add ``city_key``, fill it from ``city`` for the rows already there, index it."""
    op.add_column("search_apartments",
                  sa.Column("city_key", sa.String(length=300), nullable=True))
    apts = sa.table("search_apartments", sa.column("apartment_id", sa.String()),
                    sa.column("city", sa.String()), sa.column("city_key", sa.String()))
    bind = op.get_bind()
    rows = bind.execute(sa.select(apts.c.apartment_id, apts.c.city)).all()
    update = (sa.update(apts).where(apts.c.apartment_id == sa.bindparam("aid"))
              .values(city_key=sa.bindparam("key")))
    for i in range(0, len(rows), _BATCH):
        bind.execute(update, [{"aid": r.apartment_id, "key": r.city.casefold()}
                              for r in rows[i:i + _BATCH]])
    with op.batch_alter_table("search_apartments") as batch:
        batch.alter_column("city_key", existing_type=sa.String(length=300), nullable=False)
        batch.create_index("ix_search_apartments_city_key", ["city_key"], unique=False)


def downgrade() -> None:
    """Drop ``city_key`` and its index."""
    with op.batch_alter_table("search_apartments") as batch:
        batch.drop_index("ix_search_apartments_city_key")
        batch.drop_column("city_key")
