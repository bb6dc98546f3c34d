"""Many apartments in a store, as a node would have left them, written directly.

Sending a million ``AddApartment`` through a node would take longer than the run that
measures it. :func:`load` writes the same rows instead, in bulk: each apartment's
commands are decided by the real rules (:mod:`rules.apartment`), their events
serialized by the writer's own :class:`store.writer.Commit`, their replies made by
the actor's :func:`actors.base.command_result` (with the rules' ``refusal_of``) and
the position the writer would stamp, and search's rows and inbox entries made as its
handler makes them. So:

* ``events``: every apartment's ``ApartmentAdded``; for the booked ones (a share,
  ``booked_share``), one to three stays, each ``ReservationRequested`` then
  ``ReservationAccepted`` and ``DatesBooked``, as ``RequestReservation`` and
  ``AcceptReservation`` leave them;
* ``inbox``: the intake's row for each of those commands (reply and content hash),
  search's for each event it applies;
* ``outbox``: empty, every event published; its id counter where the relay left it;
* ``search_apartments``, ``search_booked``: search's read model.

Not written: what the other handlers keep about the stays (payment, notifications,
the reservation process), which no command or query of the benchmark reads.

The catalogue (:func:`catalog`) is seeded: cities follow a long tail (``1/(rank + 30)``
over one city per 500 apartments, so the largest holds under 1% of all), and the same
weights pick the cities searched.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any

from sqlalchemy import Connection, text

from actors.apartment import ApartmentActor
from actors.base import command_result
from actors.search import SEARCH, city_key
from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    Consumer,
    DatesBooked,
    Envelope,
    Message,
    RequestReservation,
)
from messages.registry import spec_of
from messages.replies import Status, with_position
from rules.apartment import Apartment, Rules, decide, evolve, refusal_of
from store import make_engine
from store.rawsql import insert_rows
from store.tables import events_table, inbox_table, search_apartments_table, search_booked_table
from store.writer import Commit

APARTMENTS_PER_CITY = 500
CITY_OFFSET = 30  # flattens the head of the city tail: the largest city < 1%
CHUNK = 10_000  # apartments per transaction
STAY_DAYS = (2, 365)  # a stay starts this many days ahead of today
STAY_NIGHTS = (2, 10)


@dataclass(frozen=True)
class Catalog:
    """The apartments of a run, by index: city, capacity, price; the cities' weights."""

    cities: tuple[str, ...]
    cum_weights: tuple[float, ...]
    city_of: array[int]
    capacity: bytes
    price: array[int]

    def __len__(self) -> int:
        return len(self.city_of)

    def pick_city(self, rng: random.Random) -> str:
        """A city, as often as searchers ask for it (as often as it has apartments)."""
        return rng.choices(self.cities, cum_weights=self.cum_weights)[0]


def apartment_id(i: int) -> str:
    """The id of apartment ``i``."""
    return f"apt-{i:07d}"


def owner_id(i: int) -> str:
    """The id of apartment ``i``'s owner."""
    return f"owner-{i:07d}"


def catalog(n: int, seed: int) -> Catalog:
    """``n`` seeded apartments."""
    rng = random.Random(seed)
    n_cities = max(1, n // APARTMENTS_PER_CITY)
    cities = tuple(f"City {r + 1:04d}" for r in range(n_cities))
    cum = tuple(accumulate(1.0 / (r + 1 + CITY_OFFSET) for r in range(n_cities)))
    city_of = array("I", rng.choices(range(n_cities), cum_weights=cum, k=n))
    capacity = bytes(rng.randint(1, 6) for _ in range(n))
    price = array("I", (rng.randint(50, 300) * 100 for _ in range(n)))
    return Catalog(cities, cum, city_of, capacity, price)


@dataclass
class Loaded:
    """What :func:`load` wrote, and how long it took."""

    apartments: int = 0
    booked: int = 0  # apartments with at least one stay
    stays: int = 0
    events: int = 0
    rows: int = 0
    seconds: float = 0.0


@dataclass
class _Chunk:
    """The rows of a run of apartments, event positions counted from the chunk's start.

    Made in a worker process, which cannot know where the chunk's events land; the
    loader adds the base position (and stamps it in the replies, as the writer does).
    """

    apartments: int = 0
    booked: int = 0
    stays: int = 0
    published: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # "position": relative
    intake: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # (row, position)
    inbox: list[dict[str, Any]] = field(default_factory=list)  # search's
    read_model: list[dict[str, Any]] = field(default_factory=list)
    booked_nights: list[dict[str, Any]] = field(default_factory=list)


class _Apartments:
    """Decides each apartment's commands with the rules; collects what a node writes."""

    def __init__(self, cat: Catalog, booked_share: float, seed: int, today: date,
                 now: datetime) -> None:
        self.cat = cat
        self.booked_share = booked_share
        self.seed = seed
        self.today = today
        self.now = now
        self.rules = Rules(today=today, now=now)

    def chunk(self, first: int, last: int) -> _Chunk:
        """Apartments ``first`` up to ``last`` (excluded)."""
        out = _Chunk()
        for i in range(first, last):
            cmds = self.commands(i)
            stays = (len(cmds) - 1) // 2
            out.apartments += 1
            out.stays += stays
            out.booked += stays > 0
            self._apartment(out, apartment_id(i), cmds)
        return out

    def commands(self, i: int) -> list[Message]:
        """Apartment ``i``'s AddApartment, then each stay's request and acceptance."""
        cat = self.cat
        rng = random.Random(self.seed * 1_000_003 + i)
        cmds: list[Message] = [AddApartment(
            owner_id=owner_id(i), city=cat.cities[cat.city_of[i]], title=f"Flat {i}",
            price_per_night=cat.price[i], currency="EUR", capacity=cat.capacity[i])]
        if rng.random() < self.booked_share:
            for k, (s, e) in enumerate(_stays(rng, self.today)):
                rid = f"stay-{i:07d}-{k}"
                cmds += [RequestReservation(reservation_id=rid,
                                            guest_id=f"guest-{rng.randint(0, 99_999):05d}",
                                            start=s, end=e,
                                            guests=rng.randint(1, cat.capacity[i])),
                         AcceptReservation(reservation_id=rid, owner_id=owner_id(i))]
        return cmds

    def _apartment(self, out: _Chunk, key: str, commands: list[Message]) -> None:
        state, version = Apartment(apartment_id=key), 0
        stream = f"apartment:{key}"
        for command in commands:
            env = Envelope.new(command, apartment_id=key)
            events = [env.follow(p, apartment_id=key)
                      for p in decide(state, command, self.rules)]
            for e in events:
                state = evolve(state, e.payload)
            result = command_result(events, refusal_of(command, [e.payload for e in events]))
            if result.status is not Status.OK:
                raise RuntimeError(f"{command!r} on {key}: {result.reason} {result.detail}")
            ev, published = Commit(stream_id=stream, expected_version=version,
                                   events=events).rows()
            for row in ev:
                row["position"] = len(out.events) + 1
                out.events.append(row)
            out.published += len(published)
            version += len(events)
            out.intake.append(({"consumer": ApartmentActor.consumer,
                                "message_id": env.message_id,
                                "reply": env.follow(result).to_json(), "recorded_at": self.now,
                                "body_hash": env.content_hash()}, len(out.events)))
            for e in events:
                self._search(out, key, e)

    def _search(self, out: _Chunk, key: str, e: Envelope) -> None:
        """What search writes for an event it consumes: its inbox row and read model."""
        if Consumer.SEARCH not in spec_of(e.payload).consumers:
            return
        out.inbox.append({"consumer": SEARCH, "message_id": e.message_id, "reply": None,
                          "recorded_at": self.now, "body_hash": None})
        p = e.payload
        if isinstance(p, ApartmentAdded):
            out.read_model.append({
                "apartment_id": key, "city": p.city, "city_key": city_key(p.city),
                "title": p.title, "price_per_night": p.price_per_night, "currency": "EUR",
                "capacity": p.capacity})
        elif isinstance(p, DatesBooked):
            out.booked_nights.append({"apartment_id": key, "reservation_id": p.reservation_id,
                                      "start": p.start, "end": p.end})


def _stays(rng: random.Random, today: date) -> list[tuple[date, date]]:
    """One to three stays that do not overlap, in the next year."""
    out: list[tuple[date, date]] = []
    for _ in range(rng.randint(1, 3)):
        start = today + timedelta(days=rng.randint(*STAY_DAYS))
        end = start + timedelta(days=rng.randint(*STAY_NIGHTS))
        if all(end <= s or e <= start for s, e in out):
            out.append((start, end))
    return out


_worker: _Apartments | None = None  # each worker process's copy


def _init_worker(apartments: _Apartments) -> None:
    global _worker  # noqa: PLW0603 - one per worker process, set once
    _worker = apartments


def _make_chunk(bounds: tuple[int, int]) -> _Chunk:
    assert _worker is not None
    return _worker.chunk(*bounds)


def load(url: str, cat: Catalog, *, booked_share: float, seed: int, today: date,
         workers: int | None = None, progress: bool = False) -> Loaded:
    """Write ``cat`` into the empty store at ``url``: the schema first, then the rows.

    The rows are made by ``workers`` processes (default: one per core), written by
    this one in a transaction per :data:`CHUNK` apartments.

    Raises:
        RuntimeError: when the store is not empty, or a command is refused.
    """
    began = time.monotonic()
    now = datetime.now(UTC)
    maker = _Apartments(cat, booked_share, seed, today, now)
    bounds = [(a, min(a + CHUNK, len(cat))) for a in range(0, len(cat), CHUNK)]
    out = Loaded()
    published = 0
    engine = make_engine(url, synchronous="OFF")
    try:
        with engine.connect() as conn, _chunks(maker, bounds, workers) as chunks:
            if conn.execute(text("SELECT count(*) FROM events")).scalar():
                raise RuntimeError("the store is not empty")
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA cache_size=-262144")  # 256 MiB for the load
            for chunk in chunks:
                out.rows += _write(conn, chunk, base=out.events)
                out.events += len(chunk.events)
                out.apartments += chunk.apartments
                out.booked += chunk.booked
                out.stays += chunk.stays
                published += chunk.published
                if progress and out.apartments % (10 * CHUNK) == 0:
                    print(f"  {out.apartments:,} apartments loaded "
                          f"({time.monotonic() - began:.0f} s)", flush=True)
            _counters(conn, out.events, published)
            if engine.dialect.name == "postgresql":
                conn.execute(text("ANALYZE"))  # autovacuum would have, on a store that grew
            conn.commit()
    finally:
        engine.dispose()
    out.seconds = round(time.monotonic() - began, 1)
    return out


@contextlib.contextmanager
def _chunks(maker: _Apartments, bounds: list[tuple[int, int]], workers: int | None
            ) -> Iterator[Iterator[_Chunk]]:
    """The chunks in order, made by a pool of processes (in this one for a single chunk)."""
    n = min(workers or os.cpu_count() or 1, len(bounds))
    if n <= 1:
        yield (maker.chunk(a, b) for a, b in bounds)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(n, initializer=_init_worker, initargs=(maker,)) as pool:
        yield pool.imap(_make_chunk, bounds)


def _write(conn: Connection, chunk: _Chunk, *, base: int) -> int:
    """Insert a chunk whose first event takes position ``base + 1``, in one transaction;
    the row count. The rows go through the writer's own statements (:mod:`store.rawsql`).
    """
    for row in chunk.events:
        row["position"] += base
    intake = []
    for row, position in chunk.intake:
        row["reply"] = with_position(row["reply"], base + position)
        intake.append(row)
    n = 0
    for table, rows in ((events_table, chunk.events), (inbox_table, intake + chunk.inbox),
                        (search_apartments_table, chunk.read_model),
                        (search_booked_table, chunk.booked_nights)):
        insert_rows(conn, table, rows)
        n += len(rows)
    conn.commit()
    return n


def _counters(conn: Connection, events: int, published: int) -> None:
    """Leave the id counters where a node would: past every event and outbox row."""
    if conn.dialect.name == "postgresql":
        for table, column, value in (("events", "position", events),
                                     ("outbox", "id", published)):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                              f":v)"), {"v": max(1, value)})
    elif conn.dialect.name == "sqlite" and published:
        seq = {"n": published}
        if not conn.execute(text("UPDATE sqlite_sequence SET seq = :n WHERE name = 'outbox'"),
                            seq).rowcount:
            conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', :n)"),
                         seq)
