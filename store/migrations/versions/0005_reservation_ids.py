"""reservation_ids: a reservation id belongs to one apartment, across the store.

Backfilled from the recorded ``ReservationRequested`` events (the first apartment to
use an id keeps it; a store that already has one id on two apartments keeps the
earlier).

Revision ID: 0005_reservation_ids
Revises: 0004_dead_letters
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_reservation_ids"
down_revision: str | Sequence[str] | None = "0004_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    """Create ``reservation_ids`` and fill it from the requests already recorded."""
    table = op.create_table(
        "reservation_ids",
        sa.Column("reservation_id", sa.String(length=100), nullable=False),
        sa.Column("apartment_id", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("reservation_id"),
    )
    events = sa.table("events", sa.column("position", sa.Integer),
                      sa.column("type", sa.String), sa.column("body", sa.LargeBinary))
    conn = op.get_bind()
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    query = (sa.select(events.c.body).where(events.c.type == "ReservationRequested")
             .order_by(events.c.position))
    for (body,) in conn.execute(query):
        env = json.loads(bytes(body))
        rid, apt = env.get("payload", {}).get("reservation_id"), env.get("apartment_id")
        if isinstance(rid, str) and isinstance(apt, str) and rid not in seen:
            seen.add(rid)
            rows.append({"reservation_id": rid, "apartment_id": apt})
        if len(rows) >= _BATCH:
            op.bulk_insert(table, rows)
            rows = []
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    """Drop ``reservation_ids``."""
    op.drop_table("reservation_ids")
