"""Reads from the store: streams for rehydration, stored replies for idempotency."""

from __future__ import annotations

from sqlalchemy import Engine, select

from messages.base import Envelope
from store.tables import events_table, inbox_table

_NOT_SEEN = object()


class EventStore:
    """Read side of the store; safe to use from any thread (pooled connections).

    Args:
        engine: the store's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, stream_id: str) -> list[Envelope]:
        """Every event of a stream, in version order."""
        q = (
            select(events_table.c.body)
            .where(events_table.c.stream_id == stream_id)
            .order_by(events_table.c.version)
        )
        with self.engine.connect() as conn:
            bodies = conn.execute(q).scalars().all()
        return [Envelope.from_json(b, max_bytes=1 << 30) for b in bodies]

    def seen(self, consumer: str, message_id: str) -> tuple[bool, bytes | None]:
        """Whether ``consumer`` handled ``message_id``, and the reply it gave."""
        q = select(inbox_table.c.reply).where(
            inbox_table.c.consumer == consumer, inbox_table.c.message_id == message_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return False, None
        reply: bytes | None = row[0]
        return True, reply
