"""Read-your-write on a node (memory broker, SQLite): positions in replies, ``after``.

A command's reply names the store position of its write; a search that passes it as
``after`` is answered only once the read model includes that write, or, when it cannot
be within ``wait_ms``, with ``caught_up`` False. To make the read model lag for sure,
events are recorded straight through the store writer without an outbox row (the relay
never sees them) and put on search's queue by hand, when the test says so.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update

from messages import (
    AddApartment,
    Envelope,
    RequestReservation,
)
from node import Node
from store.tables import events_table, inbox_table
from tests.conftest import MemoryProducer, day


def positions(node: Node, stream_id: str) -> list[int]:
    """The positions of a stream's events, in version order."""
    q = (select(events_table.c.position).where(events_table.c.stream_id == stream_id)
         .order_by(events_table.c.version))
    with node.engine.connect() as c:
        return [int(p) for p in c.execute(q).scalars()]


def add(apartment: str = "a1", city: str = "Porto") -> AddApartment:
    return AddApartment(owner_id="o1", city=city, title="Loft", price_per_night=5000,
                        capacity=2)


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


def test_a_resent_command_gets_its_first_position_and_a_legacy_reply_the_head(
        memory_node: Node, producer: MemoryProducer) -> None:
    env = Envelope.new(add(), apartment_id="a1")
    producer.publish(env)
    first = producer.reply()
    producer.publish(env)
    assert producer.reply() == first

    # A reply stored before replies had positions: a re-send gets the stream's head.
    later = producer.send(RequestReservation(reservation_id="r1", guest_id="g1",
                                             start=day(7), end=day(9)), "a1")
    stored = json.loads(memory_node.store.seen("intake", env.message_id)[1] or b"{}")
    del stored["payload"]["position"]
    with memory_node.engine.begin() as c:
        c.execute(update(inbox_table).where(inbox_table.c.message_id == env.message_id)
                  .values(reply=json.dumps(stored).encode()))
    producer.publish(env)
    again = producer.reply()
    assert again["status"] == "ok" and again["events"] == first["events"]
    assert again["position"] == later["position"] == positions(memory_node,
                                                               "apartment:a1")[-1]
