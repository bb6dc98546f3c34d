"""The outbox relay: publish recorded events, persistent and confirmed, in order.

It reads outbox rows in id order, publishes a batch, waits for the broker's
confirms, then deletes the rows: the outbox holds only what is still to publish, so
it does not grow with history (the events table keeps every event). A crash between
confirm and delete republishes those rows; consumers are idempotent, so that is
safe. A broker failure keeps the rows and retries with bounded backoff.

Two ways, by database:

* SQLite (one node): rows are read past a cursor and deleted through the store
  writer, so the file keeps one writer and publishing never holds its lock. The
  delete is a ``lazy`` commit: it rides in the writer's next transaction rather
  than paying a transaction and an fsync of its own. (SQLite ids never repeat:
  the table is ``AUTOINCREMENT``, so a cursor past deleted rows stays right.)
* PostgreSQL (several nodes share the outbox): each round claims a batch with
  ``SELECT ... FOR UPDATE SKIP LOCKED``, publishes it and deletes it in that same
  transaction. Every node's relay thus publishes a disjoint share, nothing is
  published by two relays at once, and, with no cursor, a row whose id was taken
  before an earlier-committed row's (ids are handed out at insert, not at commit) is
  never skipped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import Engine, bindparam, delete, func, select, text

from broker.base import Broker, Outgoing, Publisher
from store import Commit, StoreWriter
from store.rawsql import fetch
from store.tables import outbox_table
from store.writer import DeleteRow
from supervisor import PollingService

log = logging.getLogger(__name__)


class _Row(NamedTuple):
    id: int
    event_id: str
    type: str
    exchange: str
    routing_key: str
    body: bytes


# One round on SQLite: compiled once, run on the DBAPI cursor (store.rawsql), as this
# runs once per command at a low rate.
_ROUND = (select(outbox_table.c.id, outbox_table.c.event_id, outbox_table.c.type,
                 outbox_table.c.exchange, outbox_table.c.routing_key, outbox_table.c.body)
          .where(outbox_table.c.id > bindparam("cursor"))
          .order_by(outbox_table.c.id).limit(bindparam("n")))


class Relay(PollingService):
    """Publishes the outbox; woken by the writer after each commit.

    Args:
        engine: the store (reads).
        writer: deletes the published rows.
        broker: gives the publisher.
        batch: most rows per publish round.
        max_delay: cap on the reconnect backoff.
    """

    def __init__(self, engine: Engine, writer: StoreWriter, broker: Broker, *,
                 batch: int, max_delay: float) -> None:
        # Polls every 0.1 s besides the writer's wake-ups: an events-role process in
        # another process writes to the same outbox without waking this relay.
        super().__init__("relay", 0.1, max_delay=max_delay, retry_delay=0.1)
        self._engine = engine
        self._writer = writer
        self._broker = broker
        self._batch = batch
        self._publisher: Publisher | None = None
        self._cursor = 0
        self._claims = engine.dialect.name == "postgresql"
        self.published = 0

    def backlog(self) -> int:
        """Rows not yet published (counted by the database, not fetched)."""
        q = (select(func.count()).select_from(outbox_table)
             .where(outbox_table.c.id > self._cursor))
        with self._engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def facts(self) -> dict[str, Any]:
        """Failed rounds and rows published (the backlog is a query: see backlog())."""
        return {**super().facts(), "published": self.published}

    def poll(self) -> bool:
        """Publish one batch; True while full batches keep coming."""
        return self._round()

    def failed(self, exc: Exception) -> None:
        """The rows stay unpublished; drop the publisher so the retry reconnects."""
        self._close()

    def finished(self) -> None:
        """Close the publisher's connection."""
        self._close()

    def _round(self) -> bool:
        if self._claims:
            return self._claimed_round()
        with self._engine.connect() as conn:
            rows = [_Row(*r) for r in fetch(conn, "relay-round", _ROUND,
                                            {"cursor": self._cursor, "n": self._batch})]
        if not rows:
            return False
        self._publish(rows)
        ids = [r.id for r in rows]
        self._cursor = ids[-1]
        self.published += len(ids)
        self._writer.submit(Commit(stream_id=None, expected_version=0, lazy=True,
                                   effects=[DeleteRow(outbox_table, i) for i in ids],
                                   on_done=self._removed))
        return len(rows) == self._batch

    def _claimed_round(self) -> bool:
        """Claim, publish and delete one batch in one transaction (PostgreSQL)."""
        q = (select(outbox_table.c.id, outbox_table.c.event_id, outbox_table.c.type,
                    outbox_table.c.exchange, outbox_table.c.routing_key, outbox_table.c.body)
             .order_by(outbox_table.c.id).limit(self._batch)
             .with_for_update(skip_locked=True))
        with self._engine.begin() as conn:
            # The delete is a hint: if a crash loses it, the rows are published again,
            # which consumers shrug off. So the commit need not wait for the WAL flush.
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            rows = conn.execute(q).all()
            if not rows:
                return False
            self._publish(rows)
            conn.execute(delete(outbox_table).where(outbox_table.c.id.in_([r.id for r in rows])))
        self.published += len(rows)
        return len(rows) == self._batch

    def _publish(self, rows: Sequence[Any]) -> None:
        if self._publisher is None:
            self._publisher = self._broker.publisher()
        topo = self._broker.topology
        self._publisher.publish_confirmed([
            Outgoing(exchange=topo.exchange(r.exchange), routing_key=r.routing_key,
                     body=r.body, message_id=r.event_id, type=r.type)
            for r in rows])

    def _removed(self, exc: BaseException | None) -> None:
        """Writer thread: if the published rows could not be deleted, publish them again.

        The cursor already moved past them, so without a rewind they would stay until
        the node restarts; republishing is safe (consumers dedupe).
        """
        if exc is not None:
            log.warning("relay: deleting published rows failed (%r); republishing them", exc)
            self._cursor = 0
            self.wake()

    def _close(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                self._publisher.close()
            self._publisher = None
