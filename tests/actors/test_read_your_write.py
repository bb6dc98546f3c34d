"""Read-your-write on a node (memory broker, SQLite): positions in replies, ``after``.

A command's reply names the store position of its write; a search that passes it as
``after`` is answered only once the read model includes that write, or, when it cannot
be within ``wait_ms``, with ``caught_up`` False. To make the read model lag for sure,
events are recorded straight through the store writer without an outbox row (the relay
never sees them) and put on search's queue by hand, when the test says so.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select

from actors.search import CountWaiting
from broker.base import Outgoing
from broker.memory import MemoryBroker
from messages import (
    AddApartment,
    ApartmentAdded,
    Consumer,
    Envelope,
    Message,
    RequestReservation,
    SearchApartments,
)
from messages.commands import MAX_WAIT_MS
from node import Node
from rules.clock import pinned
from store import Commit
from store.tables import events_table
from tests.conftest import TODAY, MemoryProducer, day, eventually, make_settings

DEADLINE = 15.0


def positions(node: Node, stream_id: str) -> list[int]:
    """The positions of a stream's events, in version order."""
    q = (select(events_table.c.position).where(events_table.c.stream_id == stream_id)
         .order_by(events_table.c.version))
    with node.engine.connect() as c:
        return [int(p) for p in c.execute(q).scalars()]


def add(city: str = "Porto") -> AddApartment:
    return AddApartment(owner_id="o1", city=city, title="Loft", price_per_night=5000,
                        currency="EUR", capacity=2)


def test_a_commands_reply_names_the_position_of_its_last_event(
        memory_node: Node, producer: MemoryProducer) -> None:
    added = producer.send(add(), "a1")
    assert added["status"] == "ok"
    assert added["position"] == positions(memory_node, "apartment:a1")[-1]

    refused = producer.send(RequestReservation(reservation_id="r1", guest_id="g1",
                                               start=day(9), end=day(7)), "a1")
    assert refused["status"] == "rejected"  # a refusal is recorded too, and positioned
    assert refused["position"] == positions(memory_node, "apartment:a1")[-1]
    assert refused["position"] > added["position"]


def test_a_resent_command_gets_its_first_position(
        memory_node: Node, producer: MemoryProducer) -> None:
    env = Envelope.new(add(), apartment_id="a1")
    producer.publish(env)
    first = producer.reply()
    later = producer.send(RequestReservation(reservation_id="r1", guest_id="g1",
                                             start=day(7), end=day(9)), "a1")
    producer.publish(env)
    assert producer.reply() == first
    assert first["position"] < later["position"] == positions(memory_node, "apartment:a1")[-1]


# --- search after a write --------------------------------------------------------------
def record_unpublished(node: Node, payload: Message, apartment: str) -> tuple[Envelope, int]:
    """Record an event on the apartment's stream with no outbox row: search lags it."""
    stream = f"apartment:{apartment}"
    env = Envelope.new(payload, apartment_id=apartment)
    done = threading.Event()
    node.writer.submit(Commit(stream_id=stream, expected_version=len(positions(node, stream)),
                              events=[env], publish=False, on_done=lambda _e: done.set()))
    assert done.wait(DEADLINE)
    return env, positions(node, stream)[-1]


def deliver_to_search(node: Node, env: Envelope) -> None:
    """What the relay would do: put the event on search's queue."""
    assert isinstance(node.broker, MemoryBroker)
    node.broker.publish(Outgoing("", node.topology.queue(Consumer.SEARCH), env.to_json(),
                                 message_id=env.message_id, type=env.type))


def waiting(node: Node) -> int:
    ref = node.handler(Consumer.SEARCH)
    assert ref is not None
    n = ref.ask(CountWaiting(), timeout=DEADLINE)
    assert isinstance(n, int)
    return n


def search(producer: MemoryProducer, **query: Any) -> Envelope:
    """Publish a query; its reply envelope comes from ``reply_to``."""
    env = Envelope.new(SearchApartments(**query))
    producer.publish(env)
    return env


def reply_to(producer: MemoryProducer, timeout: float = DEADLINE) -> tuple[str, dict[str, Any]]:
    """The next reply: the id of the message it answers, and its payload."""
    out = producer.broker.get(producer.reply_queue, timeout)
    assert out is not None, "no reply"
    body = json.loads(out.body)
    return str(body["causation_id"]), dict(body["payload"])


def apartment_added(city: str = "Porto") -> ApartmentAdded:
    return ApartmentAdded(owner_id="o1", city=city, title="Loft", price_per_night=5000,
                          currency="EUR", capacity=2)


def test_a_search_after_a_write_waits_until_the_read_model_includes_it(
        memory_node: Node, producer: MemoryProducer) -> None:
    event, at = record_unpublished(memory_node, apartment_added(), "a9")
    query = search(producer, city="porto", after=at, wait_ms=MAX_WAIT_MS)
    eventually(lambda: waiting(memory_node) == 1)  # parked, not answered stale
    assert producer.send(SearchApartments(city="porto"))["total"] == 0  # the actor is free

    deliver_to_search(memory_node, event)
    answers, hits = reply_to(producer)
    assert answers == query.message_id
    assert [h["apartment_id"] for h in hits["apartments"]] == ["a9"]
    assert hits["caught_up"] is True
    assert waiting(memory_node) == 0


def test_a_search_after_a_write_never_applied_answers_not_caught_up_in_time(
        memory_node: Node, producer: MemoryProducer) -> None:
    producer.send(add(), "a1")
    eventually(lambda: producer.send(SearchApartments())["total"] == 1)
    _, lagging = record_unpublished(memory_node, apartment_added("Faro"), "a2")
    for after in (lagging, 10**12):  # not applied; no such position
        query = search(producer, after=after, wait_ms=200)
        answers, hits = reply_to(producer)
        assert answers == query.message_id
        assert hits["caught_up"] is False
        assert [h["apartment_id"] for h in hits["apartments"]] == ["a1"]  # as it stands
    assert waiting(memory_node) == 0
    query = search(producer, after=lagging, wait_ms=0)  # do not wait at all
    assert reply_to(producer) == (query.message_id, {**hits, "caught_up": False})


def test_a_producer_reads_its_own_writes(
        memory_node: Node, producer: MemoryProducer) -> None:
    for i in range(5):
        added = producer.send(add(city="Lisbon"), f"l{i}")
        hits = producer.send(SearchApartments(city="lisbon", after=added["position"]))
        assert hits["caught_up"] is True
        assert f"l{i}" in [h["apartment_id"] for h in hits["apartments"]], (i, hits)
        # a write that search does not apply: what came before it on the stream counts
        asked = producer.send(RequestReservation(reservation_id=f"r{i}", guest_id="g1",
                                                 start=day(7), end=day(9)), f"l{i}")
        assert asked["status"] == "ok"
        again = producer.send(SearchApartments(city="lisbon", after=asked["position"]))
        assert again["caught_up"] is True and again["total"] == i + 1
    assert producer.send(SearchApartments(city="lisbon"))["caught_up"] is None


def test_queries_waiting_at_once_are_bounded(tmp_path: Path) -> None:
    """Parked queries hold unacked deliveries: at most half the handlers' prefetch."""
    node = Node(make_settings(tmp_path, broker={"handler_prefetch": 4}), broker=MemoryBroker(),
                clock=pinned(TODAY))
    node.start()
    try:
        assert isinstance(node.broker, MemoryBroker)
        p = MemoryProducer(node.broker)
        parked = [search(p, after=10**12, wait_ms=MAX_WAIT_MS) for _ in range(2)]
        eventually(lambda: waiting(node) == 2)
        refused = search(p, after=10**12, wait_ms=MAX_WAIT_MS)
        answers, hits = reply_to(p)
        assert answers == refused.message_id  # at once, not after the parked ones
        assert hits["caught_up"] is False
        assert waiting(node) == 2
        # the parked ones leave the rest of the prefetch to the events
        event, at = record_unpublished(node, apartment_added(), "a1")
        deliver_to_search(node, event)
        eventually(lambda: p.send(SearchApartments())["total"] == 1)
        caught = search(p, after=at, wait_ms=MAX_WAIT_MS)
        answers, hits = reply_to(p)
        assert answers == caught.message_id and hits["caught_up"] is True
        assert waiting(node) == len(parked)
    finally:
        node.stop()
