"""The group-committing writer: one thread, one transaction for many commands.

Every state change in Staybook (events, their outbox rows, the inbox row of the
message that caused them, and a handler's own rows) is a :class:`Commit`. Actors
submit commits and go on with their next message; the writer drains its queue into
one transaction, commits (one fsync for the whole batch), then calls each commit's
``on_done``. If the batch fails, each commit is retried alone so one bad commit
(a version conflict, a duplicate inbox row) cannot sink the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, func, select, tuple_
from sqlalchemy.exc import IntegrityError

from config import StoreSettings
from config.lru import BoundedLRU
from config.service import Failure, ThreadService
from messages.base import Envelope
from messages.registry import spec_of
from store.eventstore import Snapshot, head_query
from store.rawsql import delete_keys, insert_returning, insert_rows
from store.tables import events_table, inbox_table, outbox_table, snapshots_table

log = logging.getLogger(__name__)

Done = Callable[[BaseException | None], None]

# The most streams the writer remembers a version of, and a refused lineage of.
_VERSIONS_MAX = 100_000
_TAINTED_MAX = 100_000


@dataclass(frozen=True)
class InsertRow:
    """An effect: insert ``row`` into ``table``.

    The writer inserts every commit's rows for one table with one statement per batch
    (an ``executemany``): a statement per commit costs about a fifth of a command's CPU.
    """

    table: Table
    row: Mapping[str, Any]


@dataclass(frozen=True)
class DeleteRow:
    """An effect: delete the row of ``table`` whose primary key is ``key``.

    ``key`` is the key's value, or a tuple of values in the key's column order for a
    composite key. Batched like :class:`InsertRow`: a row inserted earlier in the same
    batch is simply not inserted (a request accepted in the batch that made it leaves
    no timer behind).
    """

    table: Table
    key: Any


Effect = Callable[[Connection], None] | InsertRow | DeleteRow
"""An extra change a commit makes in its transaction: rows (batched) or a statement."""


def snapshot_effects(snapshot: Snapshot) -> list[Effect]:
    """The row effects that make ``snapshot`` its stream's only one (delete, insert).

    Put in the commit that appends the snapshot's last event, so it is written exactly
    when that event is; the writer's batching keeps the last of several in one batch.
    """
    return [DeleteRow(snapshots_table, snapshot.stream_id),
            InsertRow(snapshots_table, {"stream_id": snapshot.stream_id,
                                        "version": snapshot.version,
                                        "schema_tag": snapshot.schema_tag,
                                        "body": snapshot.body,
                                        "taken_at": datetime.now(UTC)})]


class ConcurrencyError(Exception):
    """Another writer appended to the stream first: ``(stream_id, version)`` taken."""


class DuplicateMessage(Exception):
    """The inbox already holds this ``(consumer, message_id)``: it was handled before."""


class WriterStopped(Exception):
    """The writer is not running; nothing was written."""


class Gate(Protocol):
    """The store's availability, shared by everything on a node that uses the store
    (a :class:`supervisor.Dependency`: the store knows no supervision runtime)."""

    def ride_out(self, exc: BaseException, stop: Callable[[], bool] = ...) -> bool:
        """True once the outage ``exc`` shows is over; False for any other error, or
        when ``stop()`` turned true or the store was given up on while waiting."""


Reply = Callable[[int | None], bytes]


@dataclass(frozen=True)
class InboxEntry:
    """Records that ``consumer`` handled ``message_id`` and what it answered.

    ``reply`` is the answer, or a function that makes it from the commit's position:
    the store position of its last event or, when it has none, of its stream's newest
    (None: an empty stream). A reply that tells the producer where its write landed can
    only be finished inside the transaction, once the events are inserted; the writer
    calls the function then (again if the transaction is retried).
    """

    consumer: str
    message_id: str
    reply: bytes | Reply | None = None
    body_hash: str | None = None


@dataclass(eq=False)
class Commit:
    """One atomic change.

    Attributes:
        stream_id: the stream the events append to (None when there are no events).
        expected_version: the stream's version before these events.
        events: the events, in order; each also goes to the outbox when ``publish``.
        inbox: the message this commit handles, for idempotency.
        effects: extra statements run in the same transaction (a handler's rows).
        on_done: called once on the writer thread, with None or the failure.
        publish: put the events in the outbox for the relay (only those some
            consumer is registered for: the others stay in the store).
        keep_private: how many leading events are recorded but never published
            (a process's copy of the facts it reacted to).
        lineage: which memory the events were decided from (an actor's rehydration;
            0: none). Once one commit of a lineage is refused, every later commit of
            the same lineage on that stream is refused too: it was decided on memory
            that included the refused events.
        adds_outbox: whether its effects put rows in the outbox (a fired timer's
            command); its events' rows count without it. A commit that adds none
            (the relay removing published rows) does not wake the relay.
        lazy: it may wait, up to the writer's ``lazy_delay``, to ride in a transaction
            the writer makes anyway (the relay's clean-up: at a low rate, a
            transaction and an fsync of its own per command otherwise).
    """

    stream_id: str | None
    expected_version: int
    events: Sequence[Envelope] = ()
    inbox: InboxEntry | None = None
    effects: Sequence[Effect] = ()
    on_done: Done = lambda _exc: None
    publish: bool = True
    keep_private: int = 0
    lineage: int = 0
    adds_outbox: bool = False
    lazy: bool = False
    _rows: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = field(
        default=None, repr=False
    )

    def rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The event and outbox rows, serialized once."""
        if self._rows is None:
            now = datetime.now(UTC)
            ev: list[dict[str, Any]] = []
            out: list[dict[str, Any]] = []
            for i, env in enumerate(self.events, start=1):
                body = env.to_json()
                ev.append(
                    {
                        "stream_id": self.stream_id,
                        "version": self.expected_version + i,
                        "event_id": env.message_id,
                        "type": env.type,
                        "body": body,
                        "recorded_at": now,
                    }
                )
                spec = spec_of(env.payload)
                if self.publish and i > self.keep_private and spec.consumers:
                    out.append(
                        {
                            "event_id": env.message_id,
                            "type": env.type,
                            "exchange": spec.exchange,
                            "routing_key": env.apartment_id or "",
                            "body": body,
                        }
                    )
            self._rows = (ev, out)
        return self._rows


_STOP = object()


class StoreWriter(ThreadService):
    """Owns the single write connection and group-commits :class:`Commit` objects.

    Args:
        engine: the store's engine.
        batch_max: most commits in one transaction (None: the setting's default).
        queue_max: bound on waiting commits; ``submit`` blocks when full
            (backpressure; None: the setting's default).
        on_committed: called after a successful transaction that put rows in the
            outbox (wakes the relay).
        lazy_delay: how long a ``lazy`` commit may wait for company (seconds).
        gate: the store's availability. When a transaction fails because the store
            cannot be reached, the writer trips it, waits until it is back and
            writes the same batch again: its commits are neither failed nor lost,
            and their actors and producers simply wait. (A transaction whose commit
            went through unacknowledged meets its own rows the second time: its
            commits are refused as duplicates or conflicts, as for any re-send.)
    """

    def __init__(
        self,
        engine: Engine,
        *,
        batch_max: int | None = None,
        queue_max: int | None = None,
        on_committed: Callable[[], None] | None = None,
        lazy_delay: float = 0.5,
        gate: Gate | None = None,
    ) -> None:
        super().__init__("store", thread_name="store-writer")
        defaults = StoreSettings()
        self._engine = engine
        self.gate = gate
        self._lazy: list[Commit] = []  # writer thread only
        self._lazy_since = 0.0
        self._lazy_delay = lazy_delay
        self._batch_max = defaults.batch_max if batch_max is None else batch_max
        self._items: deque[Any] = deque()
        self._queue_max = defaults.queue_max if queue_max is None else queue_max
        self._wake = threading.Event()
        self._space = threading.Event()  # set when the writer took a batch off the queue
        self._sleeping = False
        self._on_committed = on_committed
        self._versions: BoundedLRU[str, int] = BoundedLRU(_VERSIONS_MAX)  # stream -> version
        self._tainted: BoundedLRU[str, int] = BoundedLRU(_TAINTED_MAX)  # stream -> lineage
        self._running = False
        self.batches = 0
        self.commits = 0
        self.conflicts = 0  # batches that failed as a whole and were screened
        self.held = 0  # transactions the store's outages made the writer write again

    def start(self, on_crash: Callable[[Failure], None] | None = None) -> None:
        """Start the writer thread."""
        self._running = True
        super().start(on_crash)

    def interrupt(self) -> None:
        """A stop: write what is queued before it, then end (the stop is queued last)."""
        if self._running:  # one stop sentinel only: a restarted writer must not find one
            self._running = False
            self._items.append(_STOP)
            self._wake.set()

    def facts(self) -> dict[str, Any]:
        """Waiting commits, and the counts of the writer's work."""
        return {"backlog": len(self._items), "batches": self.batches,
                "commits": self.commits, "conflicts": self.conflicts, "held": self.held}

    def set_on_committed(self, callback: Callable[[], None]) -> None:
        """Set the hook called after each successful transaction."""
        self._on_committed = callback

    def submit(self, commit: Commit) -> None:
        """Queue a commit; ``commit.on_done`` is called after it is durable or failed.

        Lock-free on the hot path: a deque append (atomic in CPython) and a wake-up
        only when the writer sleeps. With hundreds of actor threads submitting, a
        ``queue.Queue`` mutex became the bottleneck (a lock convoy under the GIL).
        When ``queue_max`` commits wait, the caller waits until the writer takes a
        batch (backpressure), woken by the writer rather than polling.

        Raises:
            WriterStopped: when the writer is not running.
        """
        if not self._running:
            raise WriterStopped("the store writer is not running")
        while len(self._items) >= self._queue_max and self._running:
            self._space.clear()
            if len(self._items) >= self._queue_max:  # re-check: the writer may have taken
                self._space.wait(0.1)
        self._items.append(commit)
        if self._sleeping:
            self._wake.set()

    def barrier(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted before this call is committed.

        Raises:
            TimeoutError: if the writer did not get there in time.
        """
        done = threading.Event()
        self.submit(Commit(stream_id=None, expected_version=0, on_done=lambda _e: done.set()))
        if not done.wait(timeout):
            raise TimeoutError("store writer barrier timed out")

    @property
    def backlog(self) -> int:
        """Commits waiting for the writer."""
        return len(self._items)

    def run(self) -> None:
        """Group-commit what is queued until the stop comes out of the queue."""
        items = self._items
        while True:
            if not items:
                if self._lazy and time.monotonic() - self._lazy_since >= self._lazy_delay:
                    self._write(self._take_lazy([]))
                    continue
                self._sleeping = True
                if not items:  # re-check: a submit may have missed the flag
                    self._wake.wait(self._lazy_delay if self._lazy else 0.5)
                self._sleeping = False
                self._wake.clear()
                continue
            batch: list[Commit] = []
            stop = False
            while items and len(batch) < self._batch_max:
                nxt = items.popleft()
                if nxt is _STOP:
                    stop = True
                    break
                if nxt.lazy:
                    if not self._lazy:
                        self._lazy_since = time.monotonic()
                    self._lazy.append(nxt)
                    continue
                batch.append(nxt)
            if len(items) < self._queue_max and not self._space.is_set():
                self._space.set()  # a submitter held back by a full queue may go on
            if batch:
                self._write(self._take_lazy(batch))
            if stop:
                while self._lazy:
                    self._write(self._take_lazy([]))
                break
        # Fail whatever is left so no caller waits forever.
        while items:
            item = items.popleft()
            if isinstance(item, Commit):
                _call(item, WriterStopped("store writer stopped"))

    def _take_lazy(self, batch: list[Commit]) -> list[Commit]:
        """``batch`` with the waiting lazy commits (as many as ``batch_max`` allows)."""
        room = max(1, self._batch_max - len(batch))
        taken, self._lazy = self._lazy[:room], self._lazy[room:]
        if self._lazy:
            self._lazy_since = time.monotonic()
        return batch + taken

    def _write(self, batch: list[Commit]) -> None:
        if not self._attempt(batch):
            return
        # The batch failed (another node took a version, or a message was handled
        # already). Re-read what the batch depends on, refuse what the store decided,
        # and write the rest in one transaction again; one by one only if that fails
        # too. Without this screen one conflict would cost a transaction per commit.
        self.conflicts += 1
        try:
            survivors = self._screen(batch)
        except Exception as exc:  # noqa: BLE001 - the one-by-one path reports it
            log.debug("screening a failed batch failed (%s)", exc)
            survivors = batch
        if survivors and survivors is not batch and not self._attempt(survivors):
            return
        log.debug("batch of %d failed again; retrying one by one", len(survivors))
        for commit in survivors:
            self._attempt([commit])

    def _attempt(self, batch: list[Commit]) -> bool:
        """Write ``batch`` in one transaction; True when it failed as a whole.

        A batch of one that fails is refused with the classified error (False).
        """
        while True:
            try:
                with self._engine.begin() as conn:
                    refused, versions = _apply(conn, batch, self._versions, self._tainted)
                break
            except Exception as exc:  # noqa: BLE001 - retried, or reported to its owner
                self._versions.clear()  # what the store holds is unknown again
                if self._back_after_outage(exc):
                    continue
                if len(batch) == 1:
                    self._refuse(batch[0], _classify(exc))
                    return False
                log.debug("batch of %d failed (%s)", len(batch), exc)
                return True
        self._remember(versions)
        self._after([c for c in batch if c not in refused])
        for commit, err in refused.items():
            self._refuse(commit, err)
        return False

    def _back_after_outage(self, exc: BaseException) -> bool:
        """True when ``exc`` was the store's outage and the store is back: write again.

        False (the batch fails, its commits get the error) for any other error, when the writer is
        stopping, or when the gate gave up on the store.
        """
        if self.gate is None:
            return False
        back = self.gate.ride_out(exc, lambda: not self._running)
        self.held += back
        return back

    def _screen(self, batch: list[Commit]) -> list[Commit]:
        """Refuse the commits the store already contradicts; the others, in order.

        Reads the current version of every stream the batch appends to (so the next
        attempt checks against the database, not this writer's memory) and which of
        its messages the inbox already holds (those are duplicates).
        """
        streams = sorted({c.stream_id for c in batch if c.stream_id and c.events})
        keys = [(c.inbox.consumer, c.inbox.message_id) for c in batch if c.inbox]
        with self._engine.connect() as conn:
            seen = set() if not keys else {(r[0], r[1]) for r in conn.execute(
                select(inbox_table.c.consumer, inbox_table.c.message_id).where(
                    tuple_(inbox_table.c.consumer, inbox_table.c.message_id).in_(keys)))}
            found: dict[str, int] = {} if not streams else {
                r[0]: int(r[1]) for r in conn.execute(
                    select(events_table.c.stream_id, func.max(events_table.c.version))
                    .where(events_table.c.stream_id.in_(streams))
                    .group_by(events_table.c.stream_id))}
        self._remember({sid: int(found.get(sid) or 0) for sid in streams})
        survivors = []
        for commit in batch:
            if commit.inbox and (commit.inbox.consumer, commit.inbox.message_id) in seen:
                self._refuse(commit, DuplicateMessage(
                    f"{commit.inbox.consumer}/{commit.inbox.message_id} handled already"))
            else:
                survivors.append(commit)
        return survivors

    def _refuse(self, commit: Commit, exc: BaseException) -> None:
        """Fail a commit and fence off the rest of its lineage on that stream."""
        if commit.stream_id is not None and commit.lineage and (
                commit.events or isinstance(exc, ConcurrencyError)):
            self._tainted.put(commit.stream_id, commit.lineage)
        _call(commit, exc)

    def _remember(self, versions: dict[str, int]) -> None:
        for sid, v in versions.items():
            self._versions.put(sid, v)

    def _after(self, batch: list[Commit]) -> None:
        self.batches += 1
        self.commits += len(batch)
        # Wake the relay only when there is something new for it: not after its own
        # "published" marks, nor after a handler's rows. (Before the callbacks, so the
        # publishing starts while the replies go out.)
        if self._on_committed is not None and any(
                c.adds_outbox or c.rows()[1] for c in batch):
            self._on_committed()
        for commit in batch:
            _call(commit, None)


def _apply(conn: Connection, batch: list[Commit], known: BoundedLRU[str, int],
           tainted: BoundedLRU[str, int]
           ) -> tuple[dict[Commit, BaseException], dict[str, int]]:
    """Write a batch; commits that may not append are left out and returned.

    The fence has three parts. Across processes it is the database's unique
    ``(stream_id, version)`` index: events are inserted at the versions the actor
    decided from, so a writer whose stream moved on meets a unique violation, never a
    silent second append. (The versions this writer remembers only spare a read; a
    stale one is caught by that index.) A decision with no events (an actor's
    "nothing to do") inserts no event for the index to refuse, so the stream's head
    is read in the transaction (one query for all of a batch's such commits, the
    same that finds their replies' position) and the commit is refused unless the
    head is still the version it was decided from. Within this writer it is the
    lineage: a commit decided on memory that included a refused commit's events is
    refused even when its expected version happens to equal the store's again.
    The events go in first, returning their positions, so each inbox row can store
    a reply that says where its command's events landed. (A commit both stale and a
    duplicate that this writer's versions miss thus fails on the events' index, not
    the inbox's: it is refused as a conflict, decided again, then answered as a
    duplicate.)
    Returns the refused commits and the streams' versions after the batch.
    """
    events: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    inbox: list[dict[str, Any]] = []
    refused: dict[Commit, BaseException] = {}
    versions: dict[str, int] = {}
    quiet = {c.stream_id for c in batch if _fenced_quiet(c)}
    heads = _heads(conn, quiet) if quiet else {}
    newest: dict[str, str] = {}  # stream -> its newest event's id in this batch so far
    heads_of: dict[Commit, str | int | None] = {}  # a quiet commit -> its head
    now = datetime.now(UTC)
    for commit in batch:
        ev, out = commit.rows()
        sid = commit.stream_id
        if sid is None or not (ev or commit.lineage):
            events.extend(ev)
            outbox.extend(out)
            continue
        if commit.lineage and tainted.get(sid) == commit.lineage:
            refused[commit] = ConcurrencyError(
                f"{sid}: decided on memory that a refused commit had changed")
            continue
        current = versions.get(sid)
        if current is None:
            current = (heads.get(sid, (0, 0))[0] if sid in quiet
                       else _version(conn, sid, commit.expected_version, known))
        if current != commit.expected_version:
            refused[commit] = ConcurrencyError(
                f"{sid}: decided at version {commit.expected_version}, store has {current}")
            versions[sid] = current
            if commit.lineage:
                tainted.put(sid, commit.lineage)
            continue
        versions[sid] = current + len(ev)
        if ev:
            newest[sid] = ev[-1]["event_id"]
            events.extend(ev)
            outbox.extend(out)
        else:
            heads_of[commit] = newest.get(sid, heads[sid][1] if sid in heads else None)
    positions: dict[str, int] = {}
    if events:
        generated = insert_returning(conn, events_table, events, events_table.c.position)
        positions = {row["event_id"]: int(p) for row, p in zip(events, generated, strict=True)}
    for commit in batch:
        if commit in refused:
            continue
        head = heads_of.get(commit, _UNREAD)
        if isinstance(head, str):
            head = positions[head]
        if row := _inbox_row(conn, commit, positions, now, head):
            inbox.append(row)
    insert_rows(conn, inbox_table, inbox)
    insert_rows(conn, outbox_table, outbox)
    apply_effects(conn, [e for c in batch if c not in refused for e in c.effects])
    return refused, versions


_UNREAD: Any = object()  # a quiet commit's head not read with the batch's


def _version(conn: Connection, sid: str, expected: int, known: BoundedLRU[str, int]) -> int:
    """The version to check an append to ``sid`` against: remembered, or read."""
    current = known.get(sid)
    if current is None and expected == 0:
        # A stream believed new (a notification, a payment, a process): skip the
        # read; if it exists after all, the unique index refuses the insert and the
        # commit is retried alone and refused.
        return 0
    if current != expected:
        # Unknown, or the cache disagrees: another writer may have appended.
        return _stream_version(conn, sid)
    return current


def _fenced_quiet(commit: Commit) -> bool:
    """Whether ``commit`` is an actor's decision with no events (fenced by a read)."""
    return commit.stream_id is not None and bool(commit.lineage) and not commit.rows()[0]


def _heads(conn: Connection, streams: set[str | None]) -> dict[str, tuple[int, int]]:
    """Each stream's version and newest event's position (absent: no events)."""
    q = (select(events_table.c.stream_id, func.max(events_table.c.version),
                func.max(events_table.c.position))
         .where(events_table.c.stream_id.in_(sorted(s for s in streams if s)))
         .group_by(events_table.c.stream_id))
    return {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(q)}


def apply_effects(conn: Connection, effects: Sequence[Effect]) -> None:
    """Run ``effects`` in ``conn``'s transaction as the writer does: rows batched per
    table (see :func:`_run_rows`), then the statements in order."""
    for statement in _run_rows(conn, effects):
        statement(conn)


def _run_rows(conn: Connection, effects: Sequence[Effect]
              ) -> list[Callable[[Connection], None]]:
    """Run the batch's row effects, one statement per table; return the other effects.

    Walked in commit order: a delete of a row inserted earlier in the batch cancels the
    insert. Deletes run before inserts, so a row deleted and inserted again (in that
    order) ends up inserted. The statement effects run after the rows, in order.
    """
    inserts: dict[Table, dict[Any, list[Mapping[str, Any]]]] = {}
    deletes: dict[Table, set[Any]] = {}
    statements: list[Callable[[Connection], None]] = []
    for e in effects:
        if isinstance(e, InsertRow):
            names = [c.name for c in e.table.primary_key.columns]
            key = e.row[names[0]] if len(names) == 1 else tuple(e.row[n] for n in names)
            # Two inserts of one key stay two: the database refuses the second, as it
            # would have without batching.
            inserts.setdefault(e.table, {}).setdefault(key, []).append(e.row)
        elif isinstance(e, DeleteRow):
            pending = inserts.get(e.table, {}).get(e.key)
            if pending:
                pending.pop()
            else:
                deletes.setdefault(e.table, set()).add(e.key)
        else:
            statements.append(e)
    for table, keys in deletes.items():
        delete_keys(conn, table, list(keys))
    for table, by_key in inserts.items():
        insert_rows(conn, table, [r for pending in by_key.values() for r in pending])
    return statements


def _inbox_row(conn: Connection, commit: Commit, positions: Mapping[str, int],
               now: datetime, head: int | None = _UNREAD) -> dict[str, Any] | None:
    """The commit's inbox row (None: it has none), its reply finished if need be.

    ``head`` is the position of the stream's newest event when the batch read it
    already (a quiet commit's); otherwise it is read here if the reply needs it.
    """
    entry = commit.inbox
    if entry is None:
        return None
    reply = entry.reply
    if callable(reply):
        ev = commit.rows()[0]
        if ev:
            reply = reply(positions[ev[-1]["event_id"]])
        elif head is not _UNREAD:
            reply = reply(head)
        elif commit.stream_id is not None:
            reply = reply(conn.execute(head_query(commit.stream_id)).scalar())
        else:
            reply = reply(None)
    return {"consumer": entry.consumer, "message_id": entry.message_id, "reply": reply,
            "recorded_at": now, "body_hash": entry.body_hash}


def _stream_version(conn: Connection, stream_id: str) -> int:
    q = select(func.max(events_table.c.version)).where(events_table.c.stream_id == stream_id)
    v = conn.execute(q).scalar()
    return int(v or 0)


def _classify(exc: BaseException) -> BaseException:
    if isinstance(exc, IntegrityError):
        text = str(exc.orig)
        if "inbox" in text:
            return DuplicateMessage(text)
        if "events" in text or "uq_events_stream_version" in text:
            return ConcurrencyError(text)
    return exc


def _call(commit: Commit, exc: BaseException | None) -> None:
    try:
        commit.on_done(exc)
    except Exception:
        log.exception("on_done of a commit failed")
