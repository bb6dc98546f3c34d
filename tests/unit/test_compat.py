"""messages.compat: every kind of breaking change is caught, compatible ones pass."""

from __future__ import annotations

from typing import Any

import pytest

from messages.compat import check, inline, narrowings

BASE: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["owner_id", "price"],
    "properties": {
        "owner_id": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 100},
        "price": {"type": "integer", "maximum": 1000, "minimum": 0},
        "note": {"anyOf": [{"type": "string", "maxLength": 200}, {"type": "null"}],
                 "default": None},
        "sort": {"enum": ["asc", "desc"], "type": "string", "default": "asc"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


def changed(**props: Any) -> dict[str, Any]:
    out = {**BASE, "properties": {**BASE["properties"]}}
    for name, schema in props.items():
        if schema is None:
            del out["properties"][name]
        else:
            out["properties"][name] = schema
    return out


BACKWARD_BREAKS = [
    ("required field 'currency' added", {**changed(currency={"type": "string"}),
                              "required": ["owner_id", "price", "currency"]}),
    ("field 'note' removed", changed(note=None)),
    ("became required", {**BASE, "required": ["owner_id", "price", "note"]}),
    ("type", changed(price={"type": "string"})),
    ("maximum", changed(price={"type": "integer", "maximum": 999, "minimum": 0})),
    ("minimum", changed(price={"type": "integer", "maximum": 1000, "minimum": 1})),
    ("maxLength", changed(owner_id={"type": "string", "pattern": "^[a-z]+$",
                                    "maxLength": 50})),
    ("pattern", changed(owner_id={"type": "string", "pattern": "^[a-z]{2,}$",
                                  "maxLength": 100})),
    ("no longer accepted", changed(note={"type": "string", "maxLength": 200})),
    ("values", changed(sort={"enum": ["asc"], "type": "string"})),
    ("tags[]: type string became integer",
     changed(tags={"type": "array", "items": {"type": "integer"}})),
    ("format", changed(note={"anyOf": [{"type": "string", "format": "date"},
                                       {"type": "null"}]})),
]


@pytest.mark.parametrize(("why", "new"), BACKWARD_BREAKS, ids=[w for w, _ in BACKWARD_BREAKS])
def test_a_command_change_that_refuses_old_messages_is_breaking(
        why: str, new: dict[str, Any]) -> None:
    found = check("command", BASE, new)
    assert found and all(m.startswith("backward: ") for m in found)
    assert any(why in m for m in found), found


COMPATIBLE_FOR_COMMANDS = [
    ("optional field added", changed(floor={"type": "integer", "default": 0})),
    ("limit widened", changed(price={"type": "integer", "maximum": 5000, "minimum": 0})),
    ("enum value added", changed(sort={"enum": ["asc", "desc", "new"], "type": "string"})),
    ("made optional", {**BASE, "required": ["owner_id"]}),
    ("nullable", changed(price={"anyOf": [{"type": "integer", "maximum": 1000,
                                          "minimum": 0}, {"type": "null"}]})),
    ("description only", changed(price={"type": "integer", "maximum": 1000, "minimum": 0,
                                        "description": "cents"})),
]


@pytest.mark.parametrize(("why", "new"), COMPATIBLE_FOR_COMMANDS,
                         ids=[w for w, _ in COMPATIBLE_FOR_COMMANDS])
def test_a_command_change_that_accepts_every_old_message_is_compatible(
        why: str, new: dict[str, Any]) -> None:
    assert check("command", BASE, new) == [], why
    assert check("query", BASE, new) == [], why


def test_replies_must_stay_readable_by_old_readers() -> None:
    # an optional field added: old (tolerant) readers are fine
    open_base = {k: v for k, v in BASE.items() if k != "additionalProperties"}
    added = {**open_base, "properties": {**BASE["properties"], "floor": {"type": "integer"}}}
    assert check("reply", open_base, added) == []
    # a value old readers do not know, a limit they did not expect, a field they need gone
    grown = changed(sort={"enum": ["asc", "desc", "new"], "type": "string"})
    assert any("values" in m for m in check("reply", BASE, grown))
    optional = {**BASE, "required": ["owner_id"]}
    assert check("reply", BASE, optional)
    wider = changed(price={"type": "integer", "maximum": 5000, "minimum": 0})
    assert [m for m in check("reply", BASE, wider) if m.startswith("forward: ")]


def test_events_must_be_compatible_both_ways() -> None:
    wider = changed(price={"type": "integer", "maximum": 5000, "minimum": 0})
    narrower = changed(price={"type": "integer", "maximum": 10, "minimum": 0})
    assert any(m.startswith("forward: ") for m in check("event", BASE, wider))
    assert any(m.startswith("backward: ") for m in check("event", BASE, narrower))
    assert check("event", BASE, BASE) == []


def test_refs_are_followed_and_unknown_keywords_count_as_breaking() -> None:
    defs = {"#/defs/Price": {"type": "integer", "maximum": 1000}}
    a = inline({"properties": {"p": {"$ref": "#/defs/Price"}}}, defs.__getitem__)
    assert a == {"properties": {"p": {"type": "integer", "maximum": 1000}}}
    b = {"properties": {"p": {"type": "integer", "maximum": 1000, "multipleOf": 5}}}
    assert narrowings(a, b) == ["p: multipleOf changed (not checked in detail)"]
    with pytest.raises(ValueError, match="cycle"):
        inline({"$ref": "#/x"}, lambda _r: {"$ref": "#/x"})


@pytest.mark.parametrize(("kind", "published", "new", "why"), [
    ("command", {"type": "object", "additionalProperties": {"type": "string"}},
     {"type": "object", "additionalProperties": {"type": "integer"}},
     "{*}: type string became integer"),
    ("reply", {"type": "array", "items": {"type": "object",
                                          "additionalProperties": {"type": "integer"}}},
     {"type": "array", "items": {"type": "object"}}, "[]{*}: type any became integer"),
    ("command", {"type": "object"}, {"type": "object", "additionalProperties": False},
     "unknown fields are no longer accepted"),
    ("command", {"type": "integer"}, {"oneOf": [{"type": "integer"}, {"type": "number"}]},
     "oneOf changed"),
    ("command", changed(sort={"enum": ["asc", "desc"], "type": "string", "default": "asc"}),
     changed(sort={"enum": ["asc", "desc"], "type": "string", "default": "desc"}),
     "sort: default 'asc' became 'desc'"),
    ("event", BASE, changed(note={"anyOf": [{"type": "string", "maxLength": 200},
                                           {"type": "null"}], "default": "-"}),
     "note: default None became '-'"),
])
def test_maps_closed_objects_oneof_and_defaults_are_checked(
        kind: str, published: dict[str, Any], new: dict[str, Any], why: str) -> None:
    found = check(kind, published, new)
    assert any(why in m for m in found), found


def test_a_default_given_to_a_required_field_is_compatible_for_commands() -> None:
    optional = {**BASE, "required": ["owner_id"],
                "properties": {**BASE["properties"],
                               "price": {**BASE["properties"]["price"], "default": 0}}}
    assert check("command", BASE, optional) == []
