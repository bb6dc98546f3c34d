"""The repair scan (node/repair.py) on each store: what it finds, and that its pages,
whatever their size, add up to one whole scan."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from messages import (
    ApartmentAdded,
    DatesBooked,
    DatesReleased,
    Envelope,
    Message,
    Party,
    PaymentFailed,
    PaymentSucceeded,
    ReservationAccepted,
    ReservationCancelled,
    ReservationRequested,
)
from messages.control import UnpaidBooking
from node import repair
from node.repair import unpaid_bookings
from store import Commit, EventStore, StoreWriter
from tests.conftest import day


def _booked(rid: str, n: int) -> list[Message]:
    start, end = day(2 * n + 1), day(2 * n + 2)
    return [
        ReservationRequested(reservation_id=rid, guest_id="gina", owner_id="olga", start=start,
                             end=end, guests=1, total_price=100, card_token="tok_decline",
                             card_last4="0002"),
        ReservationAccepted(reservation_id=rid, guest_id="gina", owner_id="olga", start=start,
                            end=end, total_price=100, card_token="tok_decline",
                            card_last4="0002"),
        DatesBooked(reservation_id=rid, start=start, end=end),
    ]


def _fill(engine: Engine) -> None:
    """apt-a holds res-0..res-4 and res-ok booked but res-2, which it released; apt-b
    holds res-b. Every card but res-ok's was declined."""
    writer = StoreWriter(engine)
    writer.start()

    def commit(stream: str, events: list[Message], apt: str) -> None:
        writer.submit(Commit(stream_id=stream, expected_version=0, publish=False,
                             events=[Envelope.new(e, apartment_id=apt) for e in events]))

    try:
        added = ApartmentAdded(owner_id="olga", city="Oslo", title="T", price_per_night=50,
                               currency="NOK", capacity=2)
        stays = [e for n in range(5) for e in _booked(f"res-{n}", n)]
        released: list[Message] = [
            ReservationCancelled(reservation_id="res-2", guest_id="gina", owner_id="olga",
                                 cancelled_by=Party.SYSTEM, reason="payment_failed",
                                 start=day(5), end=day(6), total_price=100, refund_amount=0,
                                 card_last4="0002"),
            DatesReleased(reservation_id="res-2", start=day(5), end=day(6))]
        commit("apartment:apt-a", [added, *stays, *_booked("res-ok", 9), *released], "apt-a")
        commit("apartment:apt-b", [added, *_booked("res-b", 0)], "apt-b")
        for n in range(5):
            commit(f"payment:res-{n}", [PaymentFailed(
                reservation_id=f"res-{n}", guest_id="gina", amount=100, reason="declined")],
                "apt-a")
        commit("payment:res-ok", [PaymentSucceeded(
            reservation_id="res-ok", guest_id="gina", amount=100, charge_id="ch",
            card_last4="0002")], "apt-a")
        commit("payment:res-b", [PaymentFailed(
            reservation_id="res-b", guest_id="gina", amount=100, reason="declined")], "apt-b")
        # not a payment stream: not read
        commit("audit:res-0", [PaymentFailed(
            reservation_id="res-0", guest_id="gina", amount=1, reason="decoy")], "apt-a")
        writer.barrier()
    finally:
        writer.stop()


def _ids(rows: list[UnpaidBooking]) -> list[str]:
    return [r.reservation_id for r in rows]


def test_it_finds_declined_stays_still_booked_and_pages_add_up(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(engine)
    store = EventStore(engine)
    whole = unpaid_bookings(store)
    assert _ids(whole.found) == ["res-0", "res-1", "res-3", "res-4", "res-b"]
    assert (whole.scanned, whole.next) == (6, None)
    assert whole.found[3].model_dump() == {
        "reservation_id": "res-4", "apartment_id": "apt-a", "guest_id": "gina",
        "start": day(9).isoformat(), "end": day(10).isoformat(), "amount": 100,
        "currency": "NOK", "reason": "declined"}
    monkeypatch.setattr(repair, "PAGE", 2)  # several queries per request, too
    for limit, budget in ((1, 10), (10, 1), (2, 3), (5, 5)):
        found: list[UnpaidBooking] = []
        after: int | None = 0
        requests = 0
        while after is not None:
            page = unpaid_bookings(store, after=after, limit=limit, budget=budget)
            assert len(page.found) <= limit and page.scanned <= budget
            found += page.found
            after = page.next
            requests += 1
            assert requests <= 10, (limit, budget)
        assert found == whole.found, (limit, budget)
