"""Snapshots in the apartment's actor: written every ``snapshot_every`` events, in the
commit of those events; read back when the actor rehydrates; and never trusted
blindly: a damaged or foreign one is logged and the stream replayed instead.

Nothing is mocked: a node on the in-memory broker with a SQLite file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from actors.apartment import ApartmentActor
from actors.base import GetState, GetVersion
from actors.repository import Repository
from broker.memory import MemoryBroker
from messages import AcceptReservation, AddApartment, RejectReservation, RequestReservation
from node import Node
from rules.apartment import Apartment, evolve
from rules.clock import pinned
from rules.snapshot import SCHEMA, from_snapshot
from store import Snapshot
from store.tables import snapshots_table
from tests.conftest import TODAY, MemoryProducer, day, make_settings

EVERY = 5


def start_node(tmp_path: Path, every: int = EVERY) -> Node:
    settings = make_settings(tmp_path)
    settings.actors.snapshot_every = every
    node = Node(settings, broker=MemoryBroker(), clock=pinned(TODAY))
    node.start()
    return node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = start_node(tmp_path)
    yield n
    n.stop()


def producer_of(node: Node) -> MemoryProducer:
    assert isinstance(node.broker, MemoryBroker)
    return MemoryProducer(node.broker)


def book(p: MemoryProducer, apt: str, n: int) -> None:
    """List ``apt`` and send it ``n`` requests, a third accepted and a third rejected."""
    assert p.send(AddApartment(owner_id="o1", city="Rome", title="T", price_per_night=100,
                               currency="EUR", capacity=4), apt)["status"] == "ok"
    for i in range(n):
        rid = f"{apt}-r{i}"
        assert p.send(RequestReservation(reservation_id=rid, guest_id="g", start=day(2 * i + 1),
                                         end=day(2 * i + 3)), apt)["status"] == "ok"
        if i % 3 == 0:
            p.send(AcceptReservation(reservation_id=rid, owner_id="o1"), apt)
        elif i % 3 == 1:
            p.send(RejectReservation(reservation_id=rid, owner_id="o1"), apt)


def replayed(node: Node, apt: str, upto: int | None = None) -> Apartment:
    """The apartment folded from its whole stream (or its first ``upto`` events)."""
    events = node.store.load(f"apartment:{apt}", limit=upto)
    return reduce(evolve, [e.payload for e in events], Apartment(apartment_id=apt))


def head(node: Node, apt: str) -> int:
    return len(node.store.load(f"apartment:{apt}"))


def stored_snapshot(node: Node, apt: str) -> Snapshot:
    snapshot, _tail = node.store.resume(f"apartment:{apt}")
    assert snapshot is not None
    return snapshot


def rehydrated(node: Node, apt: str) -> Repository[Apartment]:
    """An apartment actor's repository (the actor not started), rehydrated from the store."""
    actor = ApartmentActor(f"apartment:{apt}", apt, node.directory.ctx, lambda _f: None)
    actor.repository.rehydrate()
    return actor.repository


def live_state(node: Node, apt: str) -> tuple[Any, Any]:
    """The live actor's memory: its state and version."""
    ref = node.directory.ref(f"apartment:{apt}")
    assert ref is not None
    return ref.ask(GetState()), ref.ask(GetVersion())


def test_snapshots_are_written_as_the_stream_grows_and_rehydration_starts_there(
        node: Node) -> None:
    p = producer_of(node)
    book(p, "a1", 14)
    n = head(node, "a1")
    snapshot = stored_snapshot(node, "a1")
    # the last commit would have taken one had the stream grown EVERY since
    assert snapshot.schema_tag == SCHEMA and n - EVERY < snapshot.version <= n
    assert from_snapshot(snapshot.body) == replayed(node, "a1", snapshot.version)
    memory = rehydrated(node, "a1")
    assert memory.snapshot_version == snapshot.version
    assert (memory.state, memory.version) == (replayed(node, "a1"), n)
    # the real path: a restarted actor decides on the same memory as the full replay
    assert node.directory.restart("apartment:a1")
    assert live_state(node, "a1") == (replayed(node, "a1"), n)
    assert p.send(RequestReservation(reservation_id="late", guest_id="g", start=day(1),
                                     end=day(3)), "a1")["reason"] == "already_taken"


def test_no_snapshot_is_written_when_they_are_off(tmp_path: Path) -> None:
    node = start_node(tmp_path, every=0)
    try:
        book(producer_of(node), "a1", 8)
        assert node.store.resume("apartment:a1")[0] is None
        assert rehydrated(node, "a1").state == replayed(node, "a1")
    finally:
        node.stop()


def tamper(node: Node, apt: str, **values: Any) -> None:
    with node.engine.begin() as c:
        assert c.execute(update(snapshots_table).where(
            snapshots_table.c.stream_id == f"apartment:{apt}").values(**values)).rowcount == 1


@pytest.mark.parametrize("damage", ["garbage", "flipped", "format", "another apartment's"])
def test_a_bad_snapshot_is_logged_and_the_stream_replayed(
        node: Node, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    p = producer_of(node)
    book(p, "a1", 8)
    book(p, "a2", 8)
    body = stored_snapshot(node, "a1").body
    match damage:
        case "garbage":
            tamper(node, "a1", body=b"\x00not a snapshot")
        case "flipped":
            tamper(node, "a1", body=body[:40] + bytes([body[40] ^ 0x20]) + body[41:])
        case "format":
            tamper(node, "a1", schema_tag="apartment/0")
        case _:
            tamper(node, "a1", body=stored_snapshot(node, "a2").body)
    with caplog.at_level(logging.WARNING, logger="actors.repository"):
        memory = rehydrated(node, "a1")
        assert node.directory.restart("apartment:a1")  # the actor itself: no crash
        reply = p.send(RequestReservation(reservation_id="next", guest_id="g", start=day(40),
                                          end=day(42)), "a1")
    assert reply["status"] == "ok"
    warned = [r for r in caplog.records if "not using the snapshot" in r.getMessage()]
    assert len(warned) == 2 and all(r.levelno == logging.WARNING for r in warned)
    assert (memory.snapshot_version, memory.state) == (0, replayed(node, "a1", memory.version))
    assert live_state(node, "a1") == (replayed(node, "a1"), head(node, "a1"))
    # the commit after the replay wrote a good snapshot again
    again = stored_snapshot(node, "a1")
    assert (again.version, again.schema_tag) == (head(node, "a1"), SCHEMA)
    assert from_snapshot(again.body) == replayed(node, "a1")


def test_a_snapshot_the_stream_does_not_reach_is_not_used(node: Node) -> None:
    """A row claiming a version after the stream's newest cannot be its state."""
    book(producer_of(node), "a1", 8)
    tamper(node, "a1", version=head(node, "a1") + 10)
    memory = rehydrated(node, "a1")
    assert (memory.snapshot_version, memory.version) == (0, head(node, "a1"))
    assert memory.state == replayed(node, "a1")
