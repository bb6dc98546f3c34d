"""Fuzzing the intake of a real node: whatever arrives, it answers or dead-letters.

Hypothesis generates bodies (random bytes, invalid UTF-8, JSON of every shape, valid
commands with one field mutated: wrong types, huge values, missing ids) and AMQP
headers and properties (random header tables, with or without ``reply_to`` and
``message_id``). Each one goes to the commands exchange of a node on the private
broker. The promise under test (docs/guarantees.md, "bad input"): the intake never
dies; a body it cannot use gets an ``error`` reply with a reason (when the producer
asked for one) and a dead-letter copy with that reason in ``x-staybook-reason``;
valid traffic sent in between is answered as usual.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.client import Client
from messages import AddApartment, BadInput, Envelope, RequestReservation, new_id
from node import Node
from tests.conftest import day

REASONS = {r.value for r in BadInput}

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)

_huge = st.sampled_from(["x" * 70_000, "é" * 40_000, "y" * 3_000])


def _valid(mid: str) -> dict[str, Any]:
    return {"message_id": mid, "correlation_id": mid, "type": "RequestReservation",
            "version": 1, "apartment_id": "fz-apt",
            "payload": {"reservation_id": f"r{mid}", "guest_id": "g",
                        "start": day(3).isoformat(), "end": day(5).isoformat()}}


@st.composite
def bodies(draw: st.DrawFn, mid: str) -> bytes:
    """A body that is, most of the time, subtly or grossly wrong."""
    kind = draw(st.sampled_from(["bytes", "utf8", "json", "mutate", "drop", "payload"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "utf8":  # invalid UTF-8 inside something that looks like JSON
        return b'{"message_id": "' + draw(st.binary(min_size=1, max_size=20)) + b'\xff\xfe"}'
    if kind == "json":
        return json.dumps(draw(_json)).encode()
    env = _valid(mid)
    if kind == "drop":
        env.pop(draw(st.sampled_from(sorted(env))))
    elif kind == "mutate":
        key = draw(st.sampled_from(sorted(env)))
        env[key] = draw(_json | _huge)
    else:
        key = draw(st.sampled_from(sorted(env["payload"])))
        env["payload"][key] = draw(_json | _huge)
    return json.dumps(env).encode()


_header_value = (st.integers(-(2**62), 2**62) | st.text(max_size=20) | st.booleans()
                 | st.binary(max_size=20) | st.lists(st.integers(0, 9), max_size=3))
headers_st = st.dictionaries(st.text(min_size=1, max_size=20), _header_value, max_size=5)


def _dead_letters(node: Node, want: set[str], timeout: float = 30.0
                  ) -> dict[str, str | None]:
    """correlation_id -> reason, from the node's book (the recorder empties the queue)."""
    out: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    while not want <= out.keys() and time.monotonic() < deadline:
        out = {r.letter.correlation_id or "": r.letter.reason
               for r in node.dead_letters.page(limit=1000)}
        time.sleep(0.05)
    return out


def test_fuzzed_input_is_answered_or_dead_lettered(node: Node, client: Client,
                                                   amqp_url: str) -> None:
    topo = node.topology
    assert client.request(Envelope.new(AddApartment(
        owner_id="o", city="Faro", title="T", price_per_night=100, currency="EUR", capacity=4),
        apartment_id="fz-apt"), timeout=20).payload.model_dump()["status"] == "ok"
    errors: dict[str, str] = {}      # correlation id -> reason (answered with an error)
    silent: set[str] = set()         # sent without reply_to: must be dead-lettered
    answered_ok: set[str] = set()    # a mutation that happened to be valid
    valid_replies: list[str] = []
    count = {"n": 0}

    @settings(max_examples=160, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data(), headers=headers_st, reply=st.booleans(),
           with_mid=st.booleans())
    def throw(data: st.DataObject, headers: dict[str, Any], reply: bool,
              with_mid: bool) -> None:
        count["n"] += 1
        cid = f"fz-{new_id()}"
        body = data.draw(bodies(cid))
        asks = reply or count["n"] % 4 != 0  # three in four ask for a reply
        client.publish_raw(topo.commands_exchange, "fz-apt", body,
                           message_id=cid if with_mid else None, correlation_id=cid,
                           reply=asks, headers=headers)
        if not asks:
            silent.add(cid)
        else:
            payload = client.wait_raw_reply(cid, timeout=20)["payload"]
            if payload["status"] == "error":
                assert payload["reason"] in REASONS, payload
                assert payload.get("detail"), payload
                errors[cid] = payload["reason"]
            else:
                assert payload["status"] in ("ok", "rejected"), payload
                answered_ok.add(cid)
        if count["n"] % 10 == 0:  # valid traffic in between is unaffected
            env = Envelope.new(RequestReservation(
                reservation_id=f"ok-{cid}", guest_id="g", start=day(40 + count["n"]),
                end=day(41 + count["n"])), apartment_id="fz-apt")
            valid_replies.append(client.request(env, timeout=20).payload.model_dump(
                mode="json")["status"])

    throw()
    assert errors and valid_replies
    assert valid_replies == ["ok"] * len(valid_replies)
    letters = _dead_letters(node, set(errors) | silent)
    assert {c: letters.get(c) for c in errors} == errors
    # Unanswered ones are dead-lettered, unless the mutation left a valid command.
    assert all(letters.get(c) in REASONS or node.store.seen("intake", c)[0]
               for c in silent), {c: letters.get(c) for c in silent}
    assert not answered_ok & letters.keys()
    assert all(c.is_alive() for c in node.consumers.values())
