"""The producer client across dropped connections, against a node in this process.

The broker closes every connection (the node's consumers and the client's alike);
the client reconnects and re-sends with the same ``message_id``, the node's
consumers reconnect and finish, and a re-sent command is answered from the inbox
without a second effect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from pika.exceptions import AMQPError

from broker.client import Client, NotConfirmed
from broker.rabbitmq import wait_for_broker
from broker.topology import Topology
from messages import AddApartment, Envelope, RequestReservation
from node import Node
from rules.clock import pinned
from tests.conftest import TODAY, day, make_settings, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def live_node(rabbitmq_proc: Any, tmp_path: Path) -> Iterator[tuple[Node, str]]:
    """A node on the session's private broker, with its own prefix; cleaned up after."""
    url = f"amqp://guest:guest@{rabbitmq_proc.host}:{rabbitmq_proc.port}/%2F"
    wait_for_broker(url, timeout=60)
    settings = make_settings(tmp_path)
    settings.broker.url = url
    settings.broker.prefix = unique("cl")
    settings.broker.reconnect_max_delay = 0.5
    node = Node(settings, clock=pinned(TODAY))
    node.start()
    yield node, url
    node.stop()
    with contextlib.suppress(AMQPError, OSError):
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        for q in node.topology.queues():
            ch.queue_delete(q.name)
        for ex in node.topology.exchanges():
            ch.exchange_delete(ex.name)
        conn.close()


def _status(env: Envelope) -> Any:
    return env.payload.model_dump(mode="json")["status"]


def test_requests_survive_closed_connections_and_resends_change_nothing(
        live_node: tuple[Node, str], rabbitmq_proc: Any) -> None:
    node, url = live_node
    add = Envelope.new(AddApartment(owner_id="o", city="Oslo", title="T", price_per_night=10,
                                    currency="EUR", capacity=2), apartment_id="c1")
    with Client(url, node.topology) as client:
        assert _status(client.request(add, timeout=20)) == "ok"
        rabbitmq_proc.rabbitctl_output("close_all_connections", "test")
        ask = Envelope.new(RequestReservation(reservation_id="r1", guest_id="g", start=day(3),
                                              end=day(5)), apartment_id="c1")
        confirmed: list[bool] = []
        reply = client.request(ask, timeout=5, retries=10,
                               on_confirmed=lambda: confirmed.append(True))
        assert _status(reply) == "ok" and confirmed == [True]
        assert client.reconnects >= 1
        # The same ids again: answered from the inbox, nothing recorded twice.
        before = len(node.store.load("apartment:c1"))
        assert _status(client.request(add, timeout=20)) == "ok"
        assert _status(client.request(ask, timeout=20)) == "ok"
        assert len(node.store.load("apartment:c1")) == before == 2
    assert all(c.is_alive() for c in node.consumers.values())
    assert sum(c.reconnects for c in node.consumers.values()) >= len(node.consumers)


def test_a_publish_nobody_confirms_is_reported_not_retried_forever(
        live_node: tuple[Node, str]) -> None:
    _node, url = live_node
    missing = Topology(prefix=unique("nowhere"))  # its exchange does not exist
    env = Envelope.new(AddApartment(owner_id="o", city="Oslo", title="T", price_per_night=1,
                                    currency="EUR", capacity=1), apartment_id="c2")
    with Client(url, missing) as client, pytest.raises(NotConfirmed):
        client.request(env, timeout=1, retries=2, backoff=0.01)
