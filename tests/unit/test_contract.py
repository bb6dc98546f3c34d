"""The published contract, docs/asyncapi.yaml: current, complete, and never broken.

- The committed document is exactly what the registry generates.
- Every message the registry reads, in every version, round-trips through its
  published schema: documents the schema accepts are read by the models, and what the
  models write (after upcasting, too) the schema accepts.
- Every example, in the document and in the README, validates.
- No message version published in the document, now or in any earlier commit of it,
  has a schema this code would break (messages/compat.py, docs/messages.md).
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC
from functools import cache
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from broker.asyncapi import document, markdown_catalog, message_key, to_yaml
from messages import Envelope, InvalidMessage
from messages.compat import check, inline
from messages.registry import accepted_versions, all_specs
from messages.upcasters import RETIRED

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
README = ROOT / "README.md"
REGENERATE = "run `staybook catalog --asyncapi > docs/asyncapi.yaml` and commit it"


def load_yaml(text: str) -> Any:
    """Safe YAML, with libyaml's loader when there: every commit of the document is read,
    and the pure-Python loader takes a third of a second for each."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


@cache
def generated_text() -> str:
    return to_yaml(document(package_version("staybook")))


@cache
def generated() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(generated_text())
    return doc


def resolver(doc: dict[str, Any]) -> Callable[[str], Any]:
    """Looks up a local JSON pointer (``#/components/...``) in ``doc``."""
    def resolve(ref: str) -> Any:
        assert ref.startswith("#/"), f"not a local reference: {ref}"
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node
    return resolve


def body_schema(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """The whole-body schema of message ``key``, every ``$ref`` resolved."""
    schema: dict[str, Any] = inline(doc["components"]["messages"][key]["payload"],
                                    resolver(doc))
    return schema


def validator(doc: dict[str, Any], key: str) -> Draft202012Validator:
    return Draft202012Validator(body_schema(doc, key), format_checker=FormatChecker())


def messages_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The document's Staybook messages, those of the registry (not the dead-letter
    wrapper, nor the control channel's request and reply)."""
    return {k: m for k, m in doc["components"]["messages"].items()
            if "x-staybook-kind" in m}


KEYS = [message_key(s, v) for s in all_specs() for v in accepted_versions(s)]


# --- current and complete ------------------------------------------------------------
def test_the_committed_document_is_current() -> None:
    committed = DOC.read_text()
    if committed != generated_text():
        diff = list(difflib.unified_diff(committed.splitlines(), generated_text().splitlines(),
                                         "committed", "generated", lineterm="", n=1))
        pytest.fail(f"docs/asyncapi.yaml is stale: {REGENERATE}\n" + "\n".join(diff[:40]))


def test_every_version_the_registry_reads_is_in_the_document() -> None:
    published = messages_of(generated())
    assert sorted(published) == sorted(KEYS)
    for spec in all_specs():
        current = published[spec.type]
        assert current["x-staybook-accepts"] == list(accepted_versions(spec))
        assert current["payload"]["properties"]["version"]["const"] == spec.version
        for v in accepted_versions(spec)[:-1]:
            assert published[message_key(spec, v)]["deprecated"] is True


# --- round trips -------------------------------------------------------------------
def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Documents valid under ``schema``, for the keywords pydantic writes.

    (hypothesis-jsonschema would do this, but its last release fails on current
    Hypothesis: "'many' object has no attribute 'more'".)
    """
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    match schema.get("type"):
        case "null":
            return st.none()
        case "boolean":
            return st.booleans()
        case "integer":  # JSON Schema's integer includes 120.0
            ints = st.integers(schema.get("minimum", -(2**53)), schema.get("maximum", 2**53))
            return ints.flatmap(lambda i: st.sampled_from([i, float(i)] if abs(i) <= 2**53
                                                          else [i]))
        case "string":
            return _strings(schema)
        case "array":
            return st.lists(from_schema(schema.get("items", {})), max_size=3)
        case "object":
            return _objects(schema)
    return st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)  # anything


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
    match schema.get("format"):
        case "date":
            return st.dates().map(lambda d: d.isoformat())
        case "date-time":
            return st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat())
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= high)
    return st.text(min_size=low, max_size=min(high, low + 40))


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required},
        optional={k: from_schema(v) for k, v in props.items() if k not in required})


ENVELOPE = {"message_id": "m-1", "correlation_id": "c-1", "causation_id": None,
            "occurred_at": "2030-01-07T10:00:00Z", "apartment_id": "apt-1"}


@pytest.mark.parametrize("key", KEYS)
def test_every_message_round_trips_through_its_published_schema(key: str) -> None:
    doc = generated()
    message = doc["components"]["messages"][key]
    current_key = message["name"]
    whole = validator(doc, key)
    current = validator(doc, current_key)
    payloads = from_schema(body_schema(doc, key)["properties"]["payload"])

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(payload=payloads)
    def round_trip(payload: dict[str, Any]) -> None:
        body = {**ENVELOPE, "type": message["name"],
                "version": message["x-staybook-version"], "payload": payload}
        whole.validate(body)  # the envelope around it is as published
        env = Envelope.from_json(json.dumps(body).encode(), max_bytes=1 << 20)
        # what this node writes (upcast to the current version) is as published
        current.validate(env.to_dict())
        again = Envelope.from_json(env.to_json(), max_bytes=1 << 20)
        assert again.to_dict() == env.to_dict()

    round_trip()


def _readme_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in map(json.loads, blocks) if isinstance(b, dict) and "type" in b]


def test_every_example_validates_against_the_published_schema() -> None:
    doc = generated()
    examples = [(key, ex["payload"]) for key, m in messages_of(doc).items()
                for ex in m.get("examples", [])]
    examples += [(message_key_of(doc, ex), ex) for ex in _readme_examples()]
    assert len(examples) >= 20 and len(_readme_examples()) >= 2
    for key, body in examples:
        validator(doc, key).validate(body)
        Envelope.from_json(json.dumps(body).encode())


def message_key_of(doc: dict[str, Any], body: dict[str, Any]) -> str:
    for key, m in messages_of(doc).items():
        if m["name"] == body["type"] and m["x-staybook-version"] == body["version"]:
            return key
    raise AssertionError(f"{body['type']} version {body['version']} is not in the contract")


def test_a_body_the_schema_refuses_is_refused_by_the_node_too() -> None:
    """The published schemas are not looser than the node where producers look first."""
    doc = generated()
    body = {**ENVELOPE, "type": "AddApartment", "version": 2,
            "payload": {"owner_id": "o", "city": "Oslo", "title": "T",
                        "price_per_night": 100, "currency": "eur", "capacity": 2}}
    assert list(validator(doc, "AddApartment").iter_errors(body))
    with pytest.raises(InvalidMessage, match="currency"):
        Envelope.from_json(json.dumps(body).encode())


# --- nothing published breaks ------------------------------------------------------------
def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, (
        f"git {' '.join(args)} failed: the contract test compares the document with every "
        f"commit of it, so it needs a full git checkout: {done.stderr.strip()}")
    return done.stdout


def published_documents() -> list[tuple[str, dict[str, Any]]]:
    """The committed document and every earlier commit of it (newest first)."""
    assert _git("rev-parse", "--is-shallow-repository").strip() == "false", (
        "a shallow clone hides published versions of docs/asyncapi.yaml: fetch its history "
        "(git fetch --unshallow)")
    out = [("the working tree", load_yaml(DOC.read_text()))]
    for commit in _git("log", "--format=%h", "--", "docs/asyncapi.yaml").split():
        shown = _git("show", f"{commit}:docs/asyncapi.yaml")
        out.append((f"commit {commit}", load_yaml(shown)))
    return out


def versions_of(doc: dict[str, Any]) -> dict[str, str]:
    """Each message version's label (``AddApartment_v2``) and its key in ``doc``: a key
    names the current version, which moves on when a new version is added."""
    return {f"{m['name']}_v{m['x-staybook-version']}": key
            for key, m in messages_of(doc).items()}


def breaking_changes(published: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What ``new`` breaks of the message versions ``published`` (docs/messages.md)."""
    out = []
    now = versions_of(new)
    for label, key in versions_of(published).items():
        if label not in now:
            if label not in RETIRED:
                out.append(f"{label}: published, and no longer read (retire it on purpose: "
                           "messages/upcasters.py RETIRED)")
            continue
        kind = messages_of(published)[key]["x-staybook-kind"]
        for why in check(kind, body_schema(published, key), body_schema(new, now[label])):
            out.append(f"{label}: {why}")
    return out


ERRATA = {
    "backward: (the message): unknown fields are no longer accepted": (
        "until 2026-12-02 the document left the envelope of events and replies open, but "
        "a node has always refused unknown envelope fields (Envelope forbids them): the "
        "schema was corrected to what nodes do, not narrowed"),
}
"""Errors once published and corrected since: a finding about an earlier commit that
ends with one of these is not a break (docs/messages.md, "Errata")."""


def test_no_published_schema_breaks() -> None:
    documents = published_documents()
    assert len(documents) >= 2  # the working tree and at least its own commit
    found = {where: [m for m in breaking_changes(doc, generated())
                     if where == "the working tree" or not m.endswith(tuple(ERRATA))]
             for where, doc in documents}
    broken = {where: changes for where, changes in found.items() if changes}
    assert not broken, (
        "a published message schema would break; give the change a new version "
        f"(docs/messages.md): {json.dumps(broken, indent=1)}")


def test_the_check_catches_a_break_hidden_by_regenerating_the_document() -> None:
    """Were schemas changed in place and the document regenerated, the earlier commits
    (here: the document as generated now) still hold the published ones."""
    published = generated()
    edited = json.loads(json.dumps(published))
    schemas = edited["components"]["schemas"]
    schemas["AddApartment"]["properties"]["capacity"]["maximum"] = 10
    schemas["ApartmentAdded"]["properties"]["price_per_night"]["maximum"] = 100
    schemas["Status"]["enum"].append("maybe")
    found = breaking_changes(published, edited)
    assert sorted(found) == [
        "AddApartment_v2: backward: payload.capacity: maximum 100 became 10",
        "ApartmentAdded_v2: backward: payload.price_per_night: maximum none became 100",
        "CommandResult_v1: forward: payload.status: values ['maybe'] are no longer accepted",
    ]


def bumped(doc: dict[str, Any], type_name: str, field: str) -> dict[str, Any]:
    """``doc`` after the documented steps for a new version of ``type_name``: the
    current version kept under ``<Type>_v<n>``, the new one requiring ``field``."""
    new: dict[str, Any] = json.loads(json.dumps(doc))
    msgs, schemas = new["components"]["messages"], new["components"]["schemas"]
    old = msgs.pop(type_name)
    n = old["x-staybook-version"]
    frozen = f"{type_name}V{n}"
    schemas[frozen] = schemas[type_name]
    kept = {**json.loads(json.dumps(old)), "deprecated": True}
    kept["payload"]["properties"]["payload"] = {"$ref": f"#/components/schemas/{frozen}"}
    del kept["x-staybook-accepts"]
    msgs[f"{type_name}_v{n}"] = kept
    current = json.loads(json.dumps(old))
    current["x-staybook-version"] = n + 1
    current["payload"]["properties"]["version"]["const"] = n + 1
    schemas[type_name] = json.loads(json.dumps(schemas[type_name]))
    schemas[type_name]["properties"][field] = {"type": "integer"}
    schemas[type_name]["required"].append(field)
    msgs[type_name] = current
    return new


def test_a_new_version_breaks_nothing_and_an_in_place_change_does() -> None:
    """The documented way (docs/messages.md, "A new version") passes the check; the
    same field added to the current version in place does not."""
    published = generated()
    for type_name in ("AddApartment", "AcceptReservation", "ApartmentAdded"):
        assert breaking_changes(published, bumped(published, type_name, "floor")) == []
    in_place = json.loads(json.dumps(published))
    add = in_place["components"]["schemas"]["AddApartment"]
    add["properties"]["floor"] = {"type": "integer"}
    add["required"].append("floor")
    assert breaking_changes(published, in_place) == [
        "AddApartment_v2: backward: payload: required field 'floor' added"]


@given(st.sampled_from(KEYS))
@settings(max_examples=10, database=None)
def test_a_message_dropped_from_the_contract_is_reported(key: str) -> None:
    published = generated()
    edited = json.loads(json.dumps(published))
    message = edited["components"]["messages"].pop(key)
    label = f"{message['name']}_v{message['x-staybook-version']}"
    assert breaking_changes(published, edited) == [
        f"{label}: published, and no longer read (retire it on purpose: "
        "messages/upcasters.py RETIRED)"]


def test_the_readme_table_is_generated_from_the_document() -> None:
    text = README.read_text()
    found = re.search(r"<!-- catalog: staybook catalog --markdown -->\n(.*?)<!-- /catalog -->",
                      text, flags=re.S)
    assert found, "the README lost its catalog markers"
    assert found.group(1) == markdown_catalog(generated()), (
        "the README's message table is stale: paste `staybook catalog --markdown` into it")
    assert "| AddApartment | command | 1, 2 | intake |" in found.group(1)


def test_the_reason_codes_are_listed() -> None:
    reason = generated()["components"]["schemas"]["CommandResult"]["properties"]["reason"]
    assert "already_taken" in reason["x-rejected-reasons"]
    assert {"unsupported_version", "idempotency_conflict"} <= set(reason["x-error-reasons"])
