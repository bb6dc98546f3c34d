"""`staybook send` and `staybook search` against a node on a real RabbitMQ."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from console.cli import app
from node import Node


@pytest.fixture
def env(node: Node, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAYBOOK_BROKER__URL", amqp_url)
    monkeypatch.setenv("STAYBOOK_BROKER__PREFIX", node.topology.prefix)


def test_send_prints_the_reply_and_a_re_send_with_the_same_id_changes_nothing(
        node: Node, env: None) -> None:
    runner = CliRunner()
    payload = json.dumps({"owner_id": "o", "city": "Oslo", "title": "T",
                          "price_per_night": 100, "capacity": 2})
    first = runner.invoke(app, ["send", "AddApartment", "cli-1", payload,
                                "--message-id", "cli-m1"])
    assert first.exit_code == 0, first.output
    assert '"status": "ok"' in first.output
    again = runner.invoke(app, ["send", "AddApartment", "cli-1", payload,
                                "--message-id", "cli-m1"])
    assert again.exit_code == 0, again.output  # the stored reply, not apartment_exists
    assert [e.type for e in node.store.load("apartment:cli-1")] == ["ApartmentAdded"]
    other = runner.invoke(app, ["send", "AddApartment", "cli-1", payload])
    assert other.exit_code == 1 and "apartment_exists" in other.output


def test_send_refuses_a_bad_payload_before_publishing(env: None) -> None:
    result = CliRunner().invoke(app, ["send", "AddApartment", "cli-2", '{"owner_id": "o"}'])
    assert result.exit_code == 2 and "invalid AddApartment" in result.output
