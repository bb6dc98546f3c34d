"""Has search applied a write? The check behind ``SearchApartments.after``.

On SQLite and PostgreSQL (``engine`` fixture). Events are written as the store writer
writes them; "search applied it" is search's inbox row, as its actor writes it, on any
node. The parked-query bookkeeping is pure and runs on a fake clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, Engine, insert

from actors.outcome import Outcome, Ticket
from actors.search import CatchUp, Waiter, Waiters, search_event_types
from messages import (
    ApartmentAdded,
    DatesBooked,
    Envelope,
    Message,
    ReservationRequested,
    SearchApartments,
)
from store.tables import events_table, inbox_table
from tests.conftest import day

_position = iter(range(1_000, 10**6, 7))


def record(engine: Engine, stream_id: str, version: int, payload: Message,
           position: int | None = None) -> tuple[str, int]:
    """Insert one event (at ``position`` when given: later ones may sort first)."""
    env = Envelope.new(payload, apartment_id="a1")
    row = {"stream_id": stream_id, "version": version, "event_id": env.message_id,
           "type": env.type, "body": env.to_json(), "recorded_at": datetime.now(UTC)}
    with engine.begin() as c:
        at = c.execute(insert(events_table).values(
            **row, position=position if position is not None else next(_position))
            .returning(events_table.c.position)).scalar_one()
    return env.message_id, int(at)


def applied(engine: Engine, event_id: str) -> None:
    """What the search actor commits with its read-model rows, on whichever node."""
    with engine.begin() as c:
        c.execute(insert(inbox_table).values(consumer="search", message_id=event_id,
                                             recorded_at=datetime.now(UTC)))


def added() -> ApartmentAdded:
    return ApartmentAdded(owner_id="o1", city="Porto", title="t", price_per_night=1,
                          currency="EUR", capacity=1)


def requested() -> ReservationRequested:
    return ReservationRequested(reservation_id="r1", guest_id="g1", start=day(1), end=day(2),
                                guests=1, total_price=1, owner_id="o1", card_token="tok_visa",
                                card_last4="4242")


def booked() -> DatesBooked:
    return DatesBooked(reservation_id="r1", start=day(1), end=day(2))


def test_search_applies_the_types_registered_for_its_queue() -> None:
    types = search_event_types()
    assert {"ApartmentAdded", "DatesBooked", "DatesReleased"} <= types
    assert "ReservationRequested" not in types


def test_a_write_is_reached_when_every_search_event_up_to_it_is_applied(
        engine: Engine) -> None:
    s = "apartment:a1"
    add_id, add_at = record(engine, s, 1, added())
    _, req_at = record(engine, s, 2, requested())
    book_id, book_at = record(engine, s, 3, booked())
    check = CatchUp(engine.connect)
    assert check.reached([add_at, req_at, book_at, 999_999_999]) == set()

    # Another node applied the booking first (a requeued commit, competing consumers):
    # a watermark of "highest position applied" would call everything up to it done.
    applied(engine, book_id)
    assert check.reached([add_at, req_at, book_at]) == set()

    applied(engine, add_id)
    # the request is no search event: what precedes it on its stream is what counts
    assert check.reached([add_at, req_at, book_at]) == {add_at, req_at, book_at}
    assert check.reached([999_999_999]) == set()  # a position nobody recorded


def test_positions_committed_out_of_order_are_judged_by_their_stream(
        engine: Engine) -> None:
    """A higher position (another apartment) visible and applied proves nothing here."""
    low_id, low = record(engine, "apartment:a1", 1, added(), position=500)
    high_id, high = record(engine, "apartment:a2", 1, added(), position=400)
    applied(engine, high_id)
    check = CatchUp(engine.connect)
    assert check.reached([low, high]) == {high}
    applied(engine, low_id)
    assert check.reached([low, high]) == {low, high}


def test_a_proven_stream_is_not_read_again(engine: Engine) -> None:
    add_id, at = record(engine, "apartment:a1", 1, added())
    applied(engine, add_id)
    connections = 0

    def connect() -> Connection:
        nonlocal connections
        connections += 1
        return engine.connect()

    check = CatchUp(connect)
    assert check.reached([at]) == {at}
    assert check.reached([at]) == {at}
    assert check.reached([]) == set()
    assert connections == 1  # both facts are immutable once read: cached


# --- parked queries ----------------------------------------------------------------------
SETTLED: list[Outcome] = []  # what any parked query's ticket passed on (Waiters never settles)


def waiter(after: int, deadline: float) -> Waiter:
    env = Envelope.new(SearchApartments(after=after))
    return Waiter(env, Ticket(SETTLED.append), after, deadline)


def test_waiters_are_bounded() -> None:
    w = Waiters(limit=2)
    assert w.add(waiter(1, 10.0)) and w.add(waiter(1, 10.0))
    assert not w.add(waiter(2, 10.0))
    assert len(w) == 2 and w.positions() == {1}
    assert Waiters(limit=0).add(waiter(1, 10.0)) is False


def test_waiters_hand_back_the_caught_up_and_the_late_once() -> None:
    w = Waiters(limit=10)
    first, second, third = waiter(5, 10.0), waiter(6, 3.0), waiter(7, 20.0)
    for x in (first, second, third):
        w.add(x)
    assert w.next_deadline() == 3.0
    assert w.take(reached=set(), now=1.0) == ([], [])
    assert w.take(reached={5}, now=3.0) == ([first], [second])  # a deadline is inclusive
    assert w.take(reached={5}, now=3.0) == ([], [])
    assert w.positions() == {7} and w.next_deadline() == 20.0
    assert w.take(reached={7}, now=99.0) == ([third], [])  # caught up beats late
    assert len(w) == 0 and w.next_deadline() is None
    assert not any(x.ticket.settled for x in (first, second, third)) and SETTLED == []
