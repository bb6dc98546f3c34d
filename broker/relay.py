"""The outbox relay: publish recorded events, persistent and confirmed, in order.

It reads unpublished outbox rows in id order, publishes a batch, waits for the
broker's confirms, then marks the rows published (through the store writer, so the
store keeps one writer). A crash between confirm and mark republishes those rows;
consumers are idempotent, so that is safe. A broker failure keeps the rows and
retries with bounded backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from broker.base import Broker, Outgoing, Publisher
from store import Commit, StoreWriter
from store.tables import outbox_table

log = logging.getLogger(__name__)


class Relay:
    """Publishes the outbox; woken by the writer after each commit.

    Args:
        engine: the store (reads).
        writer: marks rows published.
        broker: gives the publisher.
        batch: most rows per publish round.
        max_delay: cap on the reconnect backoff.
    """

    name = "relay"

    def __init__(self, engine: Engine, writer: StoreWriter, broker: Broker, *,
                 batch: int = 500, max_delay: float = 10.0) -> None:
        self._engine = engine
        self._writer = writer
        self._broker = broker
        self._batch = batch
        self._max_delay = max_delay
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: Publisher | None = None
        self._cursor = 0
        self.published = 0
        self.failures = 0

    def start(self) -> None:
        """Start the relay thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current round."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        """True while the relay thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Something was committed: look at the outbox now."""
        self._wake.set()

    def backlog(self) -> int:
        """Rows not yet published."""
        q = select(outbox_table.c.id).where(outbox_table.c.published_at.is_(None))
        with self._engine.connect() as conn:
            return len(conn.execute(q).all())

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self._round():
                    pass
                delay = 0.1
            except Exception as exc:  # noqa: BLE001 - the rows stay; retry later
                self.failures += 1
                log.warning("relay: publishing failed (%r); retrying in %.1fs", exc, delay)
                self._close()
                self._stop.wait(delay)
                delay = min(delay * 2, self._max_delay)
        self._close()

    def _round(self) -> bool:
        q = (select(outbox_table.c.id, outbox_table.c.event_id, outbox_table.c.type,
                    outbox_table.c.exchange, outbox_table.c.routing_key, outbox_table.c.body)
             .where(outbox_table.c.published_at.is_(None), outbox_table.c.id > self._cursor)
             .order_by(outbox_table.c.id).limit(self._batch))
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return False
        if self._publisher is None:
            self._publisher = self._broker.publisher()
        topo = self._broker.topology
        self._publisher.publish_confirmed([
            Outgoing(exchange=topo.exchange(r.exchange), routing_key=r.routing_key,
                     body=r.body, message_id=r.event_id, type=r.type)
            for r in rows])
        ids = [r.id for r in rows]
        self._cursor = ids[-1]
        self.published += len(ids)
        self._writer.submit(Commit(stream_id=None, expected_version=0,
                                   effects=[_mark(ids)], on_done=self._marked))
        return len(rows) == self._batch

    def _marked(self, exc: BaseException | None) -> None:
        """Writer thread: if the rows could not be marked, publish them again.

        The cursor already moved past them, so without a rewind they would stay
        unmarked until the node restarts; republishing is safe (consumers dedupe).
        """
        if exc is not None:
            log.warning("relay: marking rows published failed (%r); republishing them", exc)
            self._cursor = 0
            self._wake.set()

    def _close(self) -> None:
        if self._publisher is not None:
            with contextlib.suppress(Exception):
                self._publisher.close()
            self._publisher = None


def _mark(ids: Sequence[int]) -> Any:
    now = datetime.now(UTC)

    def effect(conn: Connection) -> None:
        conn.execute(update(outbox_table).where(outbox_table.c.id.in_(ids))
                     .values(published_at=now))
    return effect

