"""The whole node on the in-memory broker: flow, idempotency, bad input, crashes."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import pykka
import pytest
from sqlalchemy import func, select

from actors.base import GetState
from actors.notifier import notifications
from broker.base import Outgoing
from broker.memory import MemoryBroker
from messages import (
    AcceptReservation,
    AddApartment,
    ApartmentAdded,
    Envelope,
    RejectReservation,
    RequestReservation,
    SearchApartments,
)
from node import Node
from rules.clock import pinned
from store.tables import events_table, gateway_charges_table
from tests.conftest import MemoryProducer, day, eventually, recorded_dead_letters


def add(p: MemoryProducer, apt: str = "a1", owner: str = "o1") -> None:
    r = p.send(AddApartment(owner_id=owner, city="Porto", title="Loft", price_per_night=5000,
                            currency="EUR", capacity=2), apt)
    assert r["status"] == "ok", r


def req(rid: str, start: int, end: int, guest: str = "g1",
        token: str = "tok_visa") -> RequestReservation:
    return RequestReservation(reservation_id=rid, guest_id=guest, start=day(start),
                              end=day(end), card_token=token)


def test_happy_path_books_charges_notifies_and_hides_dates(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    assert producer.send(req("r1", 7, 14), "a1")["status"] == "ok"
    assert producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"),
                         "a1")["status"] == "ok"
    late = producer.send(req("r2", 11, 12, guest="g2"), "a1")
    assert late["status"] == "rejected" and late["reason"] == "already_taken"

    engine = memory_node.engine
    eventually(lambda: {n["subject"] for n in notifications(engine, "g1")} >= {
        "Your request was accepted", "Booking confirmed"})
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(gateway_charges_table)).scalar() == 1
    hits = producer.send(SearchApartments(city="porto", start=day(8), end=day(9)))
    assert hits["total"] == 0
    hits = producer.send(SearchApartments(city="porto", start=day(20), end=day(21)))
    assert [a["apartment_id"] for a in hits["apartments"]] == ["a1"]


def test_a_resent_command_changes_nothing_and_gets_the_same_reply(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    env = Envelope.new(req("r1", 7, 9), apartment_id="a1")
    producer.publish(env)
    first = producer.reply()
    producer.publish(env)
    second = producer.reply()
    assert first == second and first["status"] == "ok"
    with memory_node.engine.connect() as c:
        n = c.execute(select(func.count()).select_from(events_table).where(
            events_table.c.stream_id == "apartment:a1")).scalar()
    assert n == 2  # ApartmentAdded + one ReservationRequested


def test_duplicates_in_flight_are_answered_once_each(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    env = Envelope.new(req("r1", 7, 9), apartment_id="a1")
    for _ in range(5):
        producer.publish(env)
    replies = [producer.reply() for _ in range(5)]
    assert all(r == replies[0] for r in replies)
    with memory_node.engine.connect() as c:
        n = c.execute(select(func.count()).select_from(events_table).where(
            events_table.c.stream_id == "apartment:a1")).scalar()
    assert n == 2


def test_bad_input_is_dead_lettered_with_a_reason_and_answered(
        memory_node: Node, producer: MemoryProducer) -> None:
    broker = memory_node.broker
    assert isinstance(broker, MemoryBroker)
    dlq = broker.topology.dead_letter_queue
    for raw in (b"not json", b"[]", json.dumps({"message_id": "m", "type": "Nope"}).encode(),
                b"{" + b" " * 70_000 + b"}"):
        producer.publish_raw(raw)
        assert producer.reply()["status"] == "error"
    letters = recorded_dead_letters(memory_node, 4)
    assert [r.letter.reason for r in letters] == [
        "not_json", "not_object", "unknown_type", "too_large"]
    assert broker.depth(dlq) == 0  # recorded, then acked
    add(producer)  # the node still serves


def test_only_the_owner_answers(memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    producer.send(req("r1", 7, 9), "a1")
    r = producer.send(RejectReservation(reservation_id="r1", owner_id="mallory"), "a1")
    assert r["status"] == "rejected" and r["reason"] == "not_owner"
    r = producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    assert r["status"] == "ok"


def test_racing_requests_and_accepts_end_with_one_booking(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    for i in range(20):
        producer.publish(Envelope.new(req(f"r{i}", 7, 10, guest=f"g{i}"), apartment_id="a1"))
    for _ in range(20):
        producer.reply()
    threads = [threading.Thread(target=producer.publish, args=(Envelope.new(
        AcceptReservation(reservation_id=f"r{i}", owner_id="o1"), apartment_id="a1"),))
        for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replies = [producer.reply() for _ in range(20)]
    assert sum(r["status"] == "ok" for r in replies) == 1


def test_a_crashed_apartment_comes_back_with_its_state(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    producer.send(req("r1", 7, 9), "a1")
    ref = memory_node.directory.ref("apartment:a1")
    assert ref is not None
    ref.tell("not a message it knows")  # a crash in a tell handler
    eventually(lambda: memory_node.directory.restarts == 1)
    r = producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    assert r["status"] == "ok"  # the new actor knows r1 from the store
    new_ref = memory_node.directory.ref("apartment:a1")
    assert new_ref is not None and new_ref.actor_urn != ref.actor_urn


def test_a_crash_during_ask_restarts_the_actor(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    ref = memory_node.directory.ref("apartment:a1")
    assert ref is not None
    with contextlib.suppress(Exception):  # the ask fails; the crash is what we check
        ref.ask("boom", timeout=5)
    eventually(lambda: memory_node.directory.restarts == 1)
    assert not ref.is_alive()
    assert producer.send(req("r1", 7, 9), "a1")["status"] == "ok"


def test_declined_card_records_payment_failed(
        memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    producer.send(req("r1", 7, 9, token="tok_decline_1"), "a1")
    producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"), "a1")
    eventually(lambda: any(n["subject"] == "Payment failed"
                           for n in notifications(memory_node.engine, "g1")))


def test_live_actors_are_capped(tmp_path: object) -> None:
    from pathlib import Path

    from tests.conftest import TODAY, make_settings
    settings = make_settings(Path(str(tmp_path)))
    settings.actors.max_live = 5
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        for i in range(20):
            add(p, f"a{i}")
        eventually(lambda: node.directory.live <= 5 + 1)
        assert node.directory.passivations >= 10
        # a passivated apartment comes back with its state
        r = p.send(AddApartment(owner_id="o", city="c", title="t", price_per_night=1,
                                currency="EUR", capacity=1), "a0")
        assert r["reason"] == "apartment_exists"
    finally:
        node.stop()
    # Stopping the node stops every entity actor it started (none is left running).
    entities = ("ApartmentActor", "ReservationActor")
    eventually(lambda: not [r for r in pykka.ActorRegistry.get_all()
                            if r.actor_class.__name__ in entities], timeout=10)


def test_re_sends_not_flagged_redelivered_reload_instead_of_crashing(
        memory_node: Node, producer: MemoryProducer) -> None:
    """A producer retrying with the same id is normal: no crash, no restart spent."""
    add(producer)
    envs = [Envelope.new(req(f"r{i}", 7 + i, 8 + i), apartment_id="a1") for i in range(5)]
    for env in envs:
        producer.publish(env)
    first = [producer.reply() for _ in envs]
    for _ in range(3):
        for env in envs:
            producer.publish(env)  # re-sends: the memory broker does not flag them
    again = [producer.reply() for _ in range(15)]
    assert all(r["status"] == "ok" for r in first + again)
    assert memory_node.directory.restarts == 0
    n = [e.type for e in memory_node.store.load("apartment:a1")].count("ReservationRequested")
    assert n == 5


def test_operator_restart_and_passivate(memory_node: Node, producer: MemoryProducer) -> None:
    add(producer)
    producer.send(req("r1", 7, 9), "a1")
    d = memory_node.directory
    old = d.ref("apartment:a1")
    assert old is not None
    assert d.restart("apartment:a1")
    new = d.ref("apartment:a1")
    assert new is not None and new.actor_urn != old.actor_urn and not old.is_alive()
    assert d.restarts == 0  # an operator restart is not a crash
    assert producer.send(AcceptReservation(reservation_id="r1", owner_id="o1"),
                         "a1")["status"] == "ok"  # the successor knows r1
    eventually(lambda: d.passivate("apartment:a1"))
    assert d.ref("apartment:a1") is None
    with pytest.raises(KeyError):
        d.passivate("apartment:nope")


def test_a_message_id_reused_for_another_request_is_refused(
        memory_node: Node, producer: MemoryProducer) -> None:
    """An idempotency key means one request: same id, other body -> conflict."""
    broker = memory_node.broker
    assert isinstance(broker, MemoryBroker)
    add(producer)
    first = Envelope.new(req("r1", 7, 9), apartment_id="a1")
    producer.publish(first)
    assert producer.reply()["status"] == "ok"
    other = first.model_copy(update={"payload": req("r1", 20, 25)})
    producer.publish(other)
    refused = producer.reply()
    assert (refused["status"], refused["reason"]) == ("error", "idempotency_conflict")
    assert "new message_id" in refused["detail"]
    producer.publish(first)  # the same request again still gets its stored answer
    assert producer.reply()["status"] == "ok"
    [letter] = recorded_dead_letters(memory_node, 1)
    assert letter.letter.reason == "idempotency_conflict"
    state = memory_node.directory.ref("apartment:a1")
    assert state is not None
    apartment: Any = state.ask(GetState())
    stays = apartment.stays
    assert (stays["r1"].start, stays["r1"].end) == (day(7), day(9))  # unchanged


def test_a_command_routed_by_another_key_is_refused(
        memory_node: Node, producer: MemoryProducer) -> None:
    """The routing key picks the partition, so it must be the apartment_id."""
    broker = memory_node.broker
    assert isinstance(broker, MemoryBroker)
    env = Envelope.new(AddApartment(owner_id="o1", city="Porto", title="Loft",
                                    price_per_night=5000,
                                    currency="EUR", capacity=2), apartment_id="a1")
    broker.publish(Outgoing(broker.topology.commands_exchange, "not-a1", env.to_json(),
                            message_id=env.message_id, correlation_id=env.message_id,
                            reply_to=producer.reply_queue))
    refused = producer.reply()
    assert (refused["status"], refused["reason"]) == ("error", "wrong_routing_key")
    assert "routing key = apartment_id" in refused["detail"]
    [letter] = recorded_dead_letters(memory_node, 1)
    assert letter.letter.reason == "wrong_routing_key"
    assert memory_node.store.load("apartment:a1") == []  # it did not take effect
    add(producer)  # routed right, the same apartment is added


def test_an_event_posted_on_the_queries_exchange_is_refused(
        memory_node: Node, producer: MemoryProducer) -> None:
    """Producers may write the queries exchange, which search binds; only nodes publish
    events, so a listing posted there by hand never reaches the read model."""
    broker = memory_node.broker
    assert isinstance(broker, MemoryBroker)
    forged = Envelope.new(ApartmentAdded(owner_id="o1", city="Porto", title="Forged",
                                         price_per_night=5000, currency="EUR", capacity=2),
                          apartment_id="apt-3")
    broker.publish(Outgoing(broker.topology.queries_exchange, "", forged.to_json(),
                            message_id=forged.message_id, correlation_id=forged.message_id,
                            reply_to=producer.reply_queue))
    refused = producer.reply()
    assert (refused["status"], refused["reason"]) == ("error", "wrong_kind")
    assert "only nodes publish events" in refused["detail"]
    [letter] = recorded_dead_letters(memory_node, 1)
    assert letter.letter.reason == "wrong_kind"
    found = producer.send(SearchApartments(city="Porto"))
    assert found["apartments"] == []


def test_refused_input_is_counted_as_an_error(memory_node: Node,
                                              producer: MemoryProducer) -> None:
    registry = memory_node.metrics.registry

    def errors(kind: str) -> float:
        return registry.get_sample_value(
            "staybook_commands_total", {"type": kind, "outcome": "error"}) or 0.0

    producer.publish_raw(b"not json")
    producer.publish_raw(json.dumps({"message_id": "m1", "type": "AddApartment",
                                     "version": 1, "payload": {}}).encode())
    producer.publish_raw(json.dumps({"message_id": "m2", "type": "Made-Up-Type"}).encode())
    for _ in range(3):
        assert producer.reply()["status"] == "error"
    assert errors("invalid") == 2  # not JSON, and an unknown type (not a label of its own)
    assert errors("AddApartment") == 1


def test_a_handled_crash_is_one_warning_line_with_the_traceback_at_debug(
        memory_node: Node, producer: MemoryProducer,
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from console.cli import _logging
    from supervisor import Crash

    _logging("INFO")  # as `staybook serve` configures it
    add(producer)
    ref = memory_node.directory.ref("apartment:a1")
    assert ref is not None
    with caplog.at_level(logging.DEBUG, logger="supervisor"):
        ref.tell(Crash("drill"))
        eventually(lambda: memory_node.directory.restarts == 1)
    crash_lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(crash_lines) == 1, [r.getMessage() for r in crash_lines]
    line = crash_lines[0].getMessage()
    assert "apartment:a1" in line and "InjectedCrash" in line and "\n" not in line
    assert not [r for r in caplog.records if r.name.startswith("pykka")]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("Traceback" in m for m in debug)  # the detail is there, at DEBUG
    add(producer, apt="a2")  # and the node serves on
