"""Lifecycle flows on the in-memory broker: search, blocks, withdrawal, payment retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from actors.notifier import notifications
from actors.payment import GatewayTimeout, SimulatedGateway, with_retries
from actors.timers import TimerService, pending_timers
from messages import (
    AcceptReservation,
    AddApartment,
    BlockDates,
    CancelReservation,
    RequestReservation,
    SearchApartments,
    UnblockDates,
    UpdateApartment,
    WithdrawRequest,
)
from node import Node
from store import StoreWriter, make_engine
from tests.conftest import MemoryProducer, day, eventually


def add(p: MemoryProducer, apt: str, price: int, capacity: int = 2,
        city: str = "Porto") -> None:
    r = p.send(AddApartment(owner_id="o1", city=city, title=apt, price_per_night=price,
                            currency="EUR", capacity=capacity), apt)
    assert r["status"] == "ok", r


def ids(p: MemoryProducer, q: SearchApartments) -> list[str]:
    return [a["apartment_id"] for a in p.send(q)["apartments"]]


def test_search_by_price_guests_dates_sorted_and_paged(
        memory_node: Node, producer: MemoryProducer) -> None:
    for apt, price, cap in (("a", 300, 2), ("b", 100, 4), ("c", 200, 2), ("d", 400, 1)):
        add(producer, apt, price, cap)
    add(producer, "e", 50, 2, city="Faro")
    eventually(lambda: producer.send(SearchApartments(city="Porto"))["total"] == 4)
    assert ids(producer, SearchApartments(city="porto", min_price=150, max_price=350)) == [
        "c", "a"]
    assert ids(producer, SearchApartments(city="Porto", guests=3)) == ["b"]
    assert ids(producer, SearchApartments(city="Porto", sort="price_desc")) == [
        "d", "a", "c", "b"]
    page = producer.send(SearchApartments(city="Porto", limit=2, offset=2))
    assert ([a["apartment_id"] for a in page["apartments"]], page["total"]) == (["a", "d"], 4)

    r = producer.send(UpdateApartment(owner_id="o1", price_per_night=500, capacity=5), "b")
    assert r["status"] == "ok", r
    eventually(lambda: ids(producer, SearchApartments(city="Porto", guests=5)) == ["b"])
    assert ids(producer, SearchApartments(city="Porto"))[-1] == "b"


def test_blocked_dates_leave_search_and_come_back(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer, "a1", 100)
    free = SearchApartments(city="Porto", start=day(12), end=day(13))
    eventually(lambda: ids(producer, free) == ["a1"])
    r = producer.send(BlockDates(owner_id="o1", block_id="summer", start=day(10),
                                 end=day(20)), "a1")
    assert r["status"] == "ok", r
    eventually(lambda: ids(producer, free) == [])
    assert ids(producer, SearchApartments(city="Porto", start=day(20), end=day(22))) == ["a1"]
    booked = producer.send(RequestReservation(reservation_id="r1", guest_id="g",
                                              start=day(15), end=day(16)), "a1")
    assert booked["reason"] == "dates_blocked"
    producer.send(UnblockDates(owner_id="o1", block_id="summer"), "a1")
    eventually(lambda: ids(producer, free) == ["a1"])


def test_withdrawal_tells_the_owner_and_clears_the_timer(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer, "a1", 100)
    producer.send(RequestReservation(reservation_id="r1", guest_id="g1", start=day(3),
                                     end=day(4)), "a1")
    assert [t["timer_id"] for t in pending_timers(memory_node.engine)] == ["expire:r1"]
    r = producer.send(WithdrawRequest(reservation_id="r1", guest_id="g1"), "a1")
    assert r["status"] == "ok", r
    assert pending_timers(memory_node.engine) == []
    eventually(lambda: "Request withdrawn" in {
        n["subject"] for n in notifications(memory_node.engine, "o1")})
    late = producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    assert late["reason"] == "not_pending"


def test_a_gateway_that_never_answers_fails_the_payment_and_frees_the_dates(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer, "a1", 100)
    producer.send(RequestReservation(reservation_id="r1", guest_id="g1", start=day(3),
                                     end=day(5), card_token="tok_timeout"), "a1")
    producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    eventually(lambda: "ReservationCancelled" in [
        e.type for e in memory_node.store.load("apartment:a1")])
    [failed] = [e.payload.model_dump() for e in memory_node.store.load("payment:r1")]
    assert failed["reason"] == "gateway_timeout"
    again = producer.send(RequestReservation(reservation_id="r2", guest_id="g2", start=day(3),
                                             end=day(5)), "a1")
    assert again["status"] == "ok"


def test_a_refund_that_never_goes_through_is_recorded_for_an_operator(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer, "a1", 100)
    producer.send(RequestReservation(reservation_id="r1", guest_id="g1", start=day(20),
                                     end=day(22), card_token="tok_norefund"), "a1")
    producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    eventually(lambda: "ReservationConfirmed" in [
        e.type for e in memory_node.store.load("reservation:r1")])
    r = producer.send(CancelReservation(reservation_id="r1", by="o1"), "a1")
    assert r["status"] == "ok", r
    eventually(lambda: [e.type for e in memory_node.store.load("refund:r1")] == [
        "RefundFailed"])
    [failed] = [e.payload.model_dump() for e in memory_node.store.load("refund:r1")]
    assert (failed["amount"], failed["reason"]) == (200, "gateway_timeout")
    assert "Refund issued" not in {n["subject"] for n in notifications(memory_node.engine,
                                                                        "g1")}


def test_retries_are_bounded() -> None:
    calls: list[int] = []

    def never() -> int:
        calls.append(1)
        raise GatewayTimeout("no")

    assert with_retries(never, attempts=3, delay=0.0, sleep=lambda _s: None) is None
    assert len(calls) == 3


def test_the_gateway_refunds_once_per_key_and_never_more_than_it_took(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    gw = SimulatedGateway(engine, decline_rate=0.0, decline_token_prefix="tok_decline")
    assert gw.charge(idempotency_key="r1", amount=1000, card_token="tok_visa").ok
    first = gw.refund(idempotency_key="refund:r1", charge_key="r1", amount=5000)
    assert (first.ok, first.amount) == (True, 1000)
    assert gw.refund(idempotency_key="refund:r1", charge_key="r1", amount=5000) == first
    assert gw.refunds_for("r1") == [1000]
    assert not gw.refund(idempotency_key="refund:r9", charge_key="r9", amount=1).ok
    declined = gw.charge(idempotency_key="r2", amount=10, card_token="tok_decline")
    assert not declined.ok
    assert gw.refund(idempotency_key="refund:r2", charge_key="r2", amount=10).reason == (
        "no_charge")
    engine.dispose()


def test_a_due_timer_fires_once_per_attempt_through_the_outbox(tmp_path: Path) -> None:
    from sqlalchemy import insert, select

    from store.tables import outbox_table, timers_table

    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    writer = StoreWriter(engine)
    writer.start()
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    now = [t0]
    with engine.begin() as conn:
        conn.execute(insert(timers_table).values(
            timer_id="expire:r1", apartment_id="a1", reservation_id="r1",
            command="ExpireReservation", due_at=t0 + timedelta(minutes=1), attempts=0))
    service = TimerService(engine, writer, poll_interval=0.5, refire_after=60,
                           clock=lambda: now[0])
    try:
        assert service.fire_due() == 0  # not due yet
        now[0] = t0 + timedelta(minutes=1)
        assert service.fire_due() == 1
        assert service.fire_due() == 0  # fired; waits for refire_after
        now[0] = t0 + timedelta(minutes=2, seconds=1)
        assert service.fire_due() == 1  # still there: fire again, as a new attempt
        with engine.connect() as conn:
            rows = conn.execute(select(outbox_table.c.event_id, outbox_table.c.exchange,
                                       outbox_table.c.routing_key)).all()
        assert [tuple(r) for r in rows] == [("expire:r1:1", "commands", "a1"),
                                            ("expire:r1:2", "commands", "a1")]
    finally:
        writer.stop()
        engine.dispose()
