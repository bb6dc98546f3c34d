"""Search: its own copy of the apartments and taken nights, and the queries on it.

Search knows only what the events told it: apartments (added, updated, delisted,
relisted) and nights not offered (booked by a reservation or blocked by the owner,
until released or unblocked). It answers ``SearchApartments`` by request/reply and
never asks another actor. Blocks share the taken-nights table under the key
``block:<id>``, so one ``NOT EXISTS`` excludes both.

Read-your-write. The read model lags the store, so a query may name a write it must
include: ``after``, the store position a ``CommandResult`` reported. The query is
answered once every search event of that write's stream, up to the write's version,
is applied (see :func:`applied_through` for why that test, and not a watermark of
positions, is sound with several nodes), or, after ``wait_ms``, with ``caught_up``
False. A waiting query does not block the actor: the events that would let it catch
up come through this same mailbox. It is parked (a bounded number of them; the
message stays unsettled, so a crash hands it to another consumer) and checked again
after each of this actor's commits and on a short timer, for events that another
node's search actor applied.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

import pykka
from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    Select,
    and_,
    exists,
    func,
    not_,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from actors.base import Handle
from actors.handler import HandlerActor, Reaction
from actors.outcome import Ticket
from config.lru import BoundedLRU
from messages import (
    ApartmentAdded,
    ApartmentDelisted,
    ApartmentHit,
    ApartmentRelisted,
    ApartmentUpdated,
    Consumer,
    DatesBlocked,
    DatesBooked,
    DatesReleased,
    DatesUnblocked,
    Envelope,
    Kind,
    Message,
    SearchApartments,
    SearchResults,
    all_specs,
)
from store import EventStore, StoreWriter
from store.tables import events_table as events
from store.tables import inbox_table as inbox
from store.tables import search_apartments_table as apts
from store.tables import search_booked_table as booked
from store.tables import search_delisted_table as delisted
from store.writer import DeleteRow, InsertRow
from supervisor import ReportFailure

SEARCH = Consumer.SEARCH.value  # the consumer name of search's inbox rows
MAX_WAITING = 64  # queries parked at once, per search actor
TOTAL_LIMIT = 1_000  # matches counted for a reply's total (SearchResults.total_exact)
POLL_SECONDS = 0.1  # how often parked queries look again for other nodes' progress
_MEMO = 10_000  # entries in each of the catch-up caches


def search_event_types() -> frozenset[str]:
    """The event types search applies: those registered for its queue."""
    return frozenset(s.type for s in all_specs()
                     if s.kind is Kind.EVENT and Consumer.SEARCH in s.consumers)


def locate(conn: Connection, position: int) -> tuple[str, int] | None:
    """The stream and version of the event at ``position``; None when none is visible."""
    row = conn.execute(select(events.c.stream_id, events.c.version)
                       .where(events.c.position == position)).first()
    return None if row is None else (str(row[0]), int(row[1]))


def applied_through(conn: Connection, stream_id: str, version: int, *,
                    types: frozenset[str], known: int = 0) -> bool:
    """Whether search applied every event of ``types`` in the stream up to ``version``.

    Why this test. On PostgreSQL positions are taken at insert and become visible at
    commit, so position 11 may be visible before 10; and search events may be handled
    by competing consumers on several nodes, in any order across apartments (and, after
    a failed commit is requeued, within one). "The highest position applied" thus
    proves nothing about the positions below it. Instead the events in question are
    named: those of search's types in the write's stream at or below its version (the
    write and everything before it on that apartment; all visible once the write is,
    since the ``(stream_id, version)`` fence lets no version commit before the ones
    below it). Each is applied exactly when
    search's inbox holds its id: the inbox row commits in the same transaction as the
    read-model rows, whichever node wrote it, and inbox rows are never deleted, so once
    true this stays true (``known``: a version already proven, to skip re-reading).

    It assumes what the writer guarantees: a recorded event of a search type is
    published (only a process's private copies are not, and none has a search type).
    """
    missing = (select(events.c.position)
               .where(events.c.stream_id == stream_id, events.c.version <= version,
                      events.c.version > known, events.c.type.in_(sorted(types)),
                      not_(exists().where(inbox.c.consumer == SEARCH,
                                          inbox.c.message_id == events.c.event_id)))
               .limit(1))
    return conn.execute(missing).first() is None


class CatchUp:
    """Answers "has search applied the write at this position?" from the store.

    Both facts it caches are immutable once read: an event's stream and version, and a
    stream proven applied up to a version. Bounded (LRU).
    """

    def __init__(self, connect: Callable[[], Connection], *, memo: int = _MEMO) -> None:
        self._connect = connect
        self._types = search_event_types()
        self._where: BoundedLRU[int, tuple[str, int]] = BoundedLRU(memo)
        self._proven: BoundedLRU[str, int] = BoundedLRU(memo)

    def reached(self, positions: Iterable[int]) -> set[int]:
        """Those of ``positions`` whose write the read model includes."""
        found: set[int] = set()
        todo: list[int] = []
        for p in sorted(set(positions)):
            where = self._where.get(p)
            if where is not None and self._proven.get(where[0], 0) >= where[1]:
                found.add(p)
            else:
                todo.append(p)
        if not todo:
            return found
        with self._connect() as conn:
            for p in todo:
                where = self._where.get(p)
                if where is None:
                    where = locate(conn, p)
                    if where is None:
                        continue  # not visible (yet): not reached
                    self._where.put(p, where)
                sid, version = where
                known = self._proven.get(sid, 0)
                if known >= version or applied_through(conn, sid, version,
                                                        types=self._types, known=known):
                    found.add(p)
                    if version > known:
                        self._proven.put(sid, version)
        return found


@dataclass(frozen=True)
class Waiter:
    """A query parked until the read model includes the write at ``after``."""

    envelope: Envelope
    ticket: Ticket
    after: int
    deadline: float  # time.monotonic() seconds


class Waiters:
    """The parked queries: at most ``limit``, each answered once (pure bookkeeping).

    Args:
        limit: how many may wait at once. Each holds an unsettled message of the search
            queue, so the limit must stay below its prefetch, or waiting queries would
            keep out the very events they wait for.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: list[Waiter] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, waiter: Waiter) -> bool:
        """Park ``waiter``; False when ``limit`` already wait."""
        if len(self._waiting) >= self.limit:
            return False
        self._waiting.append(waiter)
        return True

    def positions(self) -> set[int]:
        """The positions the parked queries wait for."""
        return {w.after for w in self._waiting}

    def take(self, reached: set[int], now: float) -> tuple[list[Waiter], list[Waiter]]:
        """Remove and return the queries now answerable: caught up, and out of time."""
        done = [w for w in self._waiting if w.after in reached]
        late = [w for w in self._waiting if w.after not in reached and w.deadline <= now]
        self._waiting = [w for w in self._waiting
                         if w.after not in reached and w.deadline > now]
        return done, late

    def next_deadline(self) -> float | None:
        """The earliest deadline of a parked query."""
        return min((w.deadline for w in self._waiting), default=None)


@dataclass(frozen=True)
class Recheck:
    """Tell the search actor to look at its parked queries again.

    Attributes:
        tick: sent by its timer (not by a commit).
    """

    tick: bool = False


@dataclass(frozen=True)
class CountWaiting:
    """Ask the search actor how many queries it has parked."""


class SearchActor(HandlerActor):
    """Keeps the search read model and answers ``SearchApartments``.

    Args:
        max_waiting: how many queries with ``after`` may wait at once (beyond it, they
            are answered at once, ``caught_up`` False).
        poll_seconds: how often parked queries look for other nodes' progress.

    A query's ``wait_ms`` counts from when this actor takes it from its mailbox.
    """

    consumer: ClassVar[str] = "search"

    def __init__(self, name: str, store: EventStore, writer: StoreWriter,
                 report: ReportFailure, *, max_waiting: int = MAX_WAITING,
                 poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__(name, store, writer, report)
        self.waiters = Waiters(max_waiting)
        self.catch_up = CatchUp(store.engine.connect)
        self._poll = poll_seconds
        self._timer: threading.Timer | None = None
        self._poked = False  # a Recheck is in the mailbox (set from the writer thread)

    def receive(self, message: Any) -> Any:
        """Handle events, queries, re-checks; answer :class:`CountWaiting`."""
        if isinstance(message, Recheck):
            if message.tick:
                self._timer = None
            else:
                self._poked = False
            self._recheck()
            return None
        if isinstance(message, CountWaiting):
            return len(self.waiters)
        if isinstance(message, Handle) and message.envelope.kind is Kind.QUERY:
            self._query(message.envelope, message.ticket)
            return None
        return super().receive(message)

    def on_stop(self) -> None:
        """Cancel the re-check timer (parked deliveries go back with the consumer)."""
        if self._timer is not None:
            self._timer.cancel()

    def react(self, envelope: Envelope) -> Reaction:
        """Update the read model from one event."""
        event = envelope.payload
        aid = envelope.apartment_id
        match event:
            case ApartmentAdded():
                row: dict[str, object] = {
                    "apartment_id": aid, "city": event.city, "city_key": city_key(event.city),
                    "title": event.title,
                    "price_per_night": event.price_per_night, "currency": event.currency,
                    "capacity": event.capacity}
                return Reaction(effects=[InsertRow(apts, row)])
            case DatesBooked():
                return Reaction(effects=[_nights(aid, event.reservation_id, event.start,
                                                 event.end, released=False)])
            case ApartmentUpdated():
                return Reaction(effects=[_run(sql_update(apts).where(
                    apts.c.apartment_id == aid).values(
                    price_per_night=event.price_per_night, capacity=event.capacity))])
            case ApartmentDelisted():
                return Reaction(effects=[DeleteRow(delisted, aid),
                                         InsertRow(delisted, {"apartment_id": aid})])
            case ApartmentRelisted():
                return Reaction(effects=[DeleteRow(delisted, aid)])
            case DatesBlocked():
                block_row: dict[str, object] = {
                    "apartment_id": aid, "reservation_id": f"block:{event.block_id}",
                    "start": event.start, "end": event.end}
                return Reaction(effects=[InsertRow(booked, block_row)])
            case DatesUnblocked():
                return Reaction(effects=[_release(aid, f"block:{event.block_id}")])
            case DatesReleased():
                return Reaction(effects=[_nights(aid, event.reservation_id, RELEASED,
                                                 RELEASED, released=True)])
        return Reaction()

    def answer(self, envelope: Envelope) -> Message:
        """Run a query against the read model."""
        q = envelope.payload
        if not isinstance(q, SearchApartments):
            raise TypeError(f"search answers SearchApartments, not {envelope.type}")
        return search(self.store.engine.connect, q)

    def committed(self, exc: BaseException | None) -> None:
        """Writer thread: an event was applied; parked queries may now be answerable."""
        if exc is None and len(self.waiters) and not self._poked:
            self._poked = True
            with contextlib.suppress(pykka.ActorDeadError):
                self.actor_ref.tell(Recheck())

    def _query(self, env: Envelope, ticket: Ticket) -> None:
        q = env.payload
        if not isinstance(q, SearchApartments):
            raise TypeError(f"search answers SearchApartments, not {env.type}")
        if q.after is None:
            self._reply(env, ticket, None)
            return
        if self.catch_up.reached([q.after]):
            self._reply(env, ticket, True)
            return
        waiter = Waiter(env, ticket, q.after, time.monotonic() + q.wait_ms / 1000)
        if q.wait_ms == 0 or not self.waiters.add(waiter):
            self._reply(env, ticket, False)
            return
        self._schedule()

    def _recheck(self) -> None:
        positions = self.waiters.positions()
        if not positions:
            return
        done, late = self.waiters.take(self.catch_up.reached(positions), time.monotonic())
        for w in done:
            self._reply(w.envelope, w.ticket, True)
        for w in late:
            self._reply(w.envelope, w.ticket, False)
        self._schedule()

    def _schedule(self) -> None:
        """One timer while queries wait: at the next poll or the earliest deadline."""
        deadline = self.waiters.next_deadline()
        if deadline is None or self._timer is not None:
            return
        delay = max(0.0, min(self._poll, deadline - time.monotonic()))
        ref = self.actor_ref

        def tick() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(Recheck(tick=True))

        self._timer = threading.Timer(delay, tick)
        self._timer.daemon = True
        self._timer.start()

    def _reply(self, env: Envelope, ticket: Ticket, caught_up: bool | None) -> None:
        result = self.answer(env)
        if caught_up is not None and isinstance(result, SearchResults):
            result = result.model_copy(update={"caught_up": caught_up})
        ticket.ack(env.follow(result).to_json())


def city_key(city: str) -> str:
    """What a city is searched by: Unicode case folding ('STRASSE' and 'straße' match).

    Computed in Python, where the row is written and where the query is built: SQLite's
    ``lower()`` folds ASCII only, PostgreSQL's depends on the collation, and neither
    maps 'ß' to 'ss'. A plain key column also lets the query use its index.
    """
    return city.casefold()


def _run(statement: Executable) -> Callable[[Connection], None]:
    def effect(conn: Connection) -> None:
        conn.execute(statement)
    return effect


RELEASED = date.min
"""A released stay's row holds the empty range [RELEASED, RELEASED): no night is taken."""


def _nights(apartment_id: str | None, reservation_id: str, start: date, end: date, *,
            released: bool) -> Callable[[Connection], None]:
    """A stay's row in ``search_booked``, whichever of its booking and its release
    comes first.

    Competing search consumers on several nodes may apply a stay's ``DatesReleased``
    before its ``DatesBooked``. A reservation is booked at most once and released at
    most once, so the two commute as upserts of one row: the release writes an empty
    range whatever is there (a tombstone when it comes first), the booking writes its
    nights only where no row is. Under PostgreSQL's read committed the conflict on the
    primary key serialises the two, where a delete could miss a row not yet committed.
    """
    values = {"apartment_id": apartment_id, "reservation_id": reservation_id,
              "start": start, "end": end}
    key = [booked.c.apartment_id, booked.c.reservation_id]

    def run(conn: Connection) -> None:
        ins = (pg_insert(booked) if conn.dialect.name == "postgresql"
               else sqlite_insert(booked)).values(values)
        conn.execute(ins.on_conflict_do_update(index_elements=key,
                                               set_={"start": start, "end": end})
                     if released else ins.on_conflict_do_nothing(index_elements=key))
    return run


def _release(apartment_id: str | None, key: str) -> DeleteRow:
    return DeleteRow(booked, (apartment_id, key))


def matching(q: SearchApartments) -> ColumnElement[bool]:
    """The condition a row of ``search_apartments`` meets to be a hit for ``q``."""
    cond = [apts.c.capacity >= q.guests,
            not_(exists().where(delisted.c.apartment_id == apts.c.apartment_id))]
    if q.city:
        # Compared on the stored key: the same on every database, and indexed.
        cond.append(apts.c.city_key == city_key(q.city))
    if q.currency is not None:
        # Read from each candidate's row (the covering index has no currency).
        cond.append(apts.c.currency == q.currency)
    if q.min_price is not None:
        cond.append(apts.c.price_per_night >= q.min_price)
    if q.max_price is not None:
        cond.append(apts.c.price_per_night <= q.max_price)
    if q.start is not None and q.end is not None:
        # Only the key selected, so the index on (apartment_id, start, end) answers it.
        taken = select(booked.c.apartment_id).where(and_(
            booked.c.apartment_id == apts.c.apartment_id,
            booked.c.start < q.end, q.start < booked.c.end)).exists()
        cond.append(not_(taken))
    return and_(*cond)


def statements(q: SearchApartments, *,
               total_limit: int = TOTAL_LIMIT) -> tuple[Select[Any], Select[Any]]:
    """What :func:`search` runs for ``q``: the ids of the page of hits with the number
    of matches beside each (one pass, not a count and a page), and that
    number alone, run only for a page past the last hit.

    Both count at most one match past ``max(total_limit, offset + limit)``: enough to
    page and to tell an exact total from a bound, without counting every apartment of
    a large city (at 1,000,000 apartments a full count would be most of a search's p99).
    Only ids: with a city, the covering index (``ix_search_apartments_city_price``)
    answers both without reading a table row; the page's rows are read by key after.
    Apart so that a benchmark can ask the database for their plans.
    """
    desc = q.sort == "price_desc"
    price = apts.c.price_per_night.desc() if desc else apts.c.price_per_night.asc()
    matches = (select(apts.c.apartment_id, apts.c.price_per_night).where(matching(q))
               .order_by(price, apts.c.apartment_id)
               .limit(_counted(q, total_limit) + 1).subquery("matches"))
    again = matches.c.price_per_night.desc() if desc else matches.c.price_per_night.asc()
    page = (select(matches.c.apartment_id, func.count().over().label("total"))
            .order_by(again, matches.c.apartment_id).limit(q.limit).offset(q.offset))
    return page, select(func.count()).select_from(matches)


def _counted(q: SearchApartments, total_limit: int) -> int:
    """How many matches a reply's total counts exactly."""
    return max(total_limit, q.offset + q.limit)


def search(connect: Callable[[], Connection], q: SearchApartments, *,
           total_limit: int = TOTAL_LIMIT) -> SearchResults:
    """Apartments matching ``q``, by price (cheapest first unless asked), paginated.

    Args:
        total_limit: matches counted exactly for the total (see :func:`statements`).
    """
    conn = connect()
    page, count = statements(q, total_limit=total_limit)
    with conn:
        ids = conn.execute(page).all()
        # No row to carry the total: there is no hit, or the page is past the last one.
        past_last = not ids and q.offset > 0
        found = conn.execute(count).scalar_one() if past_last else (
            int(ids[0].total) if ids else 0)
        rows = {r.apartment_id: r for r in conn.execute(
            select(apts).where(apts.c.apartment_id.in_([i.apartment_id for i in ids])))
        } if ids else {}
    # In the page's order; a row removed between the two reads is left out.
    hits = [ApartmentHit(apartment_id=r.apartment_id, city=r.city, title=r.title,
                         price_per_night=r.price_per_night, currency=r.currency,
                         capacity=r.capacity)
            for i in ids if (r := rows.get(i.apartment_id)) is not None]
    bound = _counted(q, total_limit)
    return SearchResults(apartments=hits, total=min(found, bound), total_exact=found <= bound,
                         start=q.start, end=q.end)
