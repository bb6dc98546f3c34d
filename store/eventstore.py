"""Reads from the store: streams for rehydration, stored replies for idempotency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    Engine,
    Select,
    String,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)

from messages.base import Envelope
from store.tables import events_table, inbox_table, snapshots_table

_NOT_SEEN = object()
_MAX_BYTES = 1 << 30


def head_query(stream_id: str) -> Select[int]:
    """The position of a stream's newest event (no row: the stream is empty)."""
    return (select(events_table.c.position).where(events_table.c.stream_id == stream_id)
            .order_by(events_table.c.version.desc()).limit(1))


@dataclass(frozen=True)
class Snapshot:
    """A stream's state at ``version``, in the format ``schema_tag`` names."""

    stream_id: str
    version: int
    schema_tag: str
    body: bytes


def _resume_query() -> Select[Any]:
    """A stream's snapshot row (``kind`` 0), then its events from the snapshot's
    version on (``kind`` 1): one round trip where two cost twice as much."""
    snapshot = snapshots_table.c
    stream: BindParameter[str] = bindparam("stream_id")
    at = select(snapshot.version).where(snapshot.stream_id == stream).scalar_subquery()
    rows = union_all(
        select(literal(0).label("kind"), snapshot.version, snapshot.schema_tag,
               snapshot.body).where(snapshot.stream_id == stream),
        select(literal(1), events_table.c.version, cast(null(), String(50)),
               events_table.c.body).where(events_table.c.stream_id == stream,
                                          events_table.c.version >= func.coalesce(at, 0)),
    ).subquery()
    return select(rows).order_by(rows.c.kind, rows.c.version)


# Built once: making a statement costs more than running it on a short stream.
_RESUME = _resume_query()
_STREAM = (select(events_table.c.body)
           .where(events_table.c.stream_id == bindparam("stream_id"),
                  events_table.c.version > bindparam("after"))
           .order_by(events_table.c.version))


class EventStore:
    """Read side of the store; safe to use from any thread (pooled connections).

    Args:
        engine: the store's engine.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, stream_id: str, *, after: int = 0,
             limit: int | None = None) -> list[Envelope]:
        """The events of a stream after version ``after`` (or their first ``limit``),
        in version order."""
        q = _STREAM if limit is None else _STREAM.limit(limit)
        with self.engine.connect() as conn:
            bodies = conn.execute(q, {"stream_id": stream_id, "after": after}).scalars().all()
        return [Envelope.from_json(b, max_bytes=_MAX_BYTES) for b in bodies]

    def resume(self, stream_id: str) -> tuple[Snapshot | None, list[Envelope]]:
        """The stream's snapshot and the events after it, in one statement.

        Without a snapshot, or with one whose version the stream does not reach (it
        cannot be the state of these events), it is ``(None, every event)``.
        """
        with self.engine.connect() as conn:
            rows = conn.execute(_RESUME, {"stream_id": stream_id}).all()
            snapshot = None
            if rows and rows[0].kind == 0:
                head, *rows = rows
                snapshot = Snapshot(stream_id, int(head.version), str(head.schema_tag),
                                    bytes(head.body))
                # the events from the snapshot's own: its version must be there
                if rows and rows[0].version == snapshot.version:
                    rows = rows[1:]
                else:
                    snapshot = None
                    rows = conn.execute(_STREAM, {"stream_id": stream_id, "after": 0}).all()
        return snapshot, [Envelope.from_json(r.body, max_bytes=_MAX_BYTES) for r in rows]

    def of_type(self, type_name: str, *, stream_prefix: str, after: int = 0,
                limit: int = 500) -> list[tuple[int, Envelope]]:
        """Events of ``type_name`` in the streams named ``stream_prefix...``, after store
        position ``after``, oldest first, at most ``limit``, each with its position.

        For operator scans: a caller pages on with the last position it got, so each
        read is bounded however large the store is. Keyed by position (the primary
        key), not by stream id, whose order depends on the database's collation.
        """
        ev = events_table.c
        q = (select(ev.position, ev.body)
             .where(ev.position > after, ev.type == type_name,
                    ev.stream_id.startswith(stream_prefix, autoescape=True))
             .order_by(ev.position).limit(limit))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(int(r.position), Envelope.from_json(r.body, max_bytes=_MAX_BYTES))
                for r in rows]

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
