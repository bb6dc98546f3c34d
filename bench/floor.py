"""The floor: Staybook's broker and store work per command, with nothing else around it.

``python -m bench.floor --role commands|events ...`` is one of two processes, as a
node split in two (``bench.throughput --split``). Bare pika on one
``SelectConnection`` (an I/O loop, no thread, no lock) and stdlib ``sqlite3``: no
actors, no validation, no models. What it does per command is what Staybook does,
by the same broker and the same kind of store, so Staybook's figures over the floor's
say what the framework costs:

* **commands**: consumes the command partitions (the same topology: the commands
  exchange, the consistent-hash exchange, quorum queues with single-active-consumer;
  a channel and a prefetch per queue, as the node's consumer hub). The deliveries a
  socket read brings are one *round*: one transaction (WAL, ``synchronous`` as
  given) with, per command, its event rows, its inbox row holding the reply, and an
  outbox row per published event (one ``executemany`` per table), plus the deletes
  of outbox rows confirmed since the last round; after the commit, the replies, then
  one ``multiple`` ack per channel; then the events, persistent and ``mandatory``, on
  a confirm-mode channel to their fanout exchanges. A confirmed row is deleted in the
  next round's transaction, or in one of its own after :data:`LAZY_DELAY` seconds
  without a round (the node's relay does the same).
* **events**: consumes the handler queues those exchanges feed (search, payment,
  notifier, reservations). Per round one transaction with an inbox row per delivery,
  an event row where Staybook's handler records one (:data:`bench.floorplan.RECORDED`),
  and the follow-on events a handler publishes (``--follow``: payment's charge, the
  reservation process's confirmation) with their outbox rows; then the acks, then
  the follow-ons, confirmed and deleted as above.

What the floor does not decide, it is told: the benchmark gives the commands process
each command's outcome (:mod:`bench.floorplan`: reply status, event types), decided
with the real rules before the run. Bodies are made by string formatting: an event
carries its command's payload, a reply its events' summary, so their sizes are
realistic. Not written: the rows only the domain needs (request timers, search's read
model, notifications, the payment ledger).

It writes its counters (deliveries, acks, publishes, confirms, rounds) as JSON to
``--counters`` when it stops (SIGTERM/SIGINT), and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import pika
from pika.spec import BasicProperties

ROUND_MAX = 2000  # deliveries in one round at most
LAZY_DELAY = 0.5  # seconds a confirmed outbox row may wait for a round to be deleted in
REPLY_TYPE = "CommandResult"
COMMANDS_CONSUMER = "intake"

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL,"
    " version INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,"
    " body BLOB NOT NULL, recorded_at TEXT NOT NULL, UNIQUE (stream_id, version))",
    "CREATE TABLE IF NOT EXISTS inbox (consumer TEXT NOT NULL, message_id TEXT NOT NULL,"
    " reply BLOB, recorded_at TEXT NOT NULL, body_hash TEXT,"
    " PRIMARY KEY (consumer, message_id))",
    "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " event_id TEXT NOT NULL, type TEXT NOT NULL, exchange TEXT NOT NULL,"
    " routing_key TEXT NOT NULL, body BLOB NOT NULL)",
)
INSERT_EVENTS = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)"
INSERT_INBOX = "INSERT INTO inbox VALUES (?, ?, ?, ?, NULL)"
INSERT_OUTBOX = "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)"
DELETE_OUTBOX = "DELETE FROM outbox WHERE id = ?"

EVENT = (b'{"message_id":"%b","correlation_id":"%b","causation_id":"%b","type":"%b",'
         b'"version":1,"occurred_at":"%b","apartment_id":"%b","payload":%b}')
SUMMARY = b'{"type":"%b","version":1,"message_id":"%b",%b'
REPLY = (b'{"message_id":"%b","correlation_id":"%b","causation_id":"%b",'
         b'"type":"CommandResult","version":1,"occurred_at":"%b","apartment_id":null,'
         b'"payload":{"status":"%b","reason":%b,"detail":null,"events":[%b],"position":%d}}')
PAYLOAD = b'"payload":'


def open_store(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """The store, as Staybook opens SQLite: WAL, ``synchronous``, a busy timeout.

    Autocommit mode: each round opens its transaction with ``BEGIN IMMEDIATE``.
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=30000")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    return db


def create_store(path: Path) -> None:
    """Create the floor's tables (Staybook's events, inbox and outbox, as declared)."""
    db = open_store(path)
    try:
        for statement in SCHEMA:
            db.execute(statement)
    finally:
        db.close()


def payload_of(body: bytes) -> bytes:
    """A message's payload object, sliced out of its JSON (the envelope's last field)."""
    return body[body.rindex(PAYLOAD) + len(PAYLOAD):-1]


Delivery = tuple[Any, int, str, BasicProperties, bytes, str]
"""channel, delivery tag, routing key, properties, body, inbox consumer name"""


class _Rows:
    """One round's rows, replies and events to publish; positions counted from the store's."""

    __slots__ = ("events", "inbox", "now", "outbox", "position", "publish", "replies")

    def __init__(self, position: int, now: bytes) -> None:
        self.position = position
        self.now = now
        self.events: list[tuple[Any, ...]] = []
        self.inbox: list[tuple[Any, ...]] = []
        self.outbox: list[tuple[Any, ...]] = []
        self.replies: list[tuple[Any, str, str, bytes]] = []
        self.publish: list[tuple[str, str, str, str, bytes, int]] = []


class Floor:
    """One floor process: its queues, its store, its rounds, its counters.

    Args:
        url: the broker.
        db: the store file.
        queues: ``(queue, consumer)``: the queues to consume and the inbox consumer
            name each records under.
        prefetch: unacked deliveries per queue.
        exchanges: the events' exchange names by type (``prefix.events.<Type>``).
        plan: the commands process's steps: message id -> (status, reason,
            published types, private types); None for the events process.
        follow: the events process's follow-ons: consumer -> {type in: type out}.
        recorded: consumers that record an event row per delivery.
        synchronous: SQLite's ``synchronous``.
    """

    def __init__(self, url: str, db: Path, queues: Sequence[tuple[str, str]], prefetch: int,
                 exchanges: dict[str, str],
                 plan: dict[str, tuple[bytes, bytes, list[bytes], list[bytes]]] | None,
                 follow: dict[str, dict[str, str]], recorded: frozenset[str],
                 synchronous: str) -> None:
        self._params = pika.URLParameters(url)
        self._params.heartbeat = 30
        self._db = open_store(db, synchronous)
        self._queues = list(queues)
        self._prefetch = prefetch
        self._exchanges = exchanges
        self._plan = plan
        self._follow = follow
        self._recorded = recorded
        self._conn: pika.SelectConnection | None = None
        self._confirm: Any = None
        self._batch: list[Delivery] = []
        self._scheduled = False
        self._fresh = False
        self._seq = 0
        self._unconfirmed: dict[int, int] = {}  # publish seq -> outbox id, in publish order
        self._confirmed: list[tuple[int]] = []  # outbox ids to delete
        self._lazy: object | None = None
        self._versions: dict[str, int] = {}
        self.stopping = False
        self.counters = {"deliveries": 0, "acks": 0, "publishes": 0, "confirms": 0,
                         "nacks": 0, "returns": 0, "rounds": 0, "commands": 0,
                         "events": 0}

    # --- the connection ----------------------------------------------------------
    def run(self) -> None:
        """Consume until stopped; the connection's I/O loop is this thread."""
        self._conn = pika.SelectConnection(self._params, on_open_callback=self._on_open,
                                           on_open_error_callback=self._on_failed,
                                           on_close_callback=self._on_failed)
        self._conn.ioloop.start()

    def stop(self) -> None:
        """From a signal handler: close the connection after the round in hand."""
        self.stopping = True
        conn = self._conn
        if conn is not None:
            conn.ioloop.add_callback_threadsafe(
                lambda: conn.close() if conn.is_open else conn.ioloop.stop())

    def _on_failed(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        if not self.stopping:
            print(f"floor: connection lost: {exc!r}", file=sys.stderr, flush=True)
        conn.ioloop.stop()

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_confirm_channel)

    def _on_confirm_channel(self, ch: Any) -> None:
        self._confirm = ch
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirmed,
                            callback=lambda _f: self._consume(list(self._queues)))

    def _consume(self, todo: list[tuple[str, str]]) -> None:
        """Open a channel per queue, one after the other: qos, then consume."""
        if not todo:
            return
        queue, consumer = todo.pop()
        assert self._conn is not None

        def on_channel(ch: Any) -> None:
            def on_message(c: Any, method: Any, props: BasicProperties, body: bytes) -> None:
                self._batch.append((c, method.delivery_tag, method.routing_key, props, body,
                                    consumer))
                self._fresh = True
                if not self._scheduled:
                    self._scheduled = True
                    assert self._conn is not None
                    self._conn.ioloop.call_later(0, self._tick)

            def on_qos(_frame: Any) -> None:
                ch.basic_consume(queue, on_message)
                self._consume(todo)

            ch.basic_qos(prefetch_count=self._prefetch, callback=on_qos)

        self._conn.channel(on_open_callback=on_channel)

    # --- a round -----------------------------------------------------------------
    def _tick(self) -> None:
        """After a read that brought deliveries: read again, or go when none came.

        pika reads 4 KiB per look at the socket, a handful of deliveries: a round per
        read would pay a transaction and an fsync for each handful. So the round waits
        until a look finds nothing new (the socket is drained), or :data:`ROUND_MAX`.
        """
        if self._fresh and len(self._batch) < ROUND_MAX:
            self._fresh = False
            assert self._conn is not None
            self._conn.ioloop.call_later(0, self._tick)
            return
        self._scheduled = False
        self._round()

    def _round(self) -> None:
        """Store what arrived in one transaction; then replies, acks and events."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        rows = _Rows(db.execute("SELECT max(position) FROM events").fetchone()[0] or 0,
                     datetime.now(UTC).isoformat().encode())
        handle = self._command if self._plan is not None else self._event
        for delivery in batch:
            handle(delivery, rows)
        if self._confirmed:
            db.executemany(DELETE_OUTBOX, self._confirmed)
            self._confirmed = []
        if rows.events:
            db.executemany(INSERT_EVENTS, rows.events)
        db.executemany(INSERT_INBOX, rows.inbox)
        if rows.outbox:
            db.executemany(INSERT_OUTBOX, rows.outbox)
        db.execute("COMMIT")
        self._settle(batch, rows.replies)
        self._publish(rows.publish)
        c = self.counters
        c["rounds"] += 1
        c["deliveries"] += len(batch)
        c["commands" if self._plan is not None else "events"] += len(batch)

    def _command(self, delivery: Delivery, rows: _Rows) -> None:
        """A command's rows and reply, as its plan says: events, inbox, outbox."""
        ch, _tag, key, props, body, consumer = delivery
        assert self._plan is not None
        mid = props.message_id or ""
        bmid = mid.encode()
        status, reason, published, private = self._plan[mid]
        payload = payload_of(body)
        corr = (props.correlation_id or mid).encode()
        version = self._versions.get(key, 0)
        bkey = key.encode()
        now = rows.now
        summary = []
        for i, t in enumerate(published + private):
            rows.position += 1
            version += 1
            eid = b"%be%d" % (bmid, i)
            ev = EVENT % (eid, corr, bmid, t, now, bkey, payload)
            st, sid = t.decode(), eid.decode()
            rows.events.append((rows.position, key, version, sid, st, ev, now))
            summary.append(SUMMARY % (t, eid, payload[1:]))
            if i < len(published):
                rows.outbox.append((rows.position, sid, st, f"events.{st}", key, ev))
                rows.publish.append((self._exchanges[st], key, sid, st, ev, rows.position))
        self._versions[key] = version
        reply = REPLY % (bmid, corr, bmid, now, status, reason, b",".join(summary),
                         rows.position)
        rows.inbox.append((consumer, mid, reply, now))
        if props.reply_to:
            rows.replies.append((ch, props.reply_to, props.correlation_id or mid, reply))

    def _event(self, delivery: Delivery, rows: _Rows) -> None:
        """An event's inbox row; its recorded row and its follow-on, if its handler has."""
        _ch, _tag, key, props, body, consumer = delivery
        mid = props.message_id or ""
        rows.inbox.append((consumer, mid, None, rows.now))
        t = props.type or ""
        stream = f"{consumer}:{mid}"
        if consumer in self._recorded:
            rows.position += 1
            rows.events.append((rows.position, stream, 1, f"{mid}.{consumer}", t, body,
                                rows.now))
        follow = self._follow.get(consumer, {}).get(t)
        if follow is not None:
            rows.position += 1
            eid = f"{mid}.{consumer}.{follow}"
            ev = EVENT % (eid.encode(), mid.encode(), mid.encode(), follow.encode(), rows.now,
                          key.encode(), payload_of(body))
            rows.events.append((rows.position, stream, 2, eid, follow, ev, rows.now))
            rows.outbox.append((rows.position, eid, follow, f"events.{follow}", key, ev))
            rows.publish.append((self._exchanges[follow], key, eid, follow, ev, rows.position))

    def _settle(self, batch: list[Delivery],
                replies: list[tuple[Any, str, str, bytes]]) -> None:
        """The replies, then one ``multiple`` ack per channel (its highest tag)."""
        for ch, reply_to, corr, body in replies:
            ch.basic_publish("", reply_to, body, BasicProperties(
                content_type="application/json", delivery_mode=1, correlation_id=corr,
                type=REPLY_TYPE))
        top: dict[Any, int] = {}
        for ch, tag, *_ in batch:
            top[ch] = tag
        for ch, tag in top.items():
            ch.basic_ack(tag, multiple=True)
        self.counters["publishes"] += len(replies)
        self.counters["acks"] += len(batch)

    def _publish(self, messages: list[tuple[str, str, str, str, bytes, int]]) -> None:
        """Events to their exchanges on the confirm channel; their rows go once confirmed."""
        ch = self._confirm
        for exchange, key, eid, t, body, row in messages:
            self._seq += 1
            self._unconfirmed[self._seq] = row
            ch.basic_publish(exchange, key, body, BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=eid, type=t),
                mandatory=True)
        self.counters["publishes"] += len(messages)

    def _on_confirmed(self, frame: Any) -> None:
        """An ack (or nack) from the broker: its rows are deleted with the next round.

        Queues confirm at their own pace, so a single ack may come for a later message
        than an earlier one still pending; a ``multiple`` one covers every pending
        message up to its tag (the oldest first, in publish order).
        """
        method = frame.method
        tag = method.delivery_tag
        pending = self._unconfirmed
        done = self._confirmed
        if method.multiple:
            tags = list(itertools.takewhile(lambda t: t <= tag, pending))
        else:
            tags = [tag] if tag in pending else []
        for t in tags:
            done.append((pending.pop(t),))
        if isinstance(method, pika.spec.Basic.Nack):
            self.counters["nacks"] += len(tags)
        else:
            self.counters["confirms"] += len(tags)
        if done and self._lazy is None and self._conn is not None:
            self._lazy = self._conn.ioloop.call_later(LAZY_DELAY, self._delete)

    def _on_return(self, _ch: Any, _method: Any, _props: Any, _body: bytes) -> None:
        self.counters["returns"] += 1

    def _delete(self) -> None:
        """The confirmed rows no round took along, in a transaction of their own."""
        self._lazy = None
        if self._confirmed:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.executemany(DELETE_OUTBOX, self._confirmed)
            db.execute("COMMIT")
            self._confirmed = []


def read_plan(path: Path) -> dict[str, tuple[bytes, bytes, list[bytes], list[bytes]]]:
    """The steps :func:`bench.floorplan.write_plan` wrote: the reason as JSON already."""
    out: dict[str, tuple[bytes, bytes, list[bytes], list[bytes]]] = {}
    for line in path.read_bytes().splitlines():
        mid, status, reason, published, private = line.split(b"\t")
        out[mid.decode()] = (status, b'"%b"' % reason if reason else b"null",
                             [t for t in published.split(b",") if t],
                             [t for t in private.split(b",") if t])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 0 after a requested stop, 1 if the connection was lost."""
    p = argparse.ArgumentParser(prog="python -m bench.floor",
                                description="The bare pipeline Staybook is measured against.")
    p.add_argument("--role", choices=("commands", "events"), required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--queue", action="append", default=[], metavar="QUEUE=CONSUMER",
                   help="a queue to consume and the inbox consumer name it records under")
    p.add_argument("--prefetch", type=int, required=True)
    p.add_argument("--exchanges", required=True,
                   help="JSON: event type -> its exchange")
    p.add_argument("--plan", type=Path, help="the commands' steps (commands role)")
    p.add_argument("--follow", default="{}", help="JSON: consumer -> {type: follow-on type}")
    p.add_argument("--recorded", default="",
                   help="consumers recording an event row, comma-separated")
    p.add_argument("--synchronous", default="FULL")
    p.add_argument("--counters", type=Path, required=True)
    args = p.parse_args(argv)
    queues = [tuple(q.split("=", 1)) for q in args.queue]
    floor = Floor(args.url, args.db, [(q, c) for q, c in queues], args.prefetch,
                  json.loads(args.exchanges),
                  read_plan(args.plan) if args.role == "commands" else None,
                  json.loads(args.follow),
                  frozenset(c for c in args.recorded.split(",") if c), args.synchronous)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        floor.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    began = time.monotonic()
    floor.run()
    args.counters.write_text(json.dumps({**floor.counters,
                                         "up_s": round(time.monotonic() - began, 1)}))
    return 0 if floor.stopping else 1


if __name__ == "__main__":
    sys.exit(main())
