"""``log_format = "json"``: one JSON object per line, each command's lines with its ids.

An operator follows one command through a node's log by its message_id or
correlation_id: the actor's refusal of an unauthorized caller and the intake's
refusal of a malformed body must carry them, with the node's name.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from config.logs import handler_for
from messages import AcceptReservation, AddApartment, Envelope
from node import Node
from tests.conftest import MemoryProducer


@pytest.fixture
def json_lines(memory_node: Node) -> Iterator[io.StringIO]:
    """What the node logs from now on, as `staybook serve` writes it with json."""
    out = io.StringIO()
    handler = handler_for("json", memory_node.settings.node_name, out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def _objects(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_an_actors_warning_carries_the_commands_ids_and_the_node(
        memory_node: Node, producer: MemoryProducer, json_lines: io.StringIO) -> None:
    assert producer.send(AddApartment(owner_id="olga", city="Oslo", title="T",
                                      price_per_night=100, currency="EUR", capacity=2),
                         "j1")["status"] == "ok"
    env = Envelope.new(AcceptReservation(reservation_id="r1", owner_id="mallory"),
                       apartment_id="j1", correlation_id="conv-7")
    producer.publish(env)
    assert producer.reply()["reason"] == "not_owner"
    refused = [o for o in _objects(json_lines) if o["logger"] == "actors.apartment"]
    assert len(refused) == 1, refused
    line = refused[0]
    assert line["level"] == "WARNING" and "mallory" in str(line["message"])
    assert line["message_id"] == env.message_id and line["correlation_id"] == "conv-7"
    assert line["node"] == memory_node.settings.node_name


def test_the_intakes_refusal_carries_the_ids_it_could_read(
        memory_node: Node, producer: MemoryProducer, json_lines: io.StringIO) -> None:
    body = json.dumps({"message_id": "m-bad-1", "correlation_id": "conv-9",
                       "type": "NoSuchCommand", "version": 1, "apartment_id": "j2",
                       "payload": {}}).encode()
    producer.publish_raw(body, routing_key="j2")
    assert producer.reply()["reason"] == "unknown_type"
    lines = [o for o in _objects(json_lines) if o["logger"] == "node.intake"]
    assert [(o["message_id"], o["correlation_id"], o["node"]) for o in lines] == [
        ("m-bad-1", "conv-9", memory_node.settings.node_name)]
