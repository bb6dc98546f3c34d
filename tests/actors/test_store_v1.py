"""A store written by a node that spoke only version 1, read by this one.

``tests/fixtures/store_v1.sql`` was recorded by the release before ``AddApartment`` and
``ApartmentAdded`` version 2 (``make_store_v1.py`` says how): its listings have no
currency, its apartment snapshot is of the old format ``apartment/1``, and its inbox
hashes are of version 1 commands. This node must fold those events as version 2 (in
euro), ignore the old snapshot, keep answering re-sends from the inbox, and go on
taking commands on the same apartments. Nothing is mocked: a node on a SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.memory import MemoryBroker
from messages import AcceptReservation, ApartmentAdded, RequestReservation, SearchApartments
from node import Node
from rules.snapshot import SCHEMA
from tests.actors.test_snapshots import rehydrated, replayed, start_node
from tests.conftest import MemoryProducer, day

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store_v1.sql"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node on a copy of the fixture (``start_node``'s store file is ``staybook.db``)."""
    db = sqlite3.connect(tmp_path / "staybook.db")
    db.executescript(FIXTURE.read_text())
    db.close()
    n = start_node(tmp_path)
    yield n
    n.stop()


def test_the_fixture_is_version_1_on_disk() -> None:
    """The premise: the stored bodies and the snapshot are the old shapes."""
    db = sqlite3.connect(":memory:")
    db.executescript(FIXTURE.read_text())
    added = [json.loads(b) for (b,) in db.execute(
        "SELECT body FROM events WHERE type = 'ApartmentAdded' ORDER BY position")]
    assert [(a["version"], "currency" in a["payload"]) for a in added] == [(1, False)] * 2
    assert db.execute("SELECT schema_tag FROM snapshots").fetchall() == [("apartment/1",)]


def test_every_reply_the_fixture_stores_carries_its_position() -> None:
    """Replies carried the position of their write before version 1 was released, so a
    re-send is answered with its stored reply as it is: none needs a position added."""
    db = sqlite3.connect(":memory:")
    db.executescript(FIXTURE.read_text())
    replies = [json.loads(r) for (r,) in db.execute(
        "SELECT reply FROM inbox WHERE reply IS NOT NULL ORDER BY recorded_at")]
    assert len(replies) == 11 and {r["type"] for r in replies} == {"CommandResult"}
    assert all(isinstance(r["payload"]["position"], int) for r in replies)


def test_version_1_events_load_as_version_2(node: Node) -> None:
    first = node.store.load("apartment:v1-lisbon")[0]
    assert first.version == ApartmentAdded.VERSION == 2
    assert isinstance(first.payload, ApartmentAdded)
    assert (first.payload.currency, first.payload.price_per_night) == ("EUR", 9500)
    state = replayed(node, "v1-lisbon")
    assert (state.owner_id, state.currency, state.listed) == ("olga", "EUR", True)
    assert sorted(state.pending) == ["v1-r3"]
    assert [s.reservation_id for s in state.accepted_overlapping(day(1), day(30))] == [
        "v1-r0", "v1-r2"]


def test_the_old_snapshot_is_ignored_and_the_actor_folds_the_upcast_events(
        node: Node) -> None:
    memory = rehydrated(node, "v1-lisbon")
    assert memory.snapshot_version == 0  # apartment/1 is not this node's format
    assert memory.state == replayed(node, "v1-lisbon")
    assert memory.state.currency == "EUR"


def test_the_node_goes_on_where_version_1_stopped(node: Node) -> None:
    assert isinstance(node.broker, MemoryBroker)
    p = MemoryProducer(node.broker)
    # taken by v1-r0 (accepted under version 1)
    taken = p.send(RequestReservation(reservation_id="v2-r1", guest_id="ana", start=day(2),
                                      end=day(3)), "v1-lisbon")
    assert (taken["status"], taken["reason"]) == ("rejected", "already_taken")
    # the request left pending by version 1 can be accepted now
    assert p.send(AcceptReservation(reservation_id="v1-r3", owner_id="olga"),
                  "v1-lisbon")["status"] == "ok"
    free = p.send(RequestReservation(reservation_id="v2-r2", guest_id="ana", start=day(60),
                                     end=day(62)), "v1-lisbon")
    assert free["status"] == "ok" and free["events"][0]["total_price"] == 2 * 9500
    # the search read model version 1 built still answers
    hits = p.send(SearchApartments(city="lisbon"))["apartments"]
    assert [h["apartment_id"] for h in hits] == ["v1-lisbon"]
    # the commit after these wrote a snapshot of this node's format
    snapshot, _tail = node.store.resume("apartment:v1-lisbon")
    assert snapshot is not None and snapshot.schema_tag == SCHEMA


def test_a_re_send_of_a_version_1_command_gets_its_stored_reply(node: Node) -> None:
    """The inbox's hash was of the version 1 body; the re-send, upcast, hashes as sent."""
    assert isinstance(node.broker, MemoryBroker)
    p = MemoryProducer(node.broker)
    body: dict[str, Any] = {"message_id": "v1-add-lisbon", "correlation_id": "v1-add-lisbon",
            "type": "AddApartment", "version": 1, "apartment_id": "v1-lisbon",
            "payload": {"owner_id": "olga", "city": "Lisbon", "title": "Alfama loft",
                        "price_per_night": 9500, "capacity": 4}}
    p.publish_raw(json.dumps(body).encode(), routing_key="v1-lisbon")
    again = p.reply()
    assert again["status"] == "ok" and again["position"] == 1  # not apartment_exists
    # the same message_id with another request is still a conflict
    body["payload"] = {**body["payload"], "price_per_night": 9600}
    p.publish_raw(json.dumps(body).encode(), routing_key="v1-lisbon")
    conflict = p.reply()
    assert (conflict["status"], conflict["reason"]) == ("error", "idempotency_conflict")
