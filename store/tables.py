"""SQLModel tables: event store, outbox, inbox, snapshots, and the handlers' own tables.

The event store's unique ``(stream_id, version)`` is the last guard against two
writers; the inbox's primary key ``(consumer, message_id)`` makes every consumer
idempotent; the outbox holds what the relay still has to publish.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class EventRow(SQLModel, table=True):
    """One recorded event; ``position`` orders the whole store."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("stream_id", "version", name="uq_events_stream_version"),)

    position: int | None = Field(default=None, primary_key=True)
    stream_id: str = Field(max_length=200)
    version: int
    event_id: str = Field(max_length=100, unique=True)
    type: str = Field(max_length=100)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    recorded_at: datetime


class OutboxRow(SQLModel, table=True):
    """An event waiting for the relay, deleted once the broker confirmed it: every row
    is unpublished, and the relay reads them in ``id`` order (the primary key).

    ``AUTOINCREMENT`` on SQLite: ids are never reused after deletes, so the relay's
    cursor stays right.
    """

    __tablename__ = "outbox"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=100)
    type: str = Field(max_length=100)
    exchange: str = Field(max_length=200)
    routing_key: str = Field(max_length=200)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class InboxRow(SQLModel, table=True):
    """A message a consumer has handled, with the reply it gave (for re-sends)."""

    __tablename__ = "inbox"

    consumer: str = Field(primary_key=True, max_length=50)
    message_id: str = Field(primary_key=True, max_length=100)
    reply: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    recorded_at: datetime
    # What the message asked (Envelope.content_hash): a re-used message_id with another
    # request is refused, not answered with this row's reply. None: not recorded.
    body_hash: str | None = Field(default=None, max_length=64)


class NotificationRow(SQLModel, table=True):
    """A message to a person; one per (event, recipient) by construction."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("event_id", "recipient", name="uq_notification_once"),)

    id: str = Field(primary_key=True, max_length=100)
    event_id: str = Field(max_length=100)
    event_type: str = Field(max_length=100)
    recipient: str = Field(max_length=100, index=True)
    channel: str = Field(max_length=20)
    subject: str = Field(max_length=200)
    text: str = Field(max_length=2000)
    created_at: datetime


class SearchApartmentRow(SQLModel, table=True):
    """The search actor's own copy of an apartment.

    ``city_key`` is ``city.casefold()``, computed in Python when the row is written: SQL
    has no Unicode case folding that is the same on SQLite and PostgreSQL, and folding in
    the query would defeat the index. Folding can lengthen a string ('ß' -> 'ss'), hence
    the wider column.
    """

    __tablename__ = "search_apartments"
    # A city's hits in price order, with what the filter reads (capacity; the id for
    # the booked and delisted probes), from the index alone: no table row is read and
    # nothing sorted until the page's own rows are fetched (migration 0007).
    __table_args__ = (Index("ix_search_apartments_city_price", "city_key", "price_per_night",
                            "apartment_id", "capacity"),)

    apartment_id: str = Field(primary_key=True, max_length=100)
    city: str = Field(max_length=100, index=True)
    city_key: str = Field(max_length=300)  # indexed first in ix_search_apartments_city_price
    title: str = Field(max_length=200)
    price_per_night: int = Field(index=True)
    # Prices compare within a currency: a search's price range does not convert.
    currency: str = Field(max_length=3, sa_column_kwargs={"server_default": "EUR"})
    capacity: int


class SearchBookedRow(SQLModel, table=True):
    """Nights [start, end) an apartment is not offered for."""

    __tablename__ = "search_booked"
    # The search's "taken for these dates?" probe, from the index alone (migration 0008).
    __table_args__ = (Index("ix_search_booked_nights", "apartment_id", "start", "end"),)

    apartment_id: str = Field(primary_key=True, max_length=100)
    reservation_id: str = Field(primary_key=True, max_length=100)
    start: date
    end: date


class GatewayChargeRow(SQLModel, table=True):
    """The simulated payment gateway's ledger: one charge per idempotency key."""

    __tablename__ = "sim_gateway_charges"

    idempotency_key: str = Field(primary_key=True, max_length=100)
    charge_id: str = Field(max_length=100)
    amount: int
    card_token: str = Field(max_length=100)
    status: str = Field(max_length=20)
    created_at: datetime


class GatewayRefundRow(SQLModel, table=True):
    """The simulated gateway's refunds: one per idempotency key."""

    __tablename__ = "sim_gateway_refunds"

    idempotency_key: str = Field(primary_key=True, max_length=100)
    charge_key: str = Field(max_length=100, index=True)
    refund_id: str = Field(max_length=100)
    amount: int
    created_at: datetime


class SearchDelistedRow(SQLModel, table=True):
    """Apartments search does not offer while their owner has them delisted."""

    __tablename__ = "search_delisted"

    apartment_id: str = Field(primary_key=True, max_length=100)


class TimerRow(SQLModel, table=True):
    """A durable timer: fire ``command`` for an apartment at ``due_at``.

    Written in the same commit as the event that starts it and deleted in the commit
    that makes it moot, so it exists exactly while it matters, across restarts.
    """

    __tablename__ = "timers"

    timer_id: str = Field(primary_key=True, max_length=150)
    apartment_id: str = Field(max_length=100)
    reservation_id: str = Field(max_length=100)
    command: str = Field(max_length=100)
    due_at: datetime = Field(index=True)
    attempts: int = 0
    fired_at: datetime | None = None


class EmailDeliveryRow(SQLModel, table=True):
    """A stored notification that the SMTP channel handed to the mail server."""

    __tablename__ = "email_deliveries"

    notification_id: str = Field(primary_key=True, max_length=100)
    address: str = Field(max_length=200)
    delivered_at: datetime


class SnapshotRow(SQLModel, table=True):
    """An entity's state at ``version`` of its stream: rehydration reads only what follows.

    One row per stream, replaced (deleted and inserted again, as the writer's batched
    row effects) in the commit that appends the events it covers, so it never runs
    ahead of them. ``schema_tag`` names the format of ``body``: a row of another format
    is not read.
    """

    __tablename__ = "snapshots"

    stream_id: str = Field(primary_key=True, max_length=200)
    version: int
    schema_tag: str = Field(max_length=50)
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    taken_at: datetime


class DeadLetterRow(SQLModel, table=True):
    """A message a consumer could not handle, recorded as it landed in the dead letters.

    Browsing reads these rows and changes nothing; only replay (``status``: dead ->
    replaying -> replayed) and purge write. ``letter_key`` makes recording idempotent:
    a dead letter redelivered to the recorder is recorded once.
    """

    __tablename__ = "dead_letters"

    seq: int | None = Field(default=None, primary_key=True)
    letter_key: str = Field(max_length=64, unique=True)
    status: str = Field(max_length=20, index=True)
    recorded_at: datetime
    queue: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=100)
    detail: str | None = Field(default=None, max_length=1000)
    type: str | None = Field(default=None, max_length=100)
    message_id: str | None = Field(default=None, max_length=200, index=True)
    correlation_id: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=200)
    headers: str = Field(sa_column=Column(Text, nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    claimed_at: datetime | None = None
    replayed_at: datetime | None = None
    replays: int = 0
    last_error: str | None = Field(default=None, max_length=1000)


class StoreIdentityRow(SQLModel, table=True):
    """The store's id: one row (``id`` 1), written by the migration that made the table.

    Nodes announce it to each other (``store.db.store_identity``), so one cluster never
    runs on two stores.
    """

    __tablename__ = "store_identity"

    id: int | None = Field(default=None, primary_key=True)
    store_id: str = Field(max_length=36)
    created_at: datetime


events_table = EventRow.__table__  # type: ignore[attr-defined]
outbox_table = OutboxRow.__table__  # type: ignore[attr-defined]
inbox_table = InboxRow.__table__  # type: ignore[attr-defined]
notifications_table = NotificationRow.__table__  # type: ignore[attr-defined]
search_apartments_table = SearchApartmentRow.__table__  # type: ignore[attr-defined]
search_booked_table = SearchBookedRow.__table__  # type: ignore[attr-defined]
gateway_charges_table = GatewayChargeRow.__table__  # type: ignore[attr-defined]
gateway_refunds_table = GatewayRefundRow.__table__  # type: ignore[attr-defined]
search_delisted_table = SearchDelistedRow.__table__  # type: ignore[attr-defined]
timers_table = TimerRow.__table__  # type: ignore[attr-defined]
email_deliveries_table = EmailDeliveryRow.__table__  # type: ignore[attr-defined]
dead_letters_table = DeadLetterRow.__table__  # type: ignore[attr-defined]
snapshots_table = SnapshotRow.__table__  # type: ignore[attr-defined]
store_identity_table = StoreIdentityRow.__table__  # type: ignore[attr-defined]
