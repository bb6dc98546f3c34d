"""The payment, notifier and search handlers on a real node (memory broker, SQLite).

Events are put straight on a handler's queue (the default exchange routes by queue
name), as the relay would, including the same event twice: a relay republishing
after a crash, or RabbitMQ redelivering.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from actors.notifier import notifications
from actors.payment import SimulatedGateway
from broker import Outgoing
from broker.memory import MemoryBroker
from messages import (
    AcceptReservation,
    ApartmentAdded,
    Consumer,
    DatesBooked,
    DatesReleased,
    Envelope,
    Message,
    NotificationSent,
    Party,
    PaymentFailed,
    PaymentSucceeded,
    RefundIssued,
    ReservationAccepted,
    ReservationCancelled,
    ReservationRequested,
    SearchApartments,
)
from node import Node
from rules.clock import pinned
from store import make_engine
from store.tables import gateway_charges_table, inbox_table
from tests.conftest import TODAY, MemoryProducer, day, eventually, make_settings

DEADLINE = 15.0




def memory_broker(node: Node) -> MemoryBroker:
    assert isinstance(node.broker, MemoryBroker)
    return node.broker


def deliver(node: Node, consumer: Consumer, env: Envelope, times: int = 1) -> None:
    """Put an event on one handler's queue, ``times`` times (same message_id)."""
    broker = memory_broker(node)
    for _ in range(times):
        broker.publish(Outgoing("", node.topology.queue(consumer), env.to_json(),
                                message_id=env.message_id, type=env.type))


def handled(node: Node, consumer: Consumer, *envs: Envelope) -> Callable[[], bool]:
    """True once every envelope is in the consumer's inbox and its queue is empty."""
    broker = memory_broker(node)

    def check() -> bool:
        return (all(node.store.seen(consumer.value, e.message_id)[0] for e in envs)
                and broker.depth(node.topology.queue(consumer)) == 0)
    return check


def accepted(rid: str = "r1", token: str = "tok_visa", guest: str = "g1",
             total: int = 35000) -> ReservationAccepted:
    return ReservationAccepted(reservation_id=rid, guest_id=guest, owner_id="o1",
                               start=day(7), end=day(14), total_price=total,
                               card_token=token, card_last4="4242")


def ledger(node: Node, key: str) -> list[dict[str, Any]]:
    with node.engine.connect() as c:
        return [dict(r) for r in c.execute(select(gateway_charges_table).where(
            gateway_charges_table.c.idempotency_key == key)).mappings()]


def inbox_count(node: Node, consumer: Consumer, message_id: str) -> int:
    with node.engine.connect() as c:
        n = c.execute(select(func.count()).select_from(inbox_table).where(
            inbox_table.c.consumer == consumer.value,
            inbox_table.c.message_id == message_id)).scalar_one()
    return int(n)


def payloads(node: Node, stream: str) -> list[Message]:
    return [e.payload for e in node.store.load(stream)]


# --- payment -------------------------------------------------------------------------
def test_a_duplicated_acceptance_charges_once(memory_node: Node) -> None:
    env = Envelope.new(accepted("r1"), apartment_id="a1")
    deliver(memory_node, Consumer.PAYMENT, env, times=2)  # both in flight at once
    eventually(handled(memory_node, Consumer.PAYMENT, env))

    charges = ledger(memory_node, "r1")
    assert len(charges) == 1
    assert charges[0]["status"] == "charged" and charges[0]["amount"] == 35000
    outcome = payloads(memory_node, "payment:r1")
    assert len(outcome) == 1
    assert isinstance(outcome[0], PaymentSucceeded)
    assert outcome[0].charge_id == charges[0]["charge_id"]
    assert (outcome[0].amount, outcome[0].card_last4) == (35000, "4242")
    assert inbox_count(memory_node, Consumer.PAYMENT, env.message_id) == 1
    follows = memory_node.store.load("payment:r1")[0]
    assert (follows.causation_id, follows.correlation_id) == (env.message_id,
                                                              env.correlation_id)


def test_a_redelivered_acceptance_after_it_was_handled_changes_nothing(
        memory_node: Node) -> None:
    gateway = memory_node.gateway
    assert isinstance(gateway, SimulatedGateway)
    env = Envelope.new(accepted("r2"), apartment_id="a1")
    deliver(memory_node, Consumer.PAYMENT, env)
    eventually(handled(memory_node, Consumer.PAYMENT, env))
    calls = gateway.calls
    for _ in range(3):
        deliver(memory_node, Consumer.PAYMENT, env)
    eventually(lambda: memory_broker(memory_node).depth(
        memory_node.topology.queue(Consumer.PAYMENT)) == 0)
    assert gateway.calls == calls  # known from the inbox: the gateway is not even asked
    assert len(ledger(memory_node, "r2")) == 1
    assert len(payloads(memory_node, "payment:r2")) == 1


def test_many_duplicates_of_many_acceptances_charge_each_once(memory_node: Node) -> None:
    envs = [Envelope.new(accepted(f"r{i}"), apartment_id="a1") for i in range(10)]
    for _ in range(3):
        for env in envs:
            deliver(memory_node, Consumer.PAYMENT, env)
    eventually(handled(memory_node, Consumer.PAYMENT, *envs))
    for i in range(10):
        assert len(ledger(memory_node, f"r{i}")) == 1
        assert [type(p) for p in payloads(memory_node, f"payment:r{i}")] == [PaymentSucceeded]


def test_a_declined_token_records_payment_failed(memory_node: Node) -> None:
    env = Envelope.new(accepted("r3", token="tok_decline_insufficient"), apartment_id="a1")
    deliver(memory_node, Consumer.PAYMENT, env, times=2)
    eventually(handled(memory_node, Consumer.PAYMENT, env))
    outcome = payloads(memory_node, "payment:r3")
    assert len(outcome) == 1
    assert isinstance(outcome[0], PaymentFailed)
    assert (outcome[0].reason, outcome[0].amount, outcome[0].guest_id) == (
        "card_declined", 35000, "g1")
    assert [c["status"] for c in ledger(memory_node, "r3")] == ["declined"]


def _payment_node(tmp_path: Path, **payment: float) -> Iterator[Node]:
    """A started node whose payment settings are ``payment``."""
    settings = make_settings(tmp_path)
    for name, value in payment.items():
        setattr(settings.payment, name, value)
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def declining_node(tmp_path: Path) -> Iterator[Node]:
    """A node whose simulated gateway declines every charge."""
    yield from _payment_node(tmp_path, decline_rate=1.0)


def test_a_gateway_declining_everything_records_payment_failed(declining_node: Node) -> None:
    envs = [Envelope.new(accepted(f"r{i}"), apartment_id="a1") for i in range(5)]
    for env in envs:
        deliver(declining_node, Consumer.PAYMENT, env)
    eventually(handled(declining_node, Consumer.PAYMENT, *envs))
    for i in range(5):
        outcome = payloads(declining_node, f"payment:r{i}")
        assert len(outcome) == 1 and isinstance(outcome[0], PaymentFailed)
        assert [c["status"] for c in ledger(declining_node, f"r{i}")] == ["declined"]


def test_simulated_gateway_declines_at_rate_one_and_remembers(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        always = SimulatedGateway(engine, decline_rate=1.0, decline_token_prefix="tok_decline")
        for i in range(20):
            r = always.charge(idempotency_key=f"k{i}", amount=100, card_token="tok_visa")
            assert (r.ok, r.reason) == (False, "card_declined")
            again = always.charge(idempotency_key=f"k{i}", amount=100, card_token="tok_visa")
            assert again == r
            assert always.charges_for(f"k{i}") == 1

        never = SimulatedGateway(engine, decline_rate=0.0, decline_token_prefix="tok_decline")
        ok = never.charge(idempotency_key="fresh", amount=250, card_token="tok_visa")
        assert ok.ok and ok.charge_id.startswith("ch_")
        # the same key returns the recorded charge, whatever is asked the second time
        assert never.charge(idempotency_key="fresh", amount=999, card_token="tok_decline") == ok
        # a key the declining gateway recorded stays declined for any gateway on the ledger
        assert not never.charge(idempotency_key="k0", amount=100, card_token="tok_visa").ok
        assert never.charges_for("fresh") == 1
        declined = never.charge(idempotency_key="tok", amount=1, card_token="tok_decline_x")
        assert (declined.ok, declined.reason) == (False, "card_declined")
    finally:
        engine.dispose()


# --- notifier ------------------------------------------------------------------------
def test_the_same_event_twice_notifies_each_person_once(memory_node: Node) -> None:
    acc = Envelope.new(accepted("r1", guest="ana"), apartment_id="a1")
    req = Envelope.new(ReservationRequested(
        reservation_id="r1", guest_id="ana", owner_id="olga", start=day(7), end=day(14),
        guests=2, total_price=35000, card_token="tok_visa", card_last4="4242"),
        apartment_id="a1")
    deliver(memory_node, Consumer.NOTIFIER, acc, times=2)
    deliver(memory_node, Consumer.NOTIFIER, req, times=2)
    eventually(handled(memory_node, Consumer.NOTIFIER, acc, req))
    deliver(memory_node, Consumer.NOTIFIER, acc)  # and once more, after it was handled
    eventually(handled(memory_node, Consumer.NOTIFIER, acc))

    engine = memory_node.engine
    to_ana = notifications(engine, "ana")
    to_olga = notifications(engine, "olga")
    assert [(n["event_id"], n["subject"]) for n in to_ana] == [
        (acc.message_id, "Your request was accepted")]
    assert [(n["event_id"], n["subject"]) for n in to_olga] == [
        (req.message_id, "New booking request")]
    assert "35" in str(to_olga[0]["text"]) and "r1" in str(to_olga[0]["text"])
    sent = payloads(memory_node, f"notifications:{acc.message_id}")
    assert len(sent) == 1 and isinstance(sent[0], NotificationSent)
    assert (sent[0].recipient, sent[0].notification_id) == ("ana", to_ana[0]["id"])


def test_one_guest_hears_about_each_event(memory_node: Node) -> None:
    envs = [Envelope.new(accepted(f"r{i}", guest="ana"), apartment_id="a1") for i in range(3)]
    for env in envs:
        deliver(memory_node, Consumer.NOTIFIER, env, times=2)
    eventually(handled(memory_node, Consumer.NOTIFIER, *envs))
    got = notifications(memory_node.engine, "ana")
    assert sorted(str(n["event_id"]) for n in got) == sorted(e.message_id for e in envs)


# --- search --------------------------------------------------------------------------
APARTMENTS = {  # id: (city, price per night, capacity)
    "a1": ("Porto", 5000, 2),
    "a2": ("Porto", 8000, 4),
    "a3": ("Lisbon", 6000, 2),
    "a4": ("porto", 3000, 1),
    "a5": ("PORTO", 12000, 6),
}


def listed(node: Node, apartments: dict[str, tuple[str, int, int]]) -> list[Envelope]:
    envs = [Envelope.new(ApartmentAdded(owner_id="o1", city=city, title=f"Flat {aid}",
                                        price_per_night=price,
                                        currency="EUR", capacity=cap), apartment_id=aid)
            for aid, (city, price, cap) in apartments.items()]
    for env in envs:
        deliver(node, Consumer.SEARCH, env, times=2)
    return envs


@pytest.fixture
def search_node(memory_node: Node) -> Node:
    envs = listed(memory_node, APARTMENTS)
    envs += [Envelope.new(DatesBooked(reservation_id="r1", start=day(10), end=day(14)),
                          apartment_id="a2"),
             Envelope.new(DatesBooked(reservation_id="r2", start=day(20), end=day(22)),
                          apartment_id="a5")]
    for env in envs[-2:]:
        deliver(memory_node, Consumer.SEARCH, env, times=2)
    eventually(handled(memory_node, Consumer.SEARCH, *envs))
    return memory_node


def ids(reply: dict[str, Any]) -> list[str]:
    return [a["apartment_id"] for a in reply["apartments"]]


def test_search_filters_by_city_price_guests_and_dates(search_node: Node) -> None:
    p = MemoryProducer(memory_broker(search_node))

    every = p.send(SearchApartments())
    assert ids(every) == ["a4", "a1", "a3", "a2", "a5"]  # cheapest first
    assert every["total"] == 5
    assert every["apartments"][1] == {"apartment_id": "a1", "city": "Porto",
                                      "title": "Flat a1", "price_per_night": 5000,
                                      "currency": "EUR", "capacity": 2}

    assert ids(p.send(SearchApartments(city="pOrTo"))) == ["a4", "a1", "a2", "a5"]
    assert ids(p.send(SearchApartments(city="Lisbon"))) == ["a3"]
    assert p.send(SearchApartments(city="Faro"))["total"] == 0
    assert ids(p.send(SearchApartments(guests=2))) == ["a1", "a3", "a2", "a5"]
    assert ids(p.send(SearchApartments(guests=5))) == ["a5"]
    assert ids(p.send(SearchApartments(min_price=5000, max_price=8000))) == ["a1", "a3", "a2"]
    assert ids(p.send(SearchApartments(min_price=8001))) == ["a5"]
    assert ids(p.send(SearchApartments(max_price=2999))) == []

    def free(start: int, end: int) -> list[str]:
        r = p.send(SearchApartments(city="porto", start=day(start), end=day(end)))
        assert (r["start"], r["end"]) == (day(start).isoformat(), day(end).isoformat())
        return ids(r)

    assert free(12, 13) == ["a4", "a1", "a5"]  # inside a2's booking
    assert free(9, 11) == ["a4", "a1", "a5"]  # overlaps its first night
    assert free(13, 15) == ["a4", "a1", "a5"]  # overlaps its last night
    assert free(8, 16) == ["a4", "a1", "a5"]  # covers it
    assert free(8, 10) == ["a4", "a1", "a2", "a5"]  # ends the day a2's booking starts
    assert free(14, 16) == ["a4", "a1", "a2", "a5"]  # starts the day it ends
    assert free(19, 23) == ["a4", "a1", "a2"]  # a5 is booked 20..22
    # dates need both ends; one alone filters nothing
    r = p.send(SearchApartments(city="porto", start=day(12)))
    assert ids(r) == ["a4", "a1", "a2", "a5"]

    both = p.send(SearchApartments(city="Porto", guests=2, max_price=10000,
                                   start=day(11), end=day(12)))
    assert ids(both) == ["a1"] and both["total"] == 1


def test_search_paginates_with_a_stable_total(search_node: Node) -> None:
    p = MemoryProducer(memory_broker(search_node))
    pages = [p.send(SearchApartments(limit=2, offset=o)) for o in (0, 2, 4, 6)]
    assert [ids(pg) for pg in pages] == [["a4", "a1"], ["a3", "a2"], ["a5"], []]
    assert [pg["total"] for pg in pages] == [5, 5, 5, 5]
    porto = [p.send(SearchApartments(city="porto", limit=3, offset=o)) for o in (0, 3)]
    assert [ids(pg) for pg in porto] == [["a4", "a1", "a2"], ["a5"]]
    assert [pg["total"] for pg in porto] == [4, 4]


def test_search_orders_equal_prices_by_id(memory_node: Node) -> None:
    envs = listed(memory_node, {"b2": ("Faro", 7000, 2), "b1": ("Faro", 7000, 2),
                                "b3": ("Faro", 7000, 2)})
    eventually(handled(memory_node, Consumer.SEARCH, *envs))
    p = MemoryProducer(memory_broker(memory_node))
    first = p.send(SearchApartments(city="Faro", limit=2))
    second = p.send(SearchApartments(city="Faro", limit=2, offset=2))
    assert ids(first) + ids(second) == ["b1", "b2", "b3"]


def test_search_finds_a_city_with_a_non_ascii_capital(memory_node: Node) -> None:
    envs = listed(memory_node, {"e1": ("Évora", 4000, 2)})
    eventually(handled(memory_node, Consumer.SEARCH, *envs))
    p = MemoryProducer(memory_broker(memory_node))
    assert ids(p.send(SearchApartments())) == ["e1"]  # it is in the read model
    assert ids(p.send(SearchApartments(city="Évora"))) == ["e1"]


def test_each_reply_carries_its_own_type_in_the_amqp_properties(search_node: Node) -> None:
    """A search's reply is typed SearchResults, a command's CommandResult (the contract's
    amqp messageType), read off the reply's bytes."""
    broker = memory_broker(search_node)
    p = MemoryProducer(broker)
    p.publish(Envelope.new(SearchApartments(city="Porto")))
    searched = broker.get(p.reply_queue, 10)
    p.publish(Envelope.new(AcceptReservation(reservation_id="none", owner_id="o1"),
                           apartment_id="a1"))
    commanded = broker.get(p.reply_queue, 10)
    assert searched is not None and commanded is not None
    assert (searched.type, commanded.type) == ("SearchResults", "CommandResult")


def test_search_filters_by_currency_and_each_hit_names_its_own(memory_node: Node) -> None:
    """Prices compare as amounts: with ``currency`` a range is one currency's."""
    envs = [Envelope.new(ApartmentAdded(owner_id="o1", city="Basel", title=aid,
                                        price_per_night=price, currency=currency,
                                        capacity=2), apartment_id=aid)
            for aid, price, currency in (("eur", 9000, "EUR"), ("chf", 9500, "CHF"),
                                         ("jpy", 1_200_000, "JPY"))]
    for env in envs:
        deliver(memory_node, Consumer.SEARCH, env)
    eventually(handled(memory_node, Consumer.SEARCH, *envs))
    p = MemoryProducer(memory_broker(memory_node))
    every = p.send(SearchApartments(city="Basel"))["apartments"]
    assert [(h["apartment_id"], h["currency"]) for h in every] == [
        ("eur", "EUR"), ("chf", "CHF"), ("jpy", "JPY")]
    assert ids(p.send(SearchApartments(city="Basel", max_price=10000))) == ["eur", "chf"]
    assert ids(p.send(SearchApartments(city="Basel", currency="CHF", max_price=10000))) == [
        "chf"]
    assert ids(p.send(SearchApartments(city="Basel", currency="USD"))) == []


@pytest.fixture
def impatient_node(tmp_path: Path) -> Iterator[Node]:
    """A node whose payment waits only briefly for a charge before a refund."""
    yield from _payment_node(tmp_path, charge_wait_seconds=0.2)


def test_a_cancellation_handled_before_its_charge_is_refunded(impatient_node: Node) -> None:
    """Competing consumers may hand payment the cancellation first: it waits for the
    charge's outcome (here behind it on the same node, so it goes back to the broker
    and comes again), and the charge then made is refunded, once."""
    node = impatient_node
    acceptance = Envelope.new(accepted("r-late"), apartment_id="a1")
    cancel = Envelope.new(ReservationCancelled(
        reservation_id="r-late", guest_id="g1", owner_id="o1", cancelled_by=Party.GUEST,
        reason="cancelled_by_guest", start=day(7), end=day(14), total_price=35000,
        refund_amount=20000, card_last4="4242"), apartment_id="a1")
    deliver(node, Consumer.PAYMENT, cancel)
    deliver(node, Consumer.PAYMENT, acceptance)
    eventually(handled(node, Consumer.PAYMENT, acceptance, cancel), timeout=DEADLINE)
    assert [type(p) for p in payloads(node, "payment:r-late")] == [PaymentSucceeded]
    refunds = payloads(node, "refund:r-late")
    assert len(refunds) == 1 and isinstance(refunds[0], RefundIssued)
    assert refunds[0].amount == 20000


def test_a_release_search_applies_before_its_booking_leaves_the_nights_free(
        search_node: Node) -> None:
    """Competing search consumers may apply a stay's release first: its booking,
    applied after, must not take the nights again; in the usual order they are
    freed too, and the stay's own dates are searched like any others."""
    p = MemoryProducer(memory_broker(search_node))
    release = Envelope.new(DatesReleased(reservation_id="r-late", start=day(30),
                                         end=day(33)), apartment_id="a1")
    booking = Envelope.new(DatesBooked(reservation_id="r-late", start=day(30),
                                       end=day(33)), apartment_id="a1")
    deliver(search_node, Consumer.SEARCH, release)
    eventually(handled(search_node, Consumer.SEARCH, release))
    deliver(search_node, Consumer.SEARCH, booking)
    eventually(handled(search_node, Consumer.SEARCH, booking))

    def free() -> list[str]:
        return ids(p.send(SearchApartments(city="porto", start=day(31), end=day(32))))

    assert "a1" in free()
    # The usual order: booked (taken), then released (free again).
    release_r1 = Envelope.new(DatesReleased(reservation_id="r1", start=day(10),
                                            end=day(14)), apartment_id="a2")
    assert "a2" not in ids(p.send(SearchApartments(start=day(11), end=day(12))))
    deliver(search_node, Consumer.SEARCH, release_r1)
    eventually(handled(search_node, Consumer.SEARCH, release_r1))
    assert "a2" in ids(p.send(SearchApartments(start=day(11), end=day(12))))
