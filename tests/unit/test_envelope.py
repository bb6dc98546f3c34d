"""Envelope validation: every kind of bad input gets its own reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.topology import Topology
from messages import (
    AddApartment,
    BadInput,
    CommandResult,
    Envelope,
    InvalidMessage,
    Kind,
    SearchResults,
    Status,
    all_specs,
    with_position,
)
from messages.registry import Consumer, catalog

GOOD: dict[str, Any] = {
    "message_id": "m1", "correlation_id": "c1", "type": "AddApartment", "version": 2,
    "apartment_id": "a1",
    "payload": {"owner_id": "o1", "city": "Lisbon", "title": "Flat", "price_per_night": 100,
                "currency": "EUR", "capacity": 2},
}


def body(**changes: Any) -> bytes:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


def reason_of(raw: bytes, **kw: Any) -> BadInput:
    with pytest.raises(InvalidMessage) as info:
        Envelope.from_json(raw, **kw)
    return info.value.reason


def test_good_envelope_round_trips() -> None:
    env = Envelope.from_json(body())
    assert isinstance(env.payload, AddApartment)
    assert Envelope.from_json(env.to_json()) == env


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe not utf8", BadInput.NOT_JSON),
    (b"{not json", BadInput.NOT_JSON),
    (b"[1, 2]", BadInput.NOT_OBJECT),
    (b'"text"', BadInput.NOT_OBJECT),
    (body(type="Nope"), BadInput.UNKNOWN_TYPE),
    (body(type=...), BadInput.UNKNOWN_TYPE),
    (body(version=3), BadInput.UNSUPPORTED_VERSION),
    (body(payload={"owner_id": "o1"}), BadInput.SCHEMA_ERROR),
    (body(payload={**GOOD["payload"], "extra": 1}), BadInput.SCHEMA_ERROR),
    (body(payload={**GOOD["payload"], "capacity": "many"}), BadInput.SCHEMA_ERROR),
    (body(message_id=...), BadInput.BAD_ENVELOPE),
    (body(message_id="has spaces"), BadInput.BAD_ENVELOPE),
    (body(apartment_id=...), BadInput.BAD_ENVELOPE),
    (body(surprise=True), BadInput.BAD_ENVELOPE),
])
def test_bad_input_reasons(raw: bytes, reason: BadInput) -> None:
    assert reason_of(raw) is reason


def test_too_large_is_refused_unread() -> None:
    assert reason_of(b"{" + b" " * 2000 + b"}", max_bytes=1000) is BadInput.TOO_LARGE


def test_wrong_kind_for_the_queue() -> None:
    ev = body(type="ApartmentAdded", payload={"owner_id": "o", "city": "c", "title": "t",
                                               "price_per_night": 1, "capacity": 1})
    assert reason_of(ev, kinds=frozenset({Kind.COMMAND})) is BadInput.WRONG_KIND


def test_partial_ids_are_kept_for_the_error_reply() -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.from_json(body(version=9))
    assert info.value.partial["message_id"] == "m1"
    assert info.value.partial["correlation_id"] == "c1"


def test_follow_copies_correlation_and_sets_causation() -> None:
    env = Envelope.from_json(body())
    nxt = env.follow(AddApartment(owner_id="o", city="c", title="t", price_per_night=1,
                                  currency="EUR", capacity=1))
    assert nxt.correlation_id == "c1" and nxt.causation_id == "m1"
    assert nxt.message_id != env.message_id and nxt.apartment_id == "a1"


def test_every_message_is_in_the_catalog_with_a_schema() -> None:
    rows = {r["type"]: r for r in catalog()}
    assert set(rows) == {s.type for s in all_specs()}
    assert all(r["schema"]["type"] == "object" for r in rows.values())


def test_topology_binds_each_consumer_to_what_it_handles() -> None:
    topo = Topology(prefix="t")
    binds = {(b.queue, b.exchange) for b in topo.bindings()}
    assert ("t.intake", "t.commands") in binds
    assert ("t.payment", "t.events.ReservationAccepted") in binds
    assert ("t.search", "t.events.DatesBooked") in binds
    assert ("t.payment", "t.events.DatesBooked") not in binds  # only what it handles
    alt = {e.name: e.arguments.get("alternate-exchange") for e in topo.exchanges()}
    assert alt["t.events.NotificationSent"] == "t.unrouted"
    assert ("t.search", "t.queries") in binds
    assert ("t.dead-letters", "t.dlx") in binds
    names = {q.name for q in topo.queues()}
    assert {topo.queue(c) for c in Consumer} <= names
    args = topo.work_queue_arguments()
    assert args["x-queue-type"] == "quorum" and args["x-dead-letter-strategy"] == "at-least-once"


# --- a reply's position ----------------------------------------------------------------
def test_with_position_sets_the_last_field_as_a_full_reserialization_would() -> None:
    tricky = {"type": "X", "title": '"position":null}}', "position": None}
    env = Envelope.new(CommandResult(status=Status.OK, events=[tricky]))
    spliced = with_position(env.to_json(), 42)
    expected = env.model_copy(update={"payload": env.payload.model_copy(
        update={"position": 42})}).to_json()
    assert spliced == expected
    assert Envelope.from_json(spliced).payload == CommandResult(
        status=Status.OK, events=[tricky], position=42)
    assert with_position(env.to_json(), None) == env.to_json()


def test_with_position_fills_a_reply_stored_without_the_field() -> None:
    """Replies stored before positions existed have no ``position`` key at all."""
    env = Envelope.new(CommandResult(status=Status.REJECTED, reason="already_taken"))
    raw = json.loads(env.to_json())
    del raw["payload"]["position"]
    legacy = json.dumps(raw).encode()
    filled = Envelope.from_json(with_position(legacy, 7))
    assert filled.message_id == env.message_id
    assert filled.payload == CommandResult(status=Status.REJECTED, reason="already_taken",
                                           position=7)


def test_with_position_leaves_other_replies_alone() -> None:
    other = Envelope.new(SearchResults(apartments=[], total=0)).to_json()
    assert with_position(other, 7) == other
