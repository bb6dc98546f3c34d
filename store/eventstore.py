"""Reads from the store: streams for rehydration, stored replies for idempotency."""

from __future__ import annotations

from sqlalchemy import Engine, Select, select

from messages.base import Envelope
from store.tables import events_table, inbox_table

_NOT_SEEN = object()


def head_query(stream_id: str) -> Select[int]:
    """The position of a stream's newest event (no row: the stream is empty)."""
    return (select(events_table.c.position).where(events_table.c.stream_id == stream_id)
            .order_by(events_table.c.version.desc()).limit(1))


class EventStore:
    """Read side of the store; safe to use from any thread (pooled connections).

    Args:
        engine: the store's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, stream_id: str, *, limit: int | None = None) -> list[Envelope]:
        """Every event of a stream (or its first ``limit``), in version order."""
        q = (
            select(events_table.c.body)
            .where(events_table.c.stream_id == stream_id)
            .order_by(events_table.c.version)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            bodies = conn.execute(q).scalars().all()
        return [Envelope.from_json(b, max_bytes=1 << 30) for b in bodies]

    def head(self, stream_id: str) -> int | None:
        """The position of a stream's newest event; None when it has none."""
        with self.engine.connect() as conn:
            found = conn.execute(head_query(stream_id)).scalar()
        return None if found is None else int(found)

    def seen(self, consumer: str, message_id: str) -> tuple[bool, bytes | None]:
        """Whether ``consumer`` handled ``message_id``, and the reply it gave."""
        found = self.handled(consumer, message_id)
        return (False, None) if found is None else (True, found[0])

    def handled(self, consumer: str, message_id: str) -> tuple[bytes | None, str | None] | None:
        """The reply ``consumer`` gave to ``message_id`` and what it asked; None if new."""
        q = select(inbox_table.c.reply, inbox_table.c.body_hash).where(
            inbox_table.c.consumer == consumer, inbox_table.c.message_id == message_id
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is None:
            return None
        return row[0], row[1]
