"""A node's memory of a stream that another node wrote to meanwhile.

Two nodes share one store (a SQLite file, a PostgreSQL database), as two intake
nodes do. An apartment's commands go first to node A, then to node B (its partition
moved), then to A again (it moved back). A's actor for the apartment was activated
before the move, so what it remembers is behind the store: every decision it makes
from that memory must be refused by the store and made again from the stream, even
one that decides "nothing to do". Nothing is mocked: real nodes, actors, writers and
stores; the in-memory broker stands in for the partition queues.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from actors.base import GetState
from actors.directory import Directory
from actors.outcome import Outcome, Ticket
from broker.memory import MemoryBroker
from messages import (
    AcceptReservation,
    AddApartment,
    CancelUnpaidReservation,
    Envelope,
    ExpireReservation,
    PaymentFailed,
    RequestReservation,
)
from node import Node
from rules.apartment import Apartment, StayStatus, evolve
from rules.clock import pinned
from store import Commit
from store.tables import inbox_table
from tests.conftest import TODAY, MemoryProducer, day, eventually, make_settings

APT = "apt-011"
RES = "res-apt-011-3"
OWNER = "owner-11"


def _node(tmp_path: Path, db_url: str, name: str) -> Node:
    settings = make_settings(tmp_path, database_url=db_url, node_name=name, roles=["commands"])
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    return node


@pytest.fixture
def two_nodes(tmp_path: Path, db_url: str) -> Iterator[tuple[Node, Node]]:
    a = _node(tmp_path, db_url, "a")
    b = _node(tmp_path, db_url, "b")
    yield a, b
    a.stop()
    b.stop()


def _producer(node: Node) -> MemoryProducer:
    assert isinstance(node.broker, MemoryBroker)
    return MemoryProducer(node.broker)


def _add() -> AddApartment:
    return AddApartment(owner_id=OWNER, city="Rome", title="T", price_per_night=100,
                        currency="EUR", capacity=2)


def _replayed(node: Node) -> Apartment:
    state = Apartment(apartment_id=APT)
    for env in node.store.load(f"apartment:{APT}"):
        state = evolve(state, env.payload)
    return state


def _payment_failed(node: Node) -> None:
    """What the payment handler records when the card is declined."""
    failed = Envelope.new(PaymentFailed(reservation_id=RES, guest_id="g1", amount=300,
                                        reason="card_declined"), apartment_id=APT)
    node.writer.submit(Commit(stream_id=f"payment:{RES}", expected_version=0,
                              events=[failed]))
    node.writer.barrier()


def test_a_stale_actor_decides_a_no_op_again_from_the_stream(
        two_nodes: tuple[Node, Node]) -> None:
    """The reported stream: accepted and booked on B, the card declined, then A's old
    actor is asked to cancel the unpaid stay. From its memory (the request still
    pending) that is "nothing to do"; from the stream it releases the nights."""
    a, b = two_nodes
    pa, pb = _producer(a), _producer(b)
    assert pa.send(_add(), APT)["status"] == "ok"
    assert pa.send(RequestReservation(reservation_id=RES, guest_id="g1", start=day(3),
                                      end=day(6)), APT)["status"] == "ok"
    assert a.directory.ref(f"apartment:{APT}") is not None  # A remembers: pending
    # The partition moves to B, which accepts (its actor reads the stream).
    accepted = pb.send(AcceptReservation(reservation_id=RES, owner_id=OWNER), APT)
    assert [e["type"] for e in accepted["events"]] == ["ReservationAccepted", "DatesBooked"]
    _payment_failed(b)
    # The partition moves back to A; the reservation process asks it to give back the
    # nights of the declined card.
    reply = pa.send(CancelUnpaidReservation(reservation_id=RES, reason="card_declined"), APT)
    assert reply["status"] == "ok"
    assert [e["type"] for e in reply["events"]] == ["ReservationCancelled", "DatesReleased"]
    stay = _replayed(a).stays[RES]
    assert stay.status is StayStatus.CANCELLED
    # A's actor now holds the stream as it is.
    ref = a.directory.ref(f"apartment:{APT}")
    assert ref is not None and ref.ask(GetState()) == _replayed(a)


def test_a_stale_actor_does_not_drop_an_expiry(two_nodes: tuple[Node, Node]) -> None:
    """A request B recorded is unknown to A's old actor, which would answer "nothing
    to do"; from the stream, the request is open and not yet due."""
    a, b = two_nodes
    pa, pb = _producer(a), _producer(b)
    assert pa.send(_add(), APT)["status"] == "ok"
    assert pb.send(RequestReservation(reservation_id=RES, guest_id="g1", start=day(3),
                                      end=day(6)), APT)["status"] == "ok"
    reply = pa.send(ExpireReservation(reservation_id=RES), APT)
    assert (reply["status"], reply["reason"]) == ("rejected", "not_due")
    assert _replayed(a).stays[RES].status is StayStatus.PENDING


def test_a_no_op_on_current_memory_is_answered_with_the_head(
        two_nodes: tuple[Node, Node]) -> None:
    """The fence refuses only what the stream contradicts: a true no-op is answered
    with no events, at the stream's newest position (read with the fence's check)."""
    a, _b = two_nodes
    pa = _producer(a)
    added = pa.send(_add(), APT)
    reply = pa.send(ExpireReservation(reservation_id="nobody"), APT)
    assert reply["status"] == "ok" and reply["events"] == []
    assert reply["position"] == added["position"] == a.store.head(f"apartment:{APT}")


def test_releasing_a_source_stops_its_actors(tmp_path: Path) -> None:
    """A partition handed to another node takes its live actors with it; the next
    activation reads the stream again."""
    node = Node(make_settings(tmp_path), broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    try:
        d: Directory = node.directory
        settled: list[Outcome] = []

        def ticket() -> Ticket:
            return Ticket(settled.append)

        add = Envelope.new(_add(), apartment_id=APT)
        other = Envelope.new(_add(), apartment_id="apt-2")
        d.dispatch("apartment", APT, add, ticket(), source="q.p001")
        d.dispatch("apartment", "apt-2", other, ticket(), source="q.p002")
        eventually(lambda: len(settled) == 2)
        first = d.ref(f"apartment:{APT}")
        assert first is not None and isinstance(first.ask(GetState()), Apartment)
        assert d.release("q.p001") == 1
        assert first.actor_stopped.is_set()
        assert d.ref(f"apartment:{APT}") is None
        assert d.ref("apartment:apt-2") is not None  # another partition's stays
        assert d.released == 1
        assert d.release("q.p001") == 0
        with node.engine.connect() as c:
            handled = c.execute(select(inbox_table.c.message_id)).scalars().all()
        assert add.message_id in handled
    finally:
        node.stop()
