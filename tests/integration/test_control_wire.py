"""The control channel's JSON, pinned: every op's reply as a console receives it.

Consoles of other releases read these replies, so their shape is part of the contract
(docs/asyncapi.yaml says so). Each op is asked over RabbitMQ, and its reply compared,
keys in order, with ``snapshots/control_wire.json``. Values that depend on clocks,
random ids or timing are replaced by their JSON type first; every other value is
compared as it is. ``STAYBOOK_UPDATE_SNAPSHOTS=1`` writes the file anew.

Each result is also read back into its model (``messages.control.RESULTS``) and
written again unchanged, and validated by the schema docs/asyncapi.yaml publishes
for its op.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import TypeAdapter

from broker.client import Client
from console.control_client import ControlClient
from messages import (
    ApartmentAdded,
    DatesBooked,
    Envelope,
    PaymentFailed,
    RequestReservation,
    ReservationAccepted,
    ReservationRequested,
)
from messages.control import RESULTS, to_wire
from node import Node
from store import Commit
from tests.conftest import day, eventually
from tests.integration.test_ctl import add_apartment, wait_control
from tests.unit.test_contract import generated

SNAPSHOT = Path(__file__).parent / "snapshots" / "control_wire.json"

# Keys whose values depend on when or how fast things happened, or on random ids.
VOLATILE = frozenset({
    "time", "uptime", "p99_ms", "outbox_backlog", "writer_backlog", "at", "traceback",
    "occurred_at", "recorded_at", "replayed_at", "expires_at", "message_id",
    "causation_id", "correlation_id", "mailbox", "unacked", "delivered", "acked",
    "headers", "reply_to", "unavailable",
    # A service's own facts in the tree count work its thread does at its own pace.
    "published", "fired", "sent", "recorded", "duplicates", "spare_copies", "failures",
    "backlog", "up", "down_for", "outages", "last_error", "connected", "reconnects",
    "answered", "refused", "live_children", "activations", "passivations",
    "child_restarts", "released", "batches", "commits", "conflicts", "held",
})


def json_type(value: Any) -> str:
    """A value's JSON type, as the snapshot shows a volatile value."""
    if value is None:
        return "<null>"
    if isinstance(value, bool):
        return "<boolean>"
    if isinstance(value, int):
        return "<integer>"
    if isinstance(value, float):
        return "<float>"
    if isinstance(value, str):
        return "<string>"
    return "<array>" if isinstance(value, list) else "<object>"


def normalised(value: Any, names: dict[str, str]) -> Any:
    """``value`` with volatile values replaced by their type and ``names`` (the node's
    name and broker prefix) by placeholders."""
    if isinstance(value, dict):
        return {k: json_type(v) if k in VOLATILE else normalised(v, names)
                for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v, names) for v in value]
    if isinstance(value, str):
        for real, shown in names.items():
            value = value.replace(real, shown)
    return value


def check_result(op: str, result: Any) -> None:
    """``result`` reads into its op's model and writes back as it came, key for key,
    and the published schema of the op's result accepts it."""
    doc = generated()
    kind = RESULTS[op]
    again = to_wire(TypeAdapter(kind).validate_python(result))
    assert json.dumps(again) == json.dumps(result), op
    # Tree rows nest: the refs stay, resolved against the document's schemas.
    schema = {**doc["components"]["messages"]["ControlReply"]["x-staybook-results"][op],
              "components": {"schemas": doc["components"]["schemas"]}}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(result)]
    assert not errors, (op, errors[:3])


def _commit(node: Node, stream: str, expected: int, events: list[Any], apt: str) -> None:
    node.writer.submit(Commit(stream_id=stream, expected_version=expected,
                              events=[Envelope.new(e, apartment_id=apt) for e in events],
                              publish=False))
    node.writer.barrier()


def _stuck_booking(node: Node) -> None:
    """A stay still booked after its payment failed: what ``repair_check`` lists."""
    apt, rid = "apt-wx", "res-wx"
    _commit(node, f"apartment:{apt}", 0, [
        ApartmentAdded(owner_id="olga", city="Lisbon", title="Flat", price_per_night=9500,
                       currency="EUR", capacity=2),
        ReservationRequested(reservation_id=rid, guest_id="gina", owner_id="olga",
                             start=day(3), end=day(5), guests=1, total_price=19000,
                             card_token="tok_decline", card_last4="0002"),
        ReservationAccepted(reservation_id=rid, guest_id="gina", owner_id="olga",
                            start=day(3), end=day(5), total_price=19000,
                            card_token="tok_decline", card_last4="0002"),
        DatesBooked(reservation_id=rid, start=day(3), end=day(5))], apt)
    _commit(node, f"payment:{rid}", 0, [PaymentFailed(
        reservation_id=rid, guest_id="gina", amount=19000, reason="card_declined")], apt)


def test_every_control_op_answers_the_json_it_always_has(node: Node, client: Client,
                                                         amqp_url: str) -> None:
    wait_control(node)
    name = node.settings.node_name
    for apt in ("apt-w1", "apt-w2", "apt-w3"):
        assert add_apartment(client, apt)["status"] == "ok"
    pending = Envelope.new(RequestReservation(reservation_id="r-w1", guest_id="gina",
                                              start=day(10), end=day(12), guests=2),
                           apartment_id="apt-w1")
    assert client.request(pending, timeout=20).payload.model_dump()["status"].value == "ok"
    eventually(lambda: node.directory.passivate("apartment:apt-w3"))
    client.publish_raw(node.topology.commands_exchange, "x", b"not json", message_id="bad-1")
    eventually(lambda: node.dead_letters.count() == 1)
    _stuck_booking(node)
    eventually(lambda: node.readiness()[0] and node.relay.backlog() == 0)

    replies: list[dict[str, Any]] = []
    with ControlClient(amqp_url, node.topology) as cc:
        def ask(op: str, args: dict[str, Any] | None = None, *,
                record: bool = True) -> dict[str, Any]:
            (reply,) = cc.request(op, args, node=name, wait=10.0)
            if record:
                replies.append({"op": op, "args": args, "reply": reply})
            return reply

        assert ask("crash", {"id": "apartment:apt-w2"})["ok"]
        eventually(lambda: ask("inspect", {"id": "apartment:apt-w2"}, record=False)["result"]
                   ["restarts"] == 1 and node.directory.ref("apartment:apt-w2") is not None)
        reads: list[tuple[str, dict[str, Any] | None]] = [
                ("status", None), ("tree", None), ("tree", {"entities": 1}),
                ("actors", None), ("actors", {"sort": "handled", "kind": "apartment"}),
                ("inspect", {"id": "apartment:apt-w2", "events": 2}),
                ("inspect", {"id": "apt-w1"}), ("inspect", {"id": "apt-w3", "events": 5}),
                ("inspect", {"id": "timers"}), ("inspect", {"id": "handlers/payment"}),
                ("inspect", {"id": "handlers"}),
                ("history", {"id": "apt-w1"}), ("history", {"id": "apt-w1", "limit": 1}),
                ("overview", {"top": 1, "entities": 1}), ("queues", None),
                ("repair_check", None), ("repair_check", {"limit": 1, "after": 0}),
                ("dlq_list", None), ("dlq_show", {"id": "1"}), ("dlq_show", {"id": "bad-1"}),
                ("inspect", {"id": "apartment:nowhere"}), ("history", {"id": "nowhere"}),
                ("nope", None), ("actors", {"sort": "colour"}), ("inspect", {"id": 7}),
                ("crash", {"id": "timers"}), ("stop", {"id": "payment"}),
                ("restart", {"id": "apartment:apt-w1"}), ("restart", {"id": "timers"}),
                ("dlq_replay", {"id": "1"}), ("dlq_replay", {"id": "1"})]
        for op, args in reads:
            ask(op, args)
        eventually(lambda: node.dead_letters.count() == 2)  # the replay died again
        ask("dlq_list", {"all": True})
        ask("dlq_purge", {"replayed_only": True})
        ask("dlq_replay", {"all": True})
        threads = ask("threads")
    assert threads["ok"] and {"thread", "threads", "cpu_s"} == set(threads["result"][0])
    assert {r["op"] for r in replies} - {"nope"} == set(RESULTS)  # every op is pinned
    for r in replies:
        if r["reply"]["ok"]:
            check_result(r["op"], r["reply"]["result"])
    # Which threads run, and how busy they were, varies: one row, by its types.
    replies[-1]["reply"]["result"] = [{k: json_type(v) for k, v in threads["result"][0].items()}]
    got = json.dumps(normalised(replies, {name: "<node>",
                                          node.settings.broker.prefix: "<prefix>"}),
                     indent=1) + "\n"
    if os.environ.get("STAYBOOK_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(got)
    assert got == SNAPSHOT.read_text()
