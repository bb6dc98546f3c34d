"""Schema versions: older ones upcast, unknown ones refused with a clear detail."""

from __future__ import annotations

import json
from typing import Any

import pytest

from messages import AddApartment, ApartmentAdded, BadInput, Envelope, InvalidMessage, Kind
from messages.registry import accepted_versions, catalog, spec_for, upcaster
from messages.upcasters import AddApartmentV1

V1_ADD: dict[str, Any] = {
    "message_id": "m1", "correlation_id": "m1", "type": "AddApartment", "version": 1,
    "apartment_id": "a1",
    "payload": {"owner_id": "o1", "city": "Lisbon", "title": "Flat", "price_per_night": 100,
                "capacity": 2},
}


def parse(data: dict[str, Any], **changes: Any) -> Envelope:
    return Envelope.from_json(json.dumps({**data, **changes}).encode())


def refusal(data: dict[str, Any], **changes: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse(data, **changes)
    return info.value


def test_a_version_1_command_is_read_as_version_2_in_euro() -> None:
    env = parse(V1_ADD)
    assert env.version == 2 and isinstance(env.payload, AddApartment)
    assert env.payload.currency == "EUR"
    assert env.payload.model_dump(exclude={"currency"}) == {
        **V1_ADD["payload"], "description": ""}


def test_version_2_needs_the_currency_and_checks_it() -> None:
    missing = refusal(V1_ADD, version=2)
    assert missing.reason is BadInput.SCHEMA_ERROR and "currency" in missing.detail
    bad = refusal(V1_ADD, version=2, payload={**V1_ADD["payload"], "currency": "euro"})
    assert bad.reason is BadInput.SCHEMA_ERROR and "currency" in bad.detail


def test_a_bad_version_1_payload_is_refused_in_version_1_terms() -> None:
    err = refusal(V1_ADD, payload={**V1_ADD["payload"], "capacity": "many"})
    assert err.reason is BadInput.SCHEMA_ERROR
    assert err.detail.startswith("(version 1) capacity:")
    # version 1 had no currency: sending one with version 1 is an unknown field
    extra = refusal(V1_ADD, payload={**V1_ADD["payload"], "currency": "EUR"})
    assert extra.reason is BadInput.SCHEMA_ERROR and "currency" in extra.detail


@pytest.mark.parametrize("version", [0, 3, 99, "1", 1.5, True, None, -1])
def test_versions_this_node_does_not_read_are_refused_with_what_it_reads(
        version: object) -> None:
    err = refusal(V1_ADD, version=version)
    assert err.reason is BadInput.UNSUPPORTED_VERSION
    assert err.detail == (f"AddApartment version {version!r} is not supported: this node "
                          "reads versions 1, 2 (send version 2)")
    assert err.partial["message_id"] == "m1"  # so the producer gets an error reply


def test_a_type_with_one_version_says_so() -> None:
    body = {"message_id": "m2", "correlation_id": "m2", "type": "AcceptReservation",
            "version": 2, "apartment_id": "a1",
            "payload": {"reservation_id": "r1", "owner_id": "o1"}}
    err = refusal(body)
    assert err.detail == ("AcceptReservation version 2 is not supported: this node reads "
                          "version 1 (send version 1)")


def test_a_stored_version_1_event_loads_as_version_2() -> None:
    body = {"message_id": "e1", "correlation_id": "c1", "causation_id": "m1",
            "type": "ApartmentAdded", "version": 1, "apartment_id": "a1",
            "occurred_at": "2030-01-07T10:00:00Z",
            "payload": {"owner_id": "o1", "city": "Lisbon", "title": "Flat",
                        "description": "", "price_per_night": 100, "capacity": 2}}
    env = parse(body)
    assert env.version == 2 and isinstance(env.payload, ApartmentAdded)
    assert env.payload.currency == "EUR"
    # ids and causality are the stored ones: upcasting changes only the payload
    assert (env.message_id, env.correlation_id, env.causation_id) == ("e1", "c1", "m1")


def test_events_are_read_tolerantly_commands_strictly() -> None:
    event = {"message_id": "e1", "correlation_id": "c1", "type": "DatesBooked", "version": 1,
             "apartment_id": "a1",
             "payload": {"reservation_id": "r1", "start": "2030-01-08", "end": "2030-01-09",
                         "added_later": True}}
    read = parse(event).payload.model_dump(mode="json")
    assert read == {"reservation_id": "r1", "start": "2030-01-08", "end": "2030-01-09"}
    command = {**V1_ADD, "version": 2,
               "payload": {**V1_ADD["payload"], "currency": "EUR", "added_later": True}}
    assert refusal(command).reason is BadInput.SCHEMA_ERROR


def test_a_re_send_in_the_old_version_hashes_as_sent() -> None:
    """An upcast command hashes its payload as its version read it (the inbox's hash of
    what a version 1 node recorded); the same request as version 2 is another body."""
    v1 = parse(V1_ADD)
    assert v1.content_hash() == parse(V1_ADD, message_id="m9").content_hash()
    v2 = parse(V1_ADD, version=2, payload={**V1_ADD["payload"], "currency": "EUR"})
    assert v2.content_hash() != v1.content_hash()
    assert v2.payload == v1.payload


def test_the_registry_knows_every_version_still_read() -> None:
    add = spec_for("AddApartment")
    assert add is not None and accepted_versions(add) == (1, 2)
    rows = {r["type"]: r for r in catalog()}
    assert rows["AddApartment"]["accepts"] == [1, 2]
    assert rows["ApartmentAdded"]["accepts"] == [1, 2]
    assert rows["AcceptReservation"]["accepts"] == [1]
    assert all(r["accepts"][-1] == r["version"] for r in rows.values())
    assert {r["kind"] for r in rows.values() if len(r["accepts"]) > 1} <= {
        Kind.COMMAND.value, Kind.EVENT.value}


@pytest.mark.parametrize(("type_name", "version", "why"), [
    ("Teleport", 1, "no upcaster can read Teleport version 1"),
    ("AddApartment", 2, "no upcaster can read AddApartment version 2"),
    ("AddApartment", 0, "no upcaster can read AddApartment version 0"),
    ("AddApartment", 1, "AddApartment version 1 has two upcasters"),
])
def test_upcasters_are_checked_when_registered(type_name: str, version: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        upcaster(type_name, version, AddApartmentV1)(lambda p: p)


@pytest.mark.parametrize("price", ["120", "120.00", 120.5, True])
def test_integers_are_integers_on_the_wire(price: object) -> None:
    """The schema says integer: a string, a fraction or a boolean is not read as one."""
    v2 = {**V1_ADD, "version": 2,
          "payload": {**V1_ADD["payload"], "currency": "EUR", "price_per_night": price}}
    err = refusal(v2)
    assert err.reason is BadInput.SCHEMA_ERROR and "price_per_night" in err.detail
    assert refusal(V1_ADD, payload={**V1_ADD["payload"], "price_per_night": price}).reason \
        is BadInput.SCHEMA_ERROR


def test_an_integral_float_is_an_integer_as_in_json_schema() -> None:
    v2 = {**V1_ADD, "version": 2,
          "payload": {**V1_ADD["payload"], "currency": "EUR", "price_per_night": 120.0}}
    payload = parse(v2).payload
    assert isinstance(payload, AddApartment) and payload.price_per_night == 120
    assert type(payload.price_per_night) is int
