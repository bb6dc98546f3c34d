"""The initial schema: the event store, outbox, inbox and the handlers' own tables.

This is the schema ``SQLModel.metadata.create_all`` made before migrations existed.
A store created that way has every table but no ``alembic_version``: ``store.db``
stamps it at this revision. One made by an older release may lack the newest tables:
this revision then creates only the missing ones and keeps what is there.

Revision ID: 0001_initial
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("events", "outbox", "inbox", "notifications", "search_apartments", "search_booked",
          "sim_gateway_charges", "sim_gateway_refunds", "search_delisted", "timers",
          "email_deliveries")

_PUBLISHED_AT_NULL = sa.text("published_at IS NULL")


def _when(at: str) -> sa.Column[object]:
    """An aware timestamp column (``timestamptz`` on PostgreSQL): SQLModel's UTCDateTime."""
    return sa.Column(at, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    """Create the tables (only those missing, for a store made by ``create_all``)."""
    present = set(sa.inspect(op.get_bind()).get_table_names())

    def missing(name: str) -> bool:
        return name not in present

    if missing("events"):
        op.create_table(
            "events",
            sa.Column("position", sa.Integer(), nullable=False, autoincrement=True),
            sa.Column("stream_id", sa.String(length=200), nullable=False),
            sa.Column("version", sa.Integer(), nullable=False),
            sa.Column("event_id", sa.String(length=100), nullable=False),
            sa.Column("type", sa.String(length=100), nullable=False),
            sa.Column("body", sa.LargeBinary(), nullable=False),
            _when("recorded_at"),
            sa.PrimaryKeyConstraint("position"),
            sa.UniqueConstraint("event_id"),
            sa.UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),
        )
    if missing("outbox"):
        op.create_table(
            "outbox",
            sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
            sa.Column("event_id", sa.String(length=100), nullable=False),
            sa.Column("type", sa.String(length=100), nullable=False),
            sa.Column("exchange", sa.String(length=200), nullable=False),
            sa.Column("routing_key", sa.String(length=200), nullable=False),
            sa.Column("body", sa.LargeBinary(), nullable=False),
            sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_outbox_unpublished", "outbox", ["id"], unique=False,
                        sqlite_where=_PUBLISHED_AT_NULL, postgresql_where=_PUBLISHED_AT_NULL)
    if missing("inbox"):
        op.create_table(
            "inbox",
            sa.Column("consumer", sa.String(length=50), nullable=False),
            sa.Column("message_id", sa.String(length=100), nullable=False),
            sa.Column("reply", sa.LargeBinary(), nullable=True),
            _when("recorded_at"),
            sa.PrimaryKeyConstraint("consumer", "message_id"),
        )
    if missing("notifications"):
        op.create_table(
            "notifications",
            sa.Column("id", sa.String(length=100), nullable=False),
            sa.Column("event_id", sa.String(length=100), nullable=False),
            sa.Column("event_type", sa.String(length=100), nullable=False),
            sa.Column("recipient", sa.String(length=100), nullable=False),
            sa.Column("channel", sa.String(length=20), nullable=False),
            sa.Column("subject", sa.String(length=200), nullable=False),
            sa.Column("text", sa.String(length=2000), nullable=False),
            _when("created_at"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("event_id", "recipient", name="uq_notification_once"),
        )
        op.create_index("ix_notifications_recipient", "notifications", ["recipient"])
    if missing("search_apartments"):
        op.create_table(
            "search_apartments",
            sa.Column("apartment_id", sa.String(length=100), nullable=False),
            sa.Column("city", sa.String(length=100), nullable=False),
            sa.Column("title", sa.String(length=200), nullable=False),
            sa.Column("price_per_night", sa.Integer(), nullable=False),
            sa.Column("capacity", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("apartment_id"),
        )
        op.create_index("ix_search_apartments_city", "search_apartments", ["city"])
        op.create_index("ix_search_apartments_price_per_night", "search_apartments",
                        ["price_per_night"])
    if missing("search_booked"):
        op.create_table(
            "search_booked",
            sa.Column("apartment_id", sa.String(length=100), nullable=False),
            sa.Column("reservation_id", sa.String(length=100), nullable=False),
            sa.Column("start", sa.Date(), nullable=False),
            sa.Column("end", sa.Date(), nullable=False),
            sa.PrimaryKeyConstraint("apartment_id", "reservation_id"),
        )
    if missing("sim_gateway_charges"):
        op.create_table(
            "sim_gateway_charges",
            sa.Column("idempotency_key", sa.String(length=100), nullable=False),
            sa.Column("charge_id", sa.String(length=100), nullable=False),
            sa.Column("amount", sa.Integer(), nullable=False),
            sa.Column("card_token", sa.String(length=100), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            _when("created_at"),
            sa.PrimaryKeyConstraint("idempotency_key"),
        )
    if missing("sim_gateway_refunds"):
        op.create_table(
            "sim_gateway_refunds",
            sa.Column("idempotency_key", sa.String(length=100), nullable=False),
            sa.Column("charge_key", sa.String(length=100), nullable=False),
            sa.Column("refund_id", sa.String(length=100), nullable=False),
            sa.Column("amount", sa.Integer(), nullable=False),
            _when("created_at"),
            sa.PrimaryKeyConstraint("idempotency_key"),
        )
        op.create_index("ix_sim_gateway_refunds_charge_key", "sim_gateway_refunds",
                        ["charge_key"])
    if missing("search_delisted"):
        op.create_table(
            "search_delisted",
            sa.Column("apartment_id", sa.String(length=100), nullable=False),
            sa.PrimaryKeyConstraint("apartment_id"),
        )
    if missing("timers"):
        op.create_table(
            "timers",
            sa.Column("timer_id", sa.String(length=150), nullable=False),
            sa.Column("apartment_id", sa.String(length=100), nullable=False),
            sa.Column("reservation_id", sa.String(length=100), nullable=False),
            sa.Column("command", sa.String(length=100), nullable=False),
            _when("due_at"),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("fired_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("timer_id"),
        )
        op.create_index("ix_timers_due_at", "timers", ["due_at"])
    if missing("email_deliveries"):
        op.create_table(
            "email_deliveries",
            sa.Column("notification_id", sa.String(length=100), nullable=False),
            sa.Column("address", sa.String(length=200), nullable=False),
            _when("delivered_at"),
            sa.PrimaryKeyConstraint("notification_id"),
        )


def downgrade() -> None:
    """Drop every table (their indexes go with them)."""
    for name in reversed(TABLES):
        op.drop_table(name)
